"""The send engine: an event loop thread that owns the HTTP session, the Redis limiter and a view of
campaign status. It runs inside the send-engine process (`engine_process.py`), one per worker, so the
whole worker shares one aiohttp connection pool (keep-alive, hundreds of requests in flight, explicit
timeouts). DESIGN.md measured plain httpx.AsyncClient at 61 req/s with 300 in flight and aiohttp at
~1,400 req/s, hence aiohttp.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import aiohttp
import redis.asyncio as aredis
import sqlalchemy as sa

from campaigns.sending.limit_history import LimitHistory
from campaigns.sending.providers import SendResult
from campaigns.sending.ratelimit import RateLimiter
from campaigns.settings import Settings
from campaigns.store.db import get_engine

T = TypeVar("T")


class CampaignControl:
    """The status of every campaign this process is sending, re-read every `poll_seconds`.

    In-flight sends consult it before each message, so a pause or cancel takes effect within about
    one poll interval, also for batches that already claimed their rows.

    It also judges whether a campaign's provider is down: `outage_failures` answers in a row that found it
    unavailable. All of a campaign's batches send through its runner's one engine, so the count sees every
    send in the order the answers came, across parallel batches, and stops them all at once.
    """

    def __init__(self, poll_seconds: float, outage_failures: int) -> None:
        self.poll_seconds = poll_seconds
        self.outage_failures = outage_failures
        self._status: dict[uuid.UUID, str] = {}
        self._stopped: dict[uuid.UUID, str] = {}  # local stops the database has not confirmed yet
        self._users: dict[uuid.UUID, int] = {}
        self._unavailable: dict[uuid.UUID, int] = {}  # answers in a row that found the provider unavailable

    def register(self, campaign_id: uuid.UUID, status: str) -> None:
        self._users[campaign_id] = self._users.get(campaign_id, 0) + 1
        self._status.setdefault(campaign_id, status)

    def unregister(self, campaign_id: uuid.UUID) -> None:
        self._users[campaign_id] -= 1
        if self._users[campaign_id] <= 0:
            self._users.pop(campaign_id)
            self._status.pop(campaign_id, None)
            self._stopped.pop(campaign_id, None)

    def status(self, campaign_id: uuid.UUID) -> str:
        return self._stopped.get(campaign_id) or self._status.get(campaign_id, "running")

    def stop(self, campaign_id: uuid.UUID, status: str) -> None:
        """Stop local sends at once (a campaign-level error seen here); the next poll confirms it."""
        self._stopped[campaign_id] = status

    def running(self, campaign_id: uuid.UUID) -> bool:
        return self.status(campaign_id) == "running"

    def answered(self, campaign_id: uuid.UUID, result: SendResult) -> bool:
        """Count a send's answer: one that found the provider unavailable adds to the campaign's run of them,
        any other (a success, any other error: the provider took the request) ends it. From
        `outage_failures` in a row the provider is down and the campaign's sends here stop (kept across
        batches, so the runner's probe after a wait is judged at once). True when this answer made it so."""
        if not result.unavailable:
            self._unavailable.pop(campaign_id, None)
            return False
        n = self._unavailable[campaign_id] = self._unavailable.get(campaign_id, 0) + 1
        if n >= self.outage_failures:
            self.stop(campaign_id, "provider down")
        return n == self.outage_failures

    def provider_down(self, campaign_id: uuid.UUID) -> bool:
        return self._unavailable.get(campaign_id, 0) >= self.outage_failures

    async def sleep_until(self, campaign_id: uuid.UUID, when: float, step: float = 0.25) -> bool:
        """Sleep until wall-clock `when`, waking at least every `step` seconds to notice a pause or
        cancel. Returns whether the campaign still runs. Plain sleeps: one timer per wake, no tasks."""
        while self.running(campaign_id):
            left = when - time.time()
            if left <= 0:
                return True
            await asyncio.sleep(min(left, step))
        return False

    async def poll_forever(self) -> None:
        engine = get_engine()

        def read(ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("select id, status from campaigns where id = any(:ids)"), {"ids": ids})
                return {r.id: r.status for r in rows}

        while True:
            await asyncio.sleep(self.poll_seconds)
            ids = list(self._users)
            if not ids:
                continue
            try:
                fresh = await asyncio.to_thread(read, ids)
            except sa.exc.SQLAlchemyError:
                continue  # keep the last known status; the next poll retries
            self._status.update({k: v for k, v in fresh.items() if k in self._users})


def tune_gc() -> None:
    """Keep the collector from stalling the send loop.

    Measured (bench notes in BENCHMARKS.md): with Prefect and SQLAlchemy loaded, full collections
    paused the event loop for up to 170 ms, so sends woke late and bunched (p99 lateness 89 ms with
    one batch in flight). Freezing the objects that exist after start-up (modules, classes: they live
    for the whole process) and collecting the young generations less often brought p99 under 20 ms.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


class SendEngine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        tune_gc()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="send-engine", daemon=True)
        self._thread.start()
        self.session: aiohttp.ClientSession = self.run(self._make_session())
        pool = aredis.BlockingConnectionPool.from_url(settings.redis_url or "", max_connections=128, timeout=30)
        self.redis = aredis.Redis(connection_pool=pool)
        self.limiter = RateLimiter(self.redis, LimitHistory())
        self.control = CampaignControl(settings.control_poll_seconds, settings.provider_outage_failures)
        self._poller: Future[None] = asyncio.run_coroutine_threadsafe(self.control.poll_forever(), self.loop)

    async def _make_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.settings.http_max_connections, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300
        )
        timeout = aiohttp.ClientTimeout(total=self.settings.http_timeout_seconds, connect=10)
        return aiohttp.ClientSession(connector=connector, timeout=timeout, raise_for_status=False)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the engine's loop from any thread and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self._poller.cancel()

        async def _close() -> None:
            await self.session.close()
            await self.redis.aclose()

        try:
            self.run(_close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
