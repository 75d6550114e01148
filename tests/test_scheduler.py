"""A running campaign whose runner is gone is launched again by the scheduler; one whose flow run an
operator cancelled in the Prefect UI (or that failed) is paused instead. Real Postgres locks, real
Prefect flow runs."""

from __future__ import annotations

import threading
import uuid

import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.states import Cancelled, Failed, Scheduled

from campaigns.control.scheduler import due_campaigns
from campaigns.store.runlock import campaign_runner_lock
from deployments.launch import flow_run_state
from tests.helpers import add_contacts, add_sandbox_number, campaign_row, create_campaign, phones, start_campaign


def _running_since_two_minutes(db, org, number, flow_run_id: str | None = None) -> uuid.UUID:
    cid = create_campaign(db, org, number)
    start_campaign(db, org, cid)
    with db.begin() as conn:
        conn.execute(
            sa.text("update campaigns set updated_at = now() - interval '2 minutes', flow_run_id = :r where id = :c"),
            {"c": cid, "r": flow_run_id},
        )
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
    db, org, sandbox
):
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


def _running_since(db, org, number, seconds: int, flow_run_id: str) -> uuid.UUID:
    cid = _running_since_two_minutes(db, org, number, flow_run_id)
    with db.begin() as conn:
        conn.execute(
            sa.text("update campaigns set updated_at = now() - make_interval(secs => :s) where id = :c"),
            {"c": cid, "s": seconds},
        )
    return cid


def test_a_campaign_whose_last_run_ended_is_taken_up_at_once_not_a_minute_later(db, org, sandbox):
    """`serve` back after a stop takes its interrupted campaigns up on its first pass: their last run is over
    (stopped with `serve`, crashed), so none is on its way. A run that may still be starting gets its minute,
    and a campaign started a moment ago (its new run not recorded yet) is left alone."""
    from prefect.states import Crashed, Running

    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(2, start=9600)])
    stopped = _running_since(db, org, number, 20, _flow_run_in(Cancelled(message="Runner is shutting down.")))
    crashed = _running_since(db, org, number, 20, _flow_run_in(Crashed()))
    starting = _running_since(db, org, number, 20, _flow_run_in(Running()))
    just_started = _running_since(db, org, number, 1, _flow_run_in(Crashed()))

    due = due_campaigns(db, start_campaign, flow_run_state)

    assert stopped in due.recovered and crashed in due.recovered
    assert starting not in due.recovered and just_started not in due.recovered
    assert stopped not in due_campaigns(db, start_campaign, flow_run_state).recovered  # not twice


def test_a_run_a_lost_worker_left_pending_is_launched_again_and_closed_in_prefect(db, org, sandbox):
    """A worker took the run (Pending) and died before its process started: nothing else would ever move
    it on, and the campaign would stay `running` at 0%. Past `pending_lost_seconds` it is launched again
    and its old run closed (Crashed, saying where the campaign went on); a run a worker is starting now is
    left to start."""
    from dataclasses import replace
    from datetime import timedelta

    from prefect.states import Pending

    from deployments.launch import PrefectRuns

    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(2, start=9700)])
    lost_run, starting_run = _flow_run_in(Pending()), _flow_run_in(Pending())
    lost = _running_since_two_minutes(db, org, number, lost_run)
    starting = _running_since_two_minutes(db, org, number, starting_run)

    def state_of(run_id):  # the lost run took its Pending five minutes ago
        state = flow_run_state(run_id)
        return replace(state, since=state.since - timedelta(minutes=5)) if run_id == lost_run else state

    due = due_campaigns(db, start_campaign, state_of)

    assert due.recovered == [lost] and due.lost_runs == {lost: lost_run}
    assert campaign_row(db, starting)["status"] == "running"
    runs = PrefectRuns()
    assert runs.close(lost_run, "Its runner was lost.") and flow_run_state(lost_run).type == "CRASHED"
    assert not runs.close(lost_run, "again") and not runs.close(str(uuid.uuid4()), "unknown")


# -- an operator acting while the scheduler starts a scheduled campaign ------------------------------------------
# `due_campaigns` takes its `start` as a parameter: these wrap the real start to act at a chosen moment of
# the scheduler's pass, so each interleaving happens every time (no sleeps).


def _due_now(db, org, *campaigns_: uuid.UUID) -> None:
    """Scheduled, in this order (one second apart, the first earliest), and all due."""
    from datetime import UTC, datetime, timedelta

    from campaigns.control import lifecycle

    now = datetime.now(UTC)
    with db.begin() as conn:
        for i, cid in enumerate(campaigns_):
            lifecycle.schedule(conn, org, cid, now - timedelta(seconds=len(campaigns_) - i))


def _operator(db, org, action: str, cid: uuid.UUID) -> None:
    from campaigns.control import lifecycle

    if action == "start":
        start_campaign(db, org, cid)
        return
    with db.begin() as conn:
        {"pause": lifecycle.pause, "cancel": lifecycle.cancel}[action](conn, org, cid)


def _acting(db, org, target: uuid.UUID, before: str):
    """The scheduler's start, with the operator's `before` action between its SELECT and the start of `target`."""

    def start(db_, org_, cid):
        if cid == target:
            _operator(db, org, before, cid)
        return start_campaign(db_, org_, cid)

    return start


def _switch(db, number: uuid.UUID, active: bool) -> None:
    with db.begin() as conn:
        conn.execute(sa.text("update whatsapp_numbers set active = :a where id = :n"), {"a": active, "n": number})


def test_an_operator_starting_or_pausing_a_campaign_as_the_scheduler_starts_it_wins(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(2, start=9600)])
    for action, status in (("start", "running"), ("pause", "paused"), ("cancel", "cancelled")):
        cid, other = create_campaign(db, org, number), create_campaign(db, org, number)
        _due_now(db, org, cid, other)

        due = due_campaigns(db, _acting(db, org, cid, before=action))

        assert cid not in due.started and cid not in due.refused, action
        row = campaign_row(db, cid)
        assert row["status"] == status and row["paused_reason"] in (None, "operator"), (action, row["paused_reason"])
        assert other in due.started, action  # the rest of the pass goes on


def test_a_refused_start_never_overrides_what_an_operator_did_meanwhile_nor_stops_the_pass(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(2, start=9700)])
    broken_number = add_sandbox_number(db, org, sandbox)
    for action, status in (("pause", "paused"), ("cancel", "cancelled"), ("start", "running")):
        broken, other = create_campaign(db, org, broken_number), create_campaign(db, org, number)
        _due_now(db, org, broken, other)
        _switch(db, broken_number, False)  # its preflight fails at the scheduler's start

        def fix_then(act: str, cid: uuid.UUID = broken) -> None:
            if act == "start":  # the operator switched the number back on and started it by hand
                _switch(db, broken_number, True)
            _operator(db, org, act, cid)

        def start(db_, org_, cid, act=action, target=broken):
            try:
                return start_campaign(db_, org_, cid)
            finally:
                if cid == target:
                    fix_then(act)

        due = due_campaigns(db, start)  # today: an operator's pause or cancel here raised Conflict (pass lost)

        row = campaign_row(db, broken)
        assert row["status"] == status, (action, row["status"])
        assert row["paused_reason"] in (None, "operator"), (action, row["paused_reason"])  # not preflight_failed
        assert broken not in due.refused, action
        assert other in due.started, action
