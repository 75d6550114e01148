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

TOTAL = 1200


def test_sigkill_mid_campaign_then_restart_sends_each_recipient_exactly_once(db, org, sandbox):
    sandbox.configure(latency_ms=150)  # many requests in flight when the worker dies
    number = add_sandbox_number(db, org, sandbox, mps=150)
    add_contacts(db, org, [{"phone": p, "name": f"C{i}"} for i, p in enumerate(phones(TOTAL))])
    cid = create_campaign(db, org, number)

    worker = subprocess.Popen([sys.executable, "-m", "campaigns.cli", "run", str(cid)], env=os.environ.copy(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
