"""A campaign's run as an operator meets it in the Prefect UI, through `campaigns serve` and Prefect's own API
(what the UI's buttons call): its name, tags, logs, artifacts and state, and the Cancel, Suspend and Resume
buttons."""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import datetime, timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import StateType
from prefect.states import State, Suspended

from campaigns.control import lifecycle
from campaigns.control.services import record_flow_run
from deployments.launch import launch_send_run
from tests.helpers import add_contacts, add_sandbox_number, campaign_row, create_campaign, phones, sent_counts, wait_for

pytest_plugins = ["tests.browser"]  # the `campaigns_serve` fixture
# Every test runs `campaigns serve` (the flows run under it); one worker: one serve for the module.
pytestmark = [pytest.mark.flow, pytest.mark.xdist_group("serve")]  # one worker, one serve (see Makefile)


def _run(run_id: str):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(run_id))


def _state(run_id: str) -> State:
    return _run(run_id).state


def _launch(db, org, cid) -> str:
    run_id = launch_send_run(cid)
    with db.begin() as conn:
        record_flow_run(conn, org, cid, run_id)
    return run_id


def _logs(run_id: str) -> str:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(run_id)])), limit=200
        )
    return "\n".join(entry.message for entry in logs)


def _log_with(run_id: str, *lines: str, timeout: float = 20.0) -> str:
    """The run's log once it has every one of `lines`, or as it is after `timeout`: the log reaches the API
    in batches, after the run's final state may have."""
    with contextlib.suppress(AssertionError):
        wait_for(lambda: all(line in _logs(run_id) for line in lines), timeout=timeout, interval=0.2)
    return _logs(run_id)


def _artifacts(key: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def _first_run_due(deployment: str, after: datetime) -> datetime | None:
    """When the deployment's first run due after `after` is (or was) expected to start; None if it has none."""
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=after)),
        )
    return min((run.expected_start_time for run in runs if run.expected_start_time), default=None)


def test_housekeeping_runs_within_a_minute_of_serve_starting(campaigns_serve):
    """Statuses reach the statistics and scheduled campaigns start right after `campaigns serve` starts, not one
    schedule interval (ten minutes) later."""
    started = campaigns_serve.started_at
    for deployment in ("ingest-statuses/default", "campaign-scheduler/default"):
        wait_for(lambda d=deployment: _first_run_due(d, started) is not None, timeout=60, interval=0.5)
        assert _first_run_due(deployment, started) <= started + timedelta(seconds=60), deployment


def _sending_campaign(db, org, sandbox, n: int = 300, mps: int = 25) -> uuid.UUID:
    number = add_sandbox_number(db, org, sandbox, mps=mps)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(n)])
    cid = create_campaign(db, org, number, name=f"Natal {uuid.uuid4().hex[:6]}")
    from tests.helpers import start_campaign

    start_campaign(db, org, cid)
    return cid


def test_a_paused_campaign_suspends_its_run_and_resuming_it_finishes_in_the_same_run(db, org, sandbox, campaigns_serve):
    cid = _sending_campaign(db, org, sandbox)
    run_id = _launch(db, org, cid)
    wait_for(lambda: len(sandbox.messages()) >= 20, timeout=60)

    with db.begin() as conn:  # the API's pause
        lifecycle.pause(conn, org, cid)
    wait_for(lambda: _state(run_id).type == StateType.PAUSED, timeout=30)
    state = _state(run_id)
    assert state.name == "Suspended" and "paused (operator)" in state.message and "Resume" in state.message
    held = len(sandbox.messages())
    time.sleep(1.5)
    assert len(sandbox.messages()) == held  # a suspended run sends nothing (and holds no process)

    with db.begin() as conn:  # the API's resume: the same run wakes and finishes
        lifecycle.resume(conn, org, cid)
    assert _launch(db, org, cid) == run_id
    wait_for(lambda: _state(run_id).is_final(), timeout=90)
    state = _state(run_id)
    assert state.type == StateType.COMPLETED and state.message.startswith("Campaign completed: 300 sent")
    assert campaign_row(db, cid)["status"] == "completed"
    assert len(sent_counts(sandbox)) == 300 and set(sent_counts(sandbox).values()) == {1}

    run = _run(run_id)
    name = campaign_row(db, cid)["name"]
    assert run.name.startswith(f"{name} · org-") and any(t.startswith("org:org-") for t in run.tags)
    lines = (
        "audience built: 300 to send of 300 contacts",
        "msg/s the limits allow",
        "paused (operator)",
        "campaign completed: 300 sent",
    )
    logs = _log_with(run_id, *lines)
    for line in lines:
        assert line in logs, f"{line!r} not in the run's log:\n{logs}"
    summary = _artifacts(f"campaign-{cid}-summary")
    assert len(summary) == 1 and summary[0].flow_run_id == uuid.UUID(run_id)  # one, updated in place
    assert f"# {name}" in summary[0].data and "**Status:** completed" in summary[0].data
    progress = _artifacts(f"campaign-{cid}-progress")  # the resumed run (a new process) kept its one card
    assert [(card.flow_run_id, card.data) for card in progress] == [(uuid.UUID(run_id), 100.0)]


def test_cancel_in_the_ui_stops_sending_within_two_seconds_and_pauses_the_campaign(db, org, sandbox, campaigns_serve):
    cid = _sending_campaign(db, org, sandbox)
    run_id = _launch(db, org, cid)
    wait_for(lambda: len(sandbox.messages()) >= 20, timeout=60)

    with get_client(sync_client=True) as client:  # what the UI's Cancel button does
        client.set_flow_run_state(uuid.UUID(run_id), State(type=StateType.CANCELLING, name="Cancelling"))
    time.sleep(2.0)
    stopped_at = len(sandbox.messages())
    time.sleep(1.5)
    assert len(sandbox.messages()) == stopped_at < 300
    campaign = campaign_row(db, cid)
    assert (campaign["status"], campaign["paused_reason"]) == ("paused", "operator")
    wait_for(lambda: _state(run_id).is_final(), timeout=60)
    assert _state(run_id).type == StateType.CANCELLED
    pressed = "Cancel was pressed on its run in the Prefect UI: the campaign is paused, not cancelled"
    assert pressed in _log_with(run_id, pressed)


def test_suspend_in_the_ui_pauses_the_campaign_and_resume_there_finishes_it(db, org, sandbox, campaigns_serve):
    from prefect.flow_runs import resume_flow_run

    cid = _sending_campaign(db, org, sandbox, n=200)
    run_id = _launch(db, org, cid)
    wait_for(lambda: len(sandbox.messages()) >= 20, timeout=60)

    with get_client(sync_client=True) as client:  # the UI's Suspend button
        client.set_flow_run_state(uuid.UUID(run_id), Suspended(), force=True)
    wait_for(lambda: campaign_row(db, cid)["status"] == "paused", timeout=10)
    assert campaign_row(db, cid)["paused_reason"] == "operator"
    time.sleep(2.0)
    held = len(sandbox.messages())
    time.sleep(1.5)
    assert len(sandbox.messages()) == held < 200

    resume_flow_run(uuid.UUID(run_id))  # the UI's Resume button
    wait_for(lambda: _state(run_id).is_final(), timeout=90)
    assert _state(run_id).type == StateType.COMPLETED
    assert campaign_row(db, cid)["status"] == "completed"
    assert "Resume pressed on this run" in _log_with(run_id, "Resume pressed on this run")
    assert len(sent_counts(sandbox)) == 200 and set(sent_counts(sandbox).values()) == {1}


def test_ctrl_c_stops_serve_within_seconds_and_leaves_no_crashed_run(services):
    """Ctrl-C in the terminal of `campaigns serve` (SIGINT to its process group): it stops within seconds,
    and the ingestion it was running ends cleanly, not Crashed or Failed."""
    import os
    import signal
    import subprocess
    import sys

    from prefect.deployments import run_deployment

    from tests.browser import _last_polled

    started = time.time()
    serve = subprocess.Popen(
        [sys.executable, "-m", "campaigns.cli", "serve"],
        env=os.environ.copy(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def polled_since_start() -> bool:
            polled = _last_polled("ingest-statuses/default")
            return polled is not None and polled.timestamp() >= started

        wait_for(polled_since_start, timeout=90, interval=0.5)
        run = run_deployment(
            "ingest-statuses/default",
            parameters={"run_for_seconds": 600, "every_seconds": 1.0},
            timeout=0,
            as_subflow=False,
        )
        wait_for(lambda: _state(str(run.id)).type == StateType.RUNNING, timeout=150, interval=0.2)  # 3 runs start

        pressed = time.monotonic()
        os.killpg(serve.pid, signal.SIGINT)
        serve.wait(timeout=30)
        assert time.monotonic() - pressed < 15
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
    wait_for(lambda: _state(str(run.id)).is_final(), timeout=30, interval=0.5)
    assert _state(str(run.id)).type not in (StateType.CRASHED, StateType.FAILED), _state(str(run.id))
