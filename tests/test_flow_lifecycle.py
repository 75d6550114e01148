"""Pause, resume, cancel and concurrent runners, on the real flow against the sandbox."""

from __future__ import annotations

import threading
import time

import pytest

from campaigns.control import lifecycle
from campaigns.errors import Conflict
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    campaign_row,
    create_campaign,
    phones,
    recipients,
    run_campaign,
    sent_counts,
    wait_for,
)


def _start_in_thread(cid):
    out = {}
    thread = threading.Thread(target=lambda: out.update(result=run_campaign(cid)), daemon=True)
    thread.start()
    return thread, out


@pytest.mark.flow
def test_pause_stops_sending_within_two_seconds_and_resume_sends_only_what_is_left(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox, mps=50)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(400)])
    cid = create_campaign(db, org, number)
    thread, out = _start_in_thread(cid)
    wait_for(lambda: len(sandbox.messages()) >= 60, timeout=60)

    with db.begin() as conn:
        lifecycle.pause(conn, org, cid)
    paused_at = time.monotonic()
    # Sends stop within two seconds, including those of batches already in flight.
    time.sleep(2.0)
    after_two_seconds = len(sandbox.messages())
    time.sleep(1.5)
    assert len(sandbox.messages()) == after_two_seconds
    thread.join(timeout=30)
    assert out["result"]["status"] == "paused"
    assert time.monotonic() - paused_at < 30
    rows = recipients(db, cid)
    assert {r["status"] for r in rows} <= {"pending", "sent", "delivered", "read"}
    pending_before = sum(r["status"] == "pending" for r in rows)
    assert pending_before > 0
    assert campaign_row(db, cid)["paused_reason"] == "operator"

    # Paused, the message may be edited; the audience was built at the start and cannot change silently.
    with db.begin() as conn:
        with pytest.raises(Conflict, match="Cannot change audience_filter, respect_opt_out: the audience"):
            lifecycle.update(conn, org, cid, {"audience_filter": {"tags": ["vip"]}, "respect_opt_out": False})
        lifecycle.update(
            conn,
            org,
            cid,
            {
                "template_variables": {"body": ["Edited for {{contact.name}}"]},
                "audience_type": "all_contacts",
                "respect_opt_out": True,
            },
        )  # unchanged
        lifecycle.resume(conn, org, cid)
    assert run_campaign(cid)["status"] == "completed"
    counts = sent_counts(sandbox)
    assert len(counts) == 400 and set(counts.values()) == {1}
    edited = [m for m in sandbox.messages() if "Edited for Ana" in str(m["template"])]
    assert len(edited) == pending_before  # what was still pending went out with the edited variables


@pytest.mark.flow
def test_cancel_is_final_and_marks_what_was_not_sent(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox, mps=50)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(300)])
    cid = create_campaign(db, org, number)
    thread, out = _start_in_thread(cid)
    wait_for(lambda: len(sandbox.messages()) >= 40, timeout=60)
    with db.begin() as conn:
        lifecycle.cancel(conn, org, cid)
    thread.join(timeout=30)
    assert out["result"]["status"] == "cancelled"
    rows = recipients(db, cid)
    sent = len(sandbox.messages())
    assert sum(r["status"] == "cancelled" for r in rows) == 300 - sent
    assert {r["status"] for r in rows} <= {"cancelled", "sent", "delivered", "read"}
    # A cancelled campaign cannot be resumed or started again.
    with db.begin() as conn:
        try:
            lifecycle.resume(conn, org, cid)
            raise AssertionError("resume of a cancelled campaign was accepted")
        except Conflict as exc:
            assert "cancelled" in exc.message
    assert run_campaign(cid)["status"] == "cancelled"
    assert len(sandbox.messages()) == sent


@pytest.mark.flow
def test_two_runs_of_one_campaign_send_each_row_once(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox, mps=400)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(600)])
    cid = create_campaign(db, org, number)
    t1, out1 = _start_in_thread(cid)
    t2, out2 = _start_in_thread(cid)
    t1.join(timeout=120)
    t2.join(timeout=120)
    statuses = {out1["result"]["status"], out2["result"]["status"]}
    assert "completed" in statuses
    counts = sent_counts(sandbox)
    assert len(counts) == 600 and set(counts.values()) == {1}


def test_batches_racing_without_the_runner_lock_still_send_each_row_once(db, org, sandbox):
    """The claim itself (pending → sending, SKIP LOCKED) is what makes sends unique."""
    from tasks.send import prepare_campaign, send_batch

    number = add_sandbox_number(db, org, sandbox, mps=1000)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(500)])
    cid = create_campaign(db, org, number)
    prepare_campaign.fn(cid)
    threads = [threading.Thread(target=lambda i=i: [send_batch.fn(cid, i) for _ in range(3)]) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = sent_counts(sandbox)
    assert len(counts) == 500 and set(counts.values()) == {1}
