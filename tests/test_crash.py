"""A worker killed with SIGKILL mid-campaign, then restarted: every recipient gets the message exactly once.

The worker is a real `campaigns run` process (Prefect flow + its send-engine child). After the kill,
rows it left in `sending` are settled from the sandbox's signed status webhooks (which carry our
recipient id) before anything is resent; the sandbox's own record is the judge.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from campaigns.sending.reconcile import reconcile
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    create_campaign,
    phones,
    recipients,
    run_campaign,
    sent_counts,
    wait_for,
)

pytestmark = pytest.mark.flow  # every test runs a campaign through the send-campaign flow

TOTAL = 1200


def test_sigkill_mid_campaign_then_restart_sends_each_recipient_exactly_once(db, org, sandbox):
    sandbox.configure(latency_ms=150)  # many requests in flight when the worker dies
    number = add_sandbox_number(db, org, sandbox, mps=150)
    add_contacts(db, org, [{"phone": p, "name": f"C{i}"} for i, p in enumerate(phones(TOTAL))])
    cid = create_campaign(db, org, number)

    worker = subprocess.Popen(
        [sys.executable, "-m", "campaigns.cli", "run", str(cid)],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: len(sandbox.messages()) >= TOTAL // 3, timeout=120)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    killed_at = len(sandbox.messages())
    assert 0 < killed_at < TOTAL
    # The send engine dies with its worker: nothing more leaves after the kill.
    time.sleep(1.0)
    settled = len(sandbox.messages())
    time.sleep(1.0)
    assert len(sandbox.messages()) == settled
    in_flight = [r for r in recipients(db, cid) if r["status"] == "sending"]
    assert in_flight, "the kill should leave rows whose outcome is unknown"

    result = run_campaign(cid)

    assert result["status"] == "completed"
    rows = recipients(db, cid)
    counts = sent_counts(sandbox)
    assert sorted(counts) == sorted(f"pytake:{r['id']}" for r in rows)
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v > 1}
    assert {r["status"] for r in rows} <= {"sent", "delivered", "read"}


# Rows a killed worker may have marked in flight without their request leaving yet: the chunk each batch
# walking its slots had marked (~0.5 s of sending, 24 rows at 50 msg/s), a little more for the lead.
MARKED_AHEAD_BOUND = 75


def test_rows_claimed_but_never_sent_go_back_to_pending_at_the_restarts_first_reconcile(db, org, sandbox):
    """Issue 9, recovery speed: a slow campaign claims far more rows than it has sent (twelve batches of 100
    at 50 msg/s). Killed, those rows were certainly never sent: the restarted runner's first reconcile puts
    them back to pending at once, with the production grace of 120 s; only rows whose request may have left
    (marked in flight before it could leave) wait for their status webhook."""
    sandbox.configure(latency_ms=150)
    number = add_sandbox_number(db, org, sandbox, mps=50)
    add_contacts(db, org, [{"phone": p, "name": f"C{i}"} for i, p in enumerate(phones(600, start=7000))])
    cid = create_campaign(db, org, number)
    env = {**os.environ, "RECONCILE_GRACE_SECONDS": "120"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "campaigns.cli", "run", str(cid)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: len(sandbox.messages()) >= 100, timeout=120)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    wait_for(_stable(sandbox), timeout=10)
    claimed = {r["id"] for r in recipients(db, cid) if r["status"] == "sending"}
    reached = {int(key.removeprefix("pytake:")) for key in sent_counts(sandbox)}

    reconcile(db, cid, grace_seconds=120)  # what the restarted runner does first

    after = {r["id"]: r for r in recipients(db, cid)}
    never_sent = claimed - reached
    waiting = sorted(i for i in never_sent if after[i]["status"] == "sending")
    assert len(never_sent) > 300, "the kill should leave many rows claimed and not yet sent"
    assert len(waiting) <= MARKED_AHEAD_BOUND, f"{len(waiting)} of {len(never_sent)} never-sent rows wait the grace"
    assert {after[i]["status"] for i in never_sent if i not in waiting} == {"pending"}
    assert not [i for i in reached if after[i]["status"] == "pending"]  # a request that left is never resent blind
    assert all(r["in_flight_at"] is not None for r in after.values() if r["status"] == "sending")

    result = run_campaign(cid)  # the tests' grace, 2 s: the rows still marked settle without a two-minute wait

    assert result["status"] == "completed"
    counts = sent_counts(sandbox)
    assert sorted(counts) == sorted(f"pytake:{i}" for i in after)
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v > 1}


def _stable(sandbox):
    """True once the sandbox's count of accepted messages stopped moving (the engine died with its worker)."""
    seen: list[int] = []

    def check() -> bool:
        seen.append(len(sandbox.messages()))
        time.sleep(0.5)
        return len(seen) > 1 and seen[-1] == seen[-2]

    return check
