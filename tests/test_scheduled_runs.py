"""A scheduled campaign is a Scheduled send-campaign run in Prefect (under Upcoming): the API, the command
line and campaign-control create it, a reschedule, pause or cancel takes it away, a run that comes before
the campaign's time does nothing, and campaign-scheduler starts the campaign only when its run does not
come. Real Postgres, the real Prefect server (send-campaign/default served by nobody), the real flow."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from prefect.settings import PREFECT_API_URL, temporary_settings

from campaigns import api_tokens
from campaigns.api import create_app
from campaigns.control import lifecycle, services
from campaigns.control.scheduler import due_campaigns
from campaigns.infra.asgi_thread import ThreadedServer
from deployments.launch import PrefectRuns, flow_run_state
from flows.send_campaign import send_campaign
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    api_client,
    campaign_row,
    cli,
    phones,
    prefect_run,
    start_campaign,
)
from tests.helpers import create_campaign as new_campaign


@pytest.mark.flow
def test_a_run_that_comes_before_the_campaigns_time_does_nothing_and_one_on_time_starts_it(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(3, start=7500)])
    cid = new_campaign(db, org, number)
    with db.begin() as conn:
        lifecycle.schedule(conn, org, cid, datetime(2031, 12, 1, 12, tzinfo=UTC))
        conn.execute(sa.text("update campaigns set flow_run_id = 'its-scheduled-run' where id = :c"), {"c": cid})

    early = send_campaign(cid)  # e.g. the run of an older schedule, or one started by hand from the UI

    assert early["status"] == "scheduled for 2031-12-01T12:00:00Z" and early["messages_sent"] == 0
    row = campaign_row(db, cid)
    assert (row["status"], row["started_at"], row["audience_frozen_at"]) == ("scheduled", None, None)
    assert row["flow_run_id"] == "its-scheduled-run"  # still the run under Upcoming

    with db.begin() as conn:  # its time has come
        conn.execute(
            sa.text("update campaigns set scheduled_at = now() - interval '1 second' where id = :c"), {"c": cid}
        )
    assert send_campaign(cid)["status"] == "completed"
    assert len(sandbox.messages()) == 3


def test_campaign_scheduler_leaves_a_due_campaign_to_its_own_run_then_takes_over(db, org, sandbox, send_deployment):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(2, start=7600)])
    cid = new_campaign(db, org, number)
    with db.begin() as conn:
        t = lifecycle.schedule(conn, org, cid, datetime.now(UTC) - timedelta(seconds=1))
    run_id = services.follow_transition(db, org, cid, t, PrefectRuns())
    assert prefect_run(run_id).state.type.value == "SCHEDULED"

    due = due_campaigns(db, start_campaign, flow_run_state)
    assert cid not in due.started and campaign_row(db, cid)["status"] == "scheduled"  # its run starts it

    with db.begin() as conn:  # a minute later its run has still not come (nothing served it)
        conn.execute(
            sa.text(
                "update campaigns set scheduled_at = now() - interval '2 minutes', "
                "updated_at = now() - interval '2 minutes' where id = :c"
            ),
            {"c": cid},
        )
    due = due_campaigns(db, start_campaign, flow_run_state)
    assert cid in due.started and campaign_row(db, cid)["status"] == "running"
    cancelled = prefect_run(run_id).state
    assert cancelled.type.value == "CANCELLED" and "its scheduled run is not needed" in cancelled.message
    with db.begin() as conn:
        lifecycle.cancel(conn, org, cid)


def test_scheduling_without_prefect_still_schedules_in_the_database_with_a_warning(db, org, sandbox, caplog):
    number = add_sandbox_number(db, org, sandbox)
    cid = new_campaign(db, org, number, name="Offline")
    caplog.set_level(logging.WARNING, logger="campaigns")
    with db.begin() as conn:
        t = lifecycle.schedule(conn, org, cid, datetime(2031, 12, 1, 9, tzinfo=UTC))
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert services.follow_transition(db, org, cid, t, PrefectRuns()) is None
    row = campaign_row(db, cid)
    assert (row["status"], row["scheduled_at"], row["flow_run_id"]) == (
        "scheduled",
        datetime(2031, 12, 1, 9, tzinfo=UTC),
        None,
    )
    assert (
        f"campaign {cid} is scheduled for 2031-12-01T09:00:00Z, but Prefect has no run for it (ConnectError"
        in caplog.text
    )


def test_the_api_and_the_cli_schedule_through_prefect_too(db, org, sandbox, send_deployment):
    number = add_sandbox_number(db, org, sandbox)
    cid = new_campaign(db, org, number)
    server = ThreadedServer(create_app(lambda c: "unused", db=db)).start()
    try:
        with db.begin() as conn:
            token = api_tokens.issue(conn, org, "agent")[1]
        http = api_client(server.url + "/api/v1", token)
        r = http.post(f"/campaigns/{cid}/schedule", json={"scheduled_at": "2031-12-01T09:00:00-03:00"})
        assert r.status_code == 200, r.text
        api_run = r.json()["flow_run_id"]
        assert prefect_run(api_run).state.state_details.scheduled_time == datetime(2031, 12, 1, 12, tzinfo=UTC)
        r = http.patch(f"/campaigns/{cid}", json={"scheduled_at": "2031-12-02T09:00:00-03:00"})  # moved by an edit
        patched_run = campaign_row(db, cid)["flow_run_id"]
        assert r.status_code == 200 and prefect_run(api_run).state.type.value == "CANCELLED"
        assert prefect_run(patched_run).state.state_details.scheduled_time == datetime(2031, 12, 2, 12, tzinfo=UTC)
    finally:
        server.stop()

    done = cli("schedule", str(cid), "--at", "2031-12-03T09:00:00-03:00")
    cli_run = campaign_row(db, cid)["flow_run_id"]
    assert f"send-campaign flow run {cli_run} starts it at 2031-12-03T12:00:00Z (Upcoming in Prefect)" in done.stderr
    assert prefect_run(patched_run).state.type.value == "CANCELLED"
    cli("pause", str(cid))
    assert prefect_run(cli_run).state.type.value == "CANCELLED"
