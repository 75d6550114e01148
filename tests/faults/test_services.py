"""Postgres and Redis lost mid-campaign. The runner carries on by itself (it takes its lock again once
Postgres answers; the caps are rebuilt from Postgres when Redis lost them); the sandbox's record is the judge,
and no number goes over its rate or its caps after the fault."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from campaigns.control import lifecycle, tenancy
from campaigns.settings import get_settings
from tests.faults.harness import judge, new_campaign, number_of, sent_ids, settle_statuses, wait_accepted
from tests.helpers import run_campaign

pytestmark = pytest.mark.flow  # every scenario runs a campaign through the send-campaign flow


def _during(sandbox, accepted: int, fault) -> tuple[threading.Thread, list[float]]:
    """Run `fault` in a thread once the sandbox has accepted `accepted` messages; the list gets its time."""
    when: list[float] = []

    def go() -> None:
        wait_accepted(sandbox, accepted)
        when.append(time.time())
        fault()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, when


def terminate_backends(db) -> None:
    """Every connection to this test database but the one asking dies, as in a Postgres restart (others'
    databases untouched)."""
    with db.connect() as conn:
        conn.execute(
            sa.text("""
            select pg_terminate_backend(pid) from pg_stat_activity
            where datname = current_database() and pid <> pg_backend_pid()
        """)
        )
        conn.commit()


def restart_cluster() -> None:
    """The machine's Postgres restarted (every database on it: other sessions see it too, for a second)."""
    version = next(Path("/etc/postgresql").iterdir()).name
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )


def postgres_lost(db, org, sandbox, fault, scenario: str, total: int, mps: int, start: int) -> None:
    sandbox.configure(latency_ms=50, webhook_max_retries=12)  # Meta retries a webhook it could not deliver
    cid = new_campaign(db, org, sandbox, total, mps, start=start)
    thread, when = _during(sandbox, total // 3, fault)
    result = run_campaign(cid)
    thread.join()
    verdict = judge(db, sandbox, cid, scenario, when)
    assert result["status"] == "completed", (result, verdict.line())
    assert (verdict.duplicates, verdict.missing, verdict.stats_exact) == (0, 0, True), verdict.line()


def test_every_postgres_connection_killed_mid_campaign(db, org, sandbox):
    postgres_lost(
        db,
        org,
        sandbox,
        lambda: terminate_backends(db),
        "postgres: backends terminated",
        total=600,
        mps=100,
        start=40_000,
    )


@pytest.mark.heavy
def test_heavy_the_postgres_cluster_restarted_mid_campaign(db, org, sandbox):
    postgres_lost(db, org, sandbox, restart_cluster, "postgres: cluster restarted", total=3000, mps=150, start=44_000)


def redis_lost(db, org, sandbox, scenario: str, total: int, mps: int, per_hour: int, start: int) -> None:
    """Redis flushed (this slot's db: all it would lose in a restart without persistence) mid-campaign, with
    an hourly cap the campaign reaches after the fault: the cap and the rate still hold."""
    sandbox.configure(latency_ms=50, mps_cap=mps)  # a peer that refuses more than the number's rate
    cid = new_campaign(db, org, sandbox, total, mps, start=start)
    with db.begin() as conn:
        tenancy.set_number_limits(conn, org, number_of(db, cid), {"per_hour": per_hour})
    flush = redis.Redis.from_url(get_settings().redis_url or "").flushdb
    thread, when = _during(sandbox, per_hour // 3, flush)
    result = run_campaign(cid)
    thread.join()
    settle_statuses(db, sandbox)
    sent = sent_ids(db, cid)
    stats = sandbox.stats()
    fastest = max(stats["max_window_per_second_by_phone"].values())
    verdict = judge(
        db,
        sandbox,
        cid,
        scenario,
        when,
        eligible_ids=sent,
        cap=per_hour,
        max_per_second=fastest,
        mps=mps,
        refused_130429=stats["throttled_130429"],
    )
    with db.connect() as conn:
        paused_reason = lifecycle.get_any_org(conn, cid)["paused_reason"]
    assert (result["status"], paused_reason) == ("paused", "rate_limit")
    assert (verdict.duplicates, verdict.missing, verdict.stats_exact) == (0, 0, True), verdict.line()
    assert verdict.accepted <= per_hour, verdict.line()  # the hour's cap, across the flush
    # The rate across the flush. A lost limiter asked for twice the rate (65 refusals of 400 before the fix);
    # what remains is arrival jitter on a busy machine against a peer that counts a sliding second while the
    # engine paces 4% under it (0-2 refusals of 400 at load 3-6): 1% of the campaign is the line between them.
    assert fastest <= mps * 1.1, verdict.line()
    assert stats["throttled_130429"] <= total // 100, verdict.line()


def test_redis_flushed_mid_campaign_keeps_the_cap_and_the_rate(db, org, sandbox):
    redis_lost(db, org, sandbox, "redis: flushed", total=400, mps=60, per_hour=240, start=50_000)


@pytest.mark.heavy
def test_heavy_redis_flushed_mid_campaign_keeps_the_cap_and_the_rate(db, org, sandbox):
    redis_lost(db, org, sandbox, "redis: flushed (bigger)", total=3000, mps=150, per_hour=1800, start=53_000)
