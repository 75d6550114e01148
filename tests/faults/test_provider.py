"""The provider down for a while, the provider slower than the client's timeout, and a storm of status
webhooks: no duplicates, the campaign finishes by itself, statistics exact."""

from __future__ import annotations

import os
import threading
import time

import pytest

from campaigns.infra.asgi_thread import ThreadedServer
from campaigns.sending.engine_process import close_engine_client
from campaigns.webhook_app import create_app
from campaigns.webhooks.receiver import KnownSecrets
from tests.faults.harness import judge, new_campaign, wait_accepted
from tests.helpers import APP_SECRET, recipients, run_campaign, shrink_retry_delay, use_settings

pytestmark = pytest.mark.flow  # every scenario runs a campaign through the send-campaign flow

OUTAGE = {"match": ".*", "code": 2, "http_status": 503}  # Graph's "Service temporarily unavailable"


def _after(sandbox, accepted: int, seconds: float, start: dict, end: dict) -> tuple[threading.Thread, list[float]]:
    """Configure the sandbox with `start` once it accepted `accepted` messages, and with `end` `seconds` later."""
    when: list[float] = []

    def go() -> None:
        wait_accepted(sandbox, accepted)
        when.append(time.time())
        sandbox.configure(**start)
        time.sleep(seconds)
        sandbox.configure(**end)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, when


def outage(db, org, sandbox, seconds: float, total: int, mps: int, start: int) -> None:
    sandbox.configure(latency_ms=20)
    cid = new_campaign(db, org, sandbox, total, mps, start=start)
    shrink_retry_delay(db, cid, 1)
    thread, when = _after(sandbox, total // 3, seconds, {"rules": [OUTAGE]}, {"rules": []})
    result = run_campaign(cid)
    thread.join()
    attempts = [r["attempts"] for r in recipients(db, cid)]
    verdict = judge(
        db,
        sandbox,
        cid,
        f"provider: 503 for {seconds:.0f} s",
        when,
        errors_503=sandbox.stats()["errors_by_code"].get(2, 0),
        attempts_spent=sum(attempts) - len(attempts),
    )  # retries the outage cost the recipients
    assert result["status"] == "completed", (result, verdict.line())
    assert (verdict.duplicates, verdict.missing, verdict.stats_exact) == (0, 0, True), verdict.line()


def test_a_provider_outage_then_recovery(db, org, sandbox):
    outage(db, org, sandbox, 8, total=400, mps=100, start=60_000)


@pytest.mark.heavy
def test_heavy_a_one_minute_provider_outage_then_recovery(db, org, sandbox):
    outage(db, org, sandbox, 60, total=3000, mps=100, start=62_000)


def slow_provider(db, org, sandbox, total: int, mps: int, start: int) -> None:
    """For a few seconds every answer comes after the client gave up (the message accepted all the same)."""
    sandbox.configure(latency_ms=20)
    cid = new_campaign(db, org, sandbox, total, mps, start=start)
    # A 1 s client timeout (the send engine is started again to read it); the status webhook then comes well
    # inside the grace period, as Meta's do against the default 30 s timeout and 120 s grace.
    with use_settings(http_timeout_seconds=1, reconcile_grace_seconds=10):
        close_engine_client()
        try:
            thread, when = _after(sandbox, total // 3, 3, {"latency_ms": 1500}, {"latency_ms": 20})
            result = run_campaign(cid)
            thread.join()
        finally:
            close_engine_client()
    assert os.environ["RECONCILE_GRACE_SECONDS"] == "2"
    verdict = judge(db, sandbox, cid, "provider: answers after the timeout", when)
    assert result["status"] == "completed", (result, verdict.line())
    assert (verdict.duplicates, verdict.missing, verdict.stats_exact) == (0, 0, True), verdict.line()


def test_a_provider_answering_after_the_timeout(db, org, sandbox):
    slow_provider(db, org, sandbox, total=300, mps=100, start=64_000)


def _receiver_restarted(
    sandbox,
    receiver: ThreadedServer,
    accepted: int,
    down_seconds: float,
) -> tuple[threading.Thread, list[float], list[ThreadedServer]]:
    """Stop `receiver` once the sandbox accepted `accepted` messages and start a new one on its port
    `down_seconds` later; meanwhile the sandbox's POSTs fail and are retried, as Meta's are."""
    when: list[float] = []
    servers = [receiver]

    def go() -> None:
        wait_accepted(sandbox, accepted)
        when.append(time.time())
        receiver.stop()
        time.sleep(down_seconds)
        servers.append(ThreadedServer(create_app(os.environ["DATABASE_URL"], _secrets()), port=receiver.port).start())

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, when, servers


def _secrets() -> KnownSecrets:
    return KnownSecrets(app_secrets=[APP_SECRET.encode()], verify_tokens=["verify-me"])


def storm(db, org, sandbox, total: int, mps: int, start: int) -> None:
    """Every status three times, shuffled, the first ones before their batch is recorded, replies too; the
    receiver restarted halfway (down for 2 s) while the sandbox retries what it could not post."""
    receiver = ThreadedServer(create_app(os.environ["DATABASE_URL"], _secrets())).start()
    sandbox.configure(
        latency_ms=20,
        sent_delay_ms=0,
        delivered_delay_ms=0,
        read_delay_ms=0,
        reply_delay_ms=0,
        read_rate=0.6,
        reply_rate=0.3,
        duplicate_rate=1.0,
        duplicate_copies=2,
        duplicate_delay_ms=500,
        shuffle=True,
        shuffle_window_ms=500,
        webhook_url=f"{receiver.url}/webhooks/whatsapp",
        webhook_max_retries=8,
    )  # backoff 0.1 s doubling, up to 5 s: ~15 s of retries
    cid = new_campaign(db, org, sandbox, total, mps, start=start)
    thread, when, servers = _receiver_restarted(sandbox, receiver, total // 2, 2.0)
    try:
        result = run_campaign(cid)
        thread.join()
        sandbox.drain_webhooks(timeout=60)  # every webhook posted (or dropped) while a receiver listens
        stats = sandbox.stats()
        verdict = judge(
            db,
            sandbox,
            cid,
            "webhook storm, receiver restarted",
            when,
            events_posted=sum(stats["webhook_events_posted"].values()),
            posts_refused_while_down=stats["webhook_posts_failed"],
        )
    finally:
        for server in servers:
            server.stop()
    assert stats["webhook_posts_failed"] > 0 and stats["webhook_events_dropped"] == 0, stats  # down, then retried
    assert result["status"] == "completed", (result, verdict.line())
    assert (verdict.duplicates, verdict.missing, verdict.stats_exact) == (0, 0, True), verdict.line()


def test_a_webhook_storm_and_a_receiver_restart_leave_the_statistics_exact(db, org, sandbox):
    storm(db, org, sandbox, total=400, mps=200, start=66_000)


@pytest.mark.heavy
def test_heavy_a_webhook_storm_and_a_receiver_restart_leave_the_statistics_exact(db, org, sandbox):
    storm(db, org, sandbox, total=3000, mps=300, start=67_000)
