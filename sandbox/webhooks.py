"""How the sandbox's webhooks reach the receiver: signed, late, batched, twice or out of order, retried.

The send path only pushes events onto a heap (:meth:`WebhookSender.push`), so scheduling never slows a send.
A dispatcher task wakes every tick, takes the due events and posts them: Meta's of one tick together in one
signed POST (``X-Hub-Signature-256``, :func:`sign_body`), Evolution's one per POST with its ``apikey``, at
most ``webhook_concurrency`` POSTs at a time, each retried with exponential backoff and dropped (counted)
after ``webhook_max_retries``. Duplicates and shuffling are decided when an event is pushed.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp

from sandbox.config import SandboxConfig
from sandbox.events import evolution_envelope, evolution_url, meta_payload

logger = logging.getLogger(__name__)


def sign_body(body: bytes, app_secret: str) -> str:
    """Value of ``X-Hub-Signature-256`` for ``body``: ``sha256=<hex HMAC-SHA256(app_secret, body)>``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, app_secret: str) -> bool:
    """Constant-time check of an ``X-Hub-Signature-256`` header against the raw body."""
    return bool(header) and hmac.compare_digest(sign_body(body, app_secret), header or "")


#: A scheduled webhook event: (due monotonic time, tie-breaker, provider, phone_number_id or instance, kind,
#: item); kind is sent/delivered/read/failed/reply whatever the provider, so stats count both alike.
_Event = tuple[float, int, str, str, str, dict[str, Any]]
#: Where a webhook body goes, from the config current at each attempt (so rotated secrets and URLs apply to
#: retries): (url, headers), or None when no receiver is configured any more.
_Target = Callable[[SandboxConfig, bytes], tuple[str, dict[str, str]] | None]
#: One POST to make: the kinds of the events it carries, its body and its target.
_Post = tuple[list[str], bytes, _Target]


def _meta_target(cfg: SandboxConfig, body: bytes) -> tuple[str, dict[str, str]] | None:
    if not cfg.webhook_url:
        return None
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign_body(body, cfg.app_secret),
        "User-Agent": "facebookexternalua",
    }
    return cfg.webhook_url, headers


def _evolution_target(instance: str, cfg: SandboxConfig, body: bytes) -> tuple[str, dict[str, str]] | None:
    """Evolution signs nothing: the receiver checks the ``apikey`` header against the instance's key."""
    url = evolution_url(cfg, instance)
    if url is None:
        return None
    headers = {"Content-Type": "application/json", "User-Agent": "axios/1.7.9"}
    if key := cfg.evolution_keys.get(instance):
        headers["apikey"] = key
    return url, headers


class WebhookSender:
    """The heap of scheduled events and the dispatcher that posts them. Runs on the event loop serving the app."""

    _DISPATCH_TICK_S = 0.01

    def __init__(self, config: Callable[[], SandboxConfig], rng: random.Random, timing_rng: random.Random) -> None:
        self._config = config  # the current config, read again at every batch and every attempt
        self._rng = rng  # the sandbox's outcome RNG: whether an event is duplicated (reproducible)
        self._timing_rng = timing_rng  # shuffle delays and order (timing only)
        self._heap: list[_Event] = []
        self._heap_seq = itertools.count()
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._inflight_posts = 0
        self._pending = 0  # events scheduled and not yet posted or dropped
        self._post_tasks: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.server_url = "http://127.0.0.1"  # Evolution's SERVER_URL, as last seen by an Evolution request
        self.reset_counters()

    def reset_counters(self) -> None:
        self._posts_ok = 0
        self._posts_failed = 0
        self._events_dropped = 0
        self._events_posted: Counter[str] = Counter()
        self._duplicates_scheduled = 0

    def drop_scheduled(self) -> None:
        """Forget the events not posted yet (those in flight still finish)."""
        self._pending -= len(self._heap)
        self._heap.clear()

    @property
    def pending(self) -> int:
        return self._pending

    def stats(self) -> dict[str, Any]:
        return {
            "webhook_posts_ok": self._posts_ok,
            "webhook_posts_failed": self._posts_failed,
            "webhook_events_posted": dict(self._events_posted),
            "webhook_events_dropped": self._events_dropped,
            "webhook_duplicates_scheduled": self._duplicates_scheduled,
            "webhook_pending": self._pending,
        }

    def push(self, cfg: SandboxConfig, due: float, provider: str, sender: str, kind: str, item: dict[str, Any]) -> None:
        """Schedule one event at monotonic time ``due`` (plus shuffle jitter), maybe more than once."""
        if cfg.shuffle:
            due += self._timing_rng.uniform(0, cfg.shuffle_window_ms / 1000.0)
        route = (provider, sender, kind, item)
        heapq.heappush(self._heap, (due, next(self._heap_seq), *route))
        self._pending += 1
        if cfg.duplicate_rate and self._rng.random() < cfg.duplicate_rate:
            for _ in range(cfg.duplicate_copies):
                again = due + self._timing_rng.uniform(0, cfg.duplicate_delay_ms / 1000.0)
                heapq.heappush(self._heap, (again, next(self._heap_seq), *route))
                self._pending += 1
                self._duplicates_scheduled += 1
        self._wake.set()

    async def start(self) -> None:
        """Create the long-lived client session and the dispatcher task (on the serving loop)."""
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False))
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="sandbox-webhook-dispatcher")

    async def stop(self) -> None:
        """Cancel the dispatcher and in-flight POSTs, close the session."""
        tasks = [*self._post_tasks, *([self._dispatcher] if self._dispatcher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._dispatcher = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _dispatch_loop(self) -> None:
        """Every tick, post the due events in batches, keeping at most ``webhook_concurrency`` POSTs open."""
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self._DISPATCH_TICK_S)  # lets a tick's worth of events share a POST
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                cfg = self._config()
                batch: list[tuple[str, str, str, dict[str, Any]]] = []
                while self._heap and self._heap[0][0] <= now and len(batch) < cfg.webhook_batch_size:
                    _, _, provider, sender, kind, item = heapq.heappop(self._heap)
                    batch.append((provider, sender, kind, item))
                for kinds, body, target in self._posts(cfg, batch):
                    while self._inflight_posts >= self._config().webhook_concurrency:
                        self._slot_free.clear()
                        await self._slot_free.wait()
                    self._inflight_posts += 1
                    task = asyncio.create_task(self._post(kinds, body, target))
                    self._post_tasks.add(task)
                    task.add_done_callback(self._post_tasks.discard)

    def _posts(self, cfg: SandboxConfig, batch: list[tuple[str, str, str, dict[str, Any]]]) -> Iterator[_Post]:
        """Meta batches a tick's events into one signed POST; Evolution posts every event on its own."""
        meta = [(sender, kind, item) for provider, sender, kind, item in batch if provider != "evolution"]
        if meta:
            if cfg.shuffle:
                self._timing_rng.shuffle(meta)
            body = json.dumps(meta_payload(cfg, meta), separators=(",", ":")).encode()
            yield [kind for _, kind, _ in meta], body, _meta_target
        for provider, instance, kind, item in batch:
            if provider == "evolution":
                envelope = evolution_envelope(cfg, instance, item, self.server_url)
                yield (
                    [kind],
                    json.dumps(envelope, separators=(",", ":")).encode(),
                    functools.partial(_evolution_target, instance),
                )

    async def _post(self, kinds: list[str], body: bytes, target: _Target) -> None:
        """POST one webhook body, retrying with exponential backoff as Meta and Evolution do; count the outcome."""
        try:
            for attempt in range(self._config().webhook_max_retries + 1):
                cfg = self._config()
                session = self._session
                destination = target(cfg, body) if session is not None else None
                if session is None or destination is None:
                    break
                url, headers = destination
                try:
                    async with session.post(
                        url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=cfg.webhook_timeout_s)
                    ) as resp:
                        await resp.read()
                        if 200 <= resp.status < 300:
                            self._posts_ok += 1
                            self._events_posted.update(kinds)
                            return
                        reason = f"HTTP {resp.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    reason = repr(exc)
                self._posts_failed += 1
                logger.debug("webhook POST attempt %d failed: %s", attempt + 1, reason)
                if attempt < cfg.webhook_max_retries:
                    await asyncio.sleep(min(5.0, cfg.webhook_retry_backoff_ms / 1000.0 * 2**attempt))
            self._events_dropped += len(kinds)
            logger.warning(
                "dropping %d webhook events after %d failed POSTs", len(kinds), self._config().webhook_max_retries + 1
            )
        finally:
            self._pending -= len(kinds)
            self._inflight_posts -= 1
            self._slot_free.set()

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every scheduled webhook was posted (or dropped). False if ``timeout`` elapsed first."""
        deadline = time.monotonic() + timeout
        while self._pending > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True
