"""A runner that fails, is killed or loses its lock never leaves a campaign "running" with nobody sending.
Real flow runs against the sandbox; the sandbox's own record of accepted messages is the judge."""

from __future__ import annotations

import os
import signal

import pytest
import redis

from tests.faults.harness import runner_pid
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    campaign_row,
    cli,
    create_campaign,
    org_name,
    phones,
    recipients,
    run_campaign,
    sent_counts,
    wait_for,
)

pytestmark = pytest.mark.flow  # every test runs the send-campaign flow, in this process or under `campaigns start`


def _exactly_once(db, sandbox, cid) -> None:
    rows = recipients(db, cid)
    counts = sent_counts(sandbox)
    assert sorted(counts) == sorted(f"pytake:{r['id']}" for r in rows)
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v > 1}


def test_a_runner_that_raises_inside_reconciliation_pauses_its_campaign_with_the_error(db, org, sandbox, monkeypatch):
    sandbox.configure(rules=[{"match": "7$", "code": 131000}])  # ambiguous: the row waits for reconciliation
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": "+5511900000007", "name": "Ana"}, {"phone": "+5511900000008", "name": "Bia"}])
    cid = create_campaign(db, org, number)

    def hostile_inbox(_db):  # what a signed body nested 5,000 deep did to ingestion
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("campaigns.sending.reconcile.ingest_pending", hostile_inbox)
    result = run_campaign(cid)

    assert result["state"] == "FAILED"
    row = campaign_row(db, cid)
    assert (row["status"], row["paused_reason"]) == ("paused", "runner_failed")  # was: running, nobody sending
    assert "RecursionError: maximum recursion depth exceeded" in row["last_error_message"]
    assert "resume" in row["last_error_message"]


def _send_slots_taken() -> int:
    """Slots of the send limit held now, by any flow run (0 when the limit does not exist yet)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from campaigns.settings import get_settings

    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(get_settings().send_concurrency_name).active_slots
        except ObjectNotFound:
            return 0


@pytest.mark.timeout(300)
def test_a_campaign_started_from_the_cli_without_serve_survives_its_runner_being_killed(db, org, sandbox):
    total = 300
    slots_before = _send_slots_taken()  # a runner killed by an earlier test may still hold some (its lease)
    sandbox.configure(latency_ms=100)
    number = add_sandbox_number(db, org, sandbox, mps=60)
    add_contacts(db, org, [{"phone": p, "name": f"C{i}"} for i, p in enumerate(phones(total, start=9900))])
    cid = create_campaign(db, org, number)

    assert "running the campaign in a background process" in cli("start", str(cid), "--org", org_name(db, org)).stderr
    wait_for(lambda: len(sandbox.messages()) >= total // 4, timeout=120)
    first = runner_pid(cid)  # the flow process `campaigns start` left running it (not its supervisor)
    # Killed while it holds send slots whose lease it has written down (it writes it the moment Prefect grants
    # them): a kill inside the grant itself, before the write, leaves them to the lease's expiry, as before.
    written_down = redis.Redis.from_url(os.environ["REDIS_URL"])
    wait_for(lambda: written_down.exists(f"campaign:{cid}:send-lease"), timeout=30, interval=0.001)
    os.kill(first, signal.SIGKILL)

    wait_for(lambda: campaign_row(db, cid)["status"] != "running", timeout=180, interval=0.5)

    assert campaign_row(db, cid)["status"] == "completed"  # was: running for ever, with nobody sending
    _exactly_once(db, sandbox, cid)
    # The next runner gave the dead one's slots back: was 12 held until its lease expired (~60 s after the kill).
    assert _send_slots_taken() <= slots_before


def _terminate_lock_backend(db, cid) -> list[bool]:
    """What a Postgres restart does to a runner: the backend holding its advisory lock is gone."""
    import sqlalchemy as sa

    from campaigns.store.runlock import _key

    key = _key(cid) & 0xFFFFFFFFFFFFFFFF  # pg_locks shows a bigint key as two unsigned 32-bit halves
    with db.begin() as conn:
        return (
            conn.execute(
                sa.text("""
            select pg_terminate_backend(pid) from pg_locks
            where locktype = 'advisory' and granted and classid::bigint = :hi and objid::bigint = :lo
        """),
                {"hi": key >> 32, "lo": key & 0xFFFFFFFF},
            )
            .scalars()
            .all()
        )


def test_a_runner_whose_lock_died_with_its_postgres_connection_takes_it_again_and_carries_on(db, org, sandbox):
    import threading

    total = 400
    number = add_sandbox_number(db, org, sandbox, mps=100)
    add_contacts(db, org, [{"phone": p, "name": f"C{i}"} for i, p in enumerate(phones(total, start=9950))])
    cid = create_campaign(db, org, number)
    killed: list[bool] = []
    accepted_then: list[int] = []

    def restart_mid_campaign() -> None:
        wait_for(lambda: len(sandbox.messages()) >= total // 4, timeout=120)
        killed.extend(_terminate_lock_backend(db, cid))
        accepted_then.append(len(sandbox.messages()))

    thread = threading.Thread(target=restart_mid_campaign)
    thread.start()
    try:
        result = run_campaign(cid)
    finally:
        thread.join()

    assert killed == [True] and accepted_then[0] < total  # it happened mid-campaign
    assert result["status"] == "completed", result  # was: 'runner lock lost', left to the scheduler's next pass
    _exactly_once(db, sandbox, cid)


def test_the_supervisor_starts_a_killed_runner_again_even_while_postgres_still_holds_its_lock(db, org, sandbox):
    """A killed runner's lock outlives it until Postgres sees its connection close (seconds on a loaded
    machine). Read at once, it looked like another runner's, and the supervisor left the campaign running with
    nobody sending (a fault test waited 120 s for a runner that was never started)."""
    import threading
    import time

    import sqlalchemy as sa

    from campaigns.sending.runner import supervise
    from campaigns.store.runlock import _key
    from tests.helpers import start_campaign

    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(3)])
    cid = create_campaign(db, org, number)
    start_campaign(db, org, cid)
    runs: list[float] = []

    def run_once() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:  # the runner dies; its lock's connection is closed by Postgres a second later
            held = db.connect()
            held.execute(sa.text("select pg_advisory_lock(:k)"), {"k": _key(cid)})
            held.commit()
            threading.Timer(1.0, held.close).start()
        else:  # the runner started again finishes the campaign
            with db.begin() as conn:
                conn.execute(sa.text("update campaigns set status = 'completed' where id = :c"), {"c": cid})

    assert supervise(db, cid, run_once) == 1
    assert len(runs) == 2 and campaign_row(db, cid)["status"] == "completed"
