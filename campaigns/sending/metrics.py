"""The send path's counters for /metrics, kept in Redis so every process that sends (each `serve`, each
worker) adds to one set the API reads: messages sent, failed by error code, rate-limit answers (130429 and
its kin), and each batch's duration as histogram buckets. One pipeline per batch, after its outcomes are
committed; a Redis hiccup loses a count, never a batch (the statistics, counted from the recipients' rows,
stay the truth)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

import redis

from campaigns.sending.error_codes import THROUGHPUT_CODES
from campaigns.sending.outcomes import Outcome
from campaigns.settings import get_settings

log = logging.getLogger(__name__)

KEY = "campaigns:metrics"
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))  # seconds
_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(get_settings().redis_url or "", socket_timeout=1.0)
    return _client


def count_batch(outcomes: Iterable[Outcome], answers: Iterable[int | None], seconds: float) -> None:
    """Add a recorded batch: its sent and failed outcomes, the provider's rate-limit answers, its duration."""
    fields: Counter[str] = Counter()
    for o in outcomes:
        if o.status == "sent":
            fields["sent"] += 1
        elif o.status == "failed":
            fields[f"failed:{o.code if o.code is not None else 'none'}"] += 1
    fields["throttled"] += sum(1 for code in answers if code in THROUGHPUT_CODES)
    fields["batch_count"] += 1
    for le in BUCKETS:
        if seconds <= le:
            fields[f"batch_le:{le}"] += 1
    try:
        pipe = _redis().pipeline(transaction=False)
        for name, n in fields.items():
            if n:
                pipe.hincrby(KEY, name, n)
        pipe.hincrbyfloat(KEY, "batch_sum", seconds)
        pipe.execute()
    except redis.RedisError:
        log.warning("the send metrics of a batch were not counted (Redis)", exc_info=True)


def read(client: redis.Redis) -> dict[str, Any]:
    """Every counter, and each number's rate factor now in force (below 1 after a 130429)."""
    counters = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in client.hgetall(KEY).items()}
    slow = {}
    for key in client.scan_iter(match="rl:number:*:slow", count=1000):
        value = client.get(key)
        name = key.decode() if isinstance(key, bytes) else str(key)
        if value is not None:
            slow[name.removeprefix("rl:number:").removesuffix(":slow")] = float(value)
    return {"counters": counters, "slowdown": slow}
