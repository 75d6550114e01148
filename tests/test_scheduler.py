"""A running campaign whose runner is gone is launched again by the scheduler; one whose flow run an
operator cancelled in the Prefect UI (or that failed) is paused instead. Real Postgres locks, real
Prefect flow runs."""

from __future__ import annotations

import threading
import uuid

import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.states import Cancelled, Failed, Scheduled

from campaigns.launch import flow_run_state
from campaigns.runlock import campaign_runner_lock
from campaigns.scheduler import due_campaigns
from campaigns.services import start_campaign
from tests.helpers import add_contacts, add_sandbox_number, campaign_row, create_campaign, phones


def _running_since_two_minutes(db, org, number, flow_run_id: str | None = None) -> uuid.UUID:
    cid = create_campaign(db, org, number)
    start_campaign(db, org, cid)
    with db.begin() as conn:
        conn.execute(sa.text("update campaigns set updated_at = now() - interval '2 minutes', flow_run_id = :r "
                             "where id = :c"), {"c": cid, "r": flow_run_id})
    return cid


def _flow_run_in(state) -> str:
    """A real flow run of send-campaign in Prefect, moved to `state` (as the UI's Cancel would)."""
    from prefect import flow

    @flow(name="send-campaign")
    def stand_in() -> None: ...

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(flow=stand_in)
        client.set_flow_run_state(run.id, state, force=True)
    return str(run.id)


def test_a_campaign_whose_runner_died_is_launched_again_and_a_live_one_is_left_alone(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(2, start=9300)])
    orphan = _running_since_two_minutes(db, org, number)
    alive = _running_since_two_minutes(db, org, number)

    held, release = threading.Event(), threading.Event()

    def runner() -> None:  # a live runner holds its campaign's lock
        with campaign_runner_lock(db, alive):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=runner)
    thread.start()
    try:
        assert held.wait(10)
        due = due_campaigns(db, start_campaign, flow_run_state)
        assert orphan in due.recovered and alive not in due.recovered
        assert orphan not in due_campaigns(db, start_campaign, flow_run_state).recovered  # not twice in a row
    finally:
        release.set()
        thread.join()


def test_a_flow_run_cancelled_in_the_ui_pauses_its_campaign_and_a_failed_one_says_so(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(2, start=9400)])
    cancelled_run, failed_run = _flow_run_in(Cancelled()), _flow_run_in(Failed())
    cancelled = _running_since_two_minutes(db, org, number, cancelled_run)
    failed = _running_since_two_minutes(db, org, number, failed_run)

    due = due_campaigns(db, start_campaign, flow_run_state)

    assert cancelled not in due.to_launch and failed not in due.to_launch
    row = campaign_row(db, cancelled)
    assert (row["status"], row["paused_reason"]) == ("paused", "operator")
    assert row["last_error_message"] == f"its flow run {cancelled_run} was cancelled in Prefect; resume to continue"
    row = campaign_row(db, failed)
    assert (row["status"], row["paused_reason"]) == ("paused", "runner_failed")


def test_a_runner_stopped_with_serve_is_relaunched_one_waiting_for_a_slot_is_left_and_a_crash_loop_stops(
        db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(2, start=9500)])
    # `serve` stopping cancels its runs with this message: the runner was lost, nobody meant to stop it.
    shutdown = _running_since_two_minutes(db, org, number, _flow_run_in(Cancelled(message="Runner is shutting down.")))
    waiting = _running_since_two_minutes(db, org, number, _flow_run_in(Scheduled()))
    looping = _running_since_two_minutes(db, org, number)
    with db.begin() as conn:
        conn.execute(sa.text("update campaigns set relaunches = 3 where id = :c"), {"c": looping})

    due = due_campaigns(db, start_campaign, flow_run_state)

    assert shutdown in due.recovered and campaign_row(db, shutdown)["relaunches"] == 1
    assert waiting not in due.to_launch and campaign_row(db, waiting)["status"] == "running"
    row = campaign_row(db, looping)
    assert (row["status"], row["paused_reason"]) == ("paused", "runner_failed")
    assert row["last_error_message"].startswith("its runner was lost 3 times in a row")
