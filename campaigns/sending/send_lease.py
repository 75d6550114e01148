"""The lease on a runner's send slots, written down in Redis for the campaign's next runner.

A runner holds slots of Prefect's send concurrency limit while a wave of batches runs (flows/send_campaign.py),
under a lease that Prefect renews while it is held. A runner killed mid-wave (SIGKILL, the OOM killer) cannot
give its slots back: Prefect frees them only when the lease expires, up to a minute later, and until then
they are lost to every campaign (two runners killed in a row: the third waited 35.7 s for slots). So the
runner writes its lease's id here while it holds the slots, and the campaign's next runner gives that lease
back as soon as it holds the campaign's runner lock: the lock dies with its holder's Postgres connection, so
holding it means the runner that wrote the id is gone.

Best effort both ways: with Redis away nothing is written or read, and the lease expires as it always did.
Giving back a lease that already ended (released, expired) does nothing.
"""

from __future__ import annotations

import logging
import uuid

import redis

from campaigns.settings import get_settings

log = logging.getLogger(__name__)

# A little over Prefect's lease (deployments/limits.py, 60 s): the id lives as long as the slots it may free,
# not much longer. `refresh` keeps it while a long wave runs (Prefect renews the lease meanwhile).
TTL_SECONDS = 90


class RunnerLease:
    """The campaign's entry: the lease id its runner holds now, if any."""

    def __init__(self, client: redis.Redis, campaign_id: uuid.UUID) -> None:
        self._redis = client
        self._key = f"campaign:{campaign_id}:send-lease"

    @classmethod
    def of(cls, campaign_id: uuid.UUID) -> RunnerLease:
        """On the configured Redis, with short timeouts: a Redis that does not answer costs a runner seconds,
        not its campaign."""
        url = get_settings().redis_url or ""
        return cls(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2), campaign_id)

    def remember(self, lease_id: uuid.UUID) -> None:
        self._best_effort("set", self._key, str(lease_id), ex=TTL_SECONDS)

    def refresh(self) -> None:
        self._best_effort("expire", self._key, TTL_SECONDS)

    def forget(self) -> None:
        """The slots were given back in the normal way: nothing is left for the next runner to release."""
        self._best_effort("delete", self._key)

    def take_left_behind(self) -> uuid.UUID | None:
        """The lease a previous runner held when it died, removed from Redis. Call it only while holding the
        campaign's runner lock (the previous runner is gone then)."""
        value = self._best_effort("getdel", self._key)
        try:
            return uuid.UUID(value.decode() if isinstance(value, bytes) else str(value)) if value else None
        except ValueError:
            return None

    def _best_effort(self, command: str, *args: object, **kwargs: object) -> object:
        try:
            return getattr(self._redis, command)(*args, **kwargs)
        except redis.RedisError as exc:
            log.debug("the send lease's entry in Redis: %s failed: %s", command, exc)
            return None
