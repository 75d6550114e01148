"""`campaigns serve` under a full house: housekeeping and the operator's forms have slots of their own, the
scheduler runs one pass at a time, and runs a killed `serve` left behind are closed when it starts again.

Each test starts its own `serve` (`--limit 1`: one campaign fills every campaign slot), so the module runs
with the other `serve` modules, alone (see the Makefile).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment

from tests.browser import _last_polled, _settle_earlier_campaigns, _stop, _tail
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    campaign_row,
    create_campaign,
    phones,
    sent_counts,
    start_campaign,
    wait_for,
)

pytestmark = [pytest.mark.flow, pytest.mark.xdist_group("serve")]


@contextlib.contextmanager
def _serve(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`campaigns serve` in its own process group, ready once both of its runners have polled."""
    started = time.time()
    log = tempfile.NamedTemporaryFile(prefix="campaigns-serve-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "campaigns.cli", "serve", *args],
        env=os.environ.copy(),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()

    def polled(deployment: str) -> bool:
        last = _last_polled(deployment)
        return last is not None and last.timestamp() >= started

    try:
        try:
            wait_for(lambda: polled("send-campaign/default") and polled("campaign-control/default"), timeout=120)
        except AssertionError:
            raise AssertionError(f"serve did not poll within 120 s; its log:\n{_tail(Path(log.name))}") from None
        yield process
    finally:
        try:
            _stop(process)
        except UserWarning as slow:
            raise AssertionError(f"{slow}; its log:\n{_tail(Path(log.name), 80)}") from None
        finally:
            Path(log.name).unlink(missing_ok=True)


def _runs_of(deployment: str, *states: StateType) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        in_states = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(states))))
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=in_states if states else None,
        )


def _run(run_id: uuid.UUID) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _state(run_id: uuid.UUID):
    return _run(run_id).state


def test_an_operators_pause_and_housekeeping_run_while_campaigns_take_every_slot(db, org, sandbox):
    """With every campaign slot taken (`--limit 1`, one campaign sending), the operator's pause through the
    campaign-control form still runs at once, and so does ingestion: they do not queue behind campaigns."""
    _settle_earlier_campaigns()
    number = add_sandbox_number(db, org, sandbox, mps=5)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(400)])
    cid = create_campaign(db, org, number, name=f"Slow {uuid.uuid4().hex[:6]}")
    with _serve("--limit", "1"):
        start_campaign(db, org, cid)
        run_deployment("send-campaign/default", parameters={"campaign_id": str(cid)}, timeout=0, as_subflow=False)
        wait_for(lambda: len(sandbox.messages()) >= 3, timeout=60)  # the campaign holds the only campaign slot

        pause = run_deployment(
            "campaign-control/default",
            parameters={"organization": str(org), "campaign": str(cid), "action": "pause"},
            timeout=0,
            as_subflow=False,
        )
        wait_for(lambda: _state(pause.id).is_final(), timeout=45, interval=0.5)
        assert _state(pause.id).type == StateType.COMPLETED, _state(pause.id)
        assert campaign_row(db, cid)["status"] == "paused"
        # ingestion's first run is due 15 s after start-up; it runs beside the campaign
        wait_for(lambda: _runs_of("ingest-statuses/default", StateType.RUNNING), timeout=60, interval=0.5)


def test_the_scheduler_cancels_a_second_pass_while_one_runs():
    """Two scheduler passes at once could launch the same campaign twice: a run created while one runs is
    Cancelled by Prefect (the deployment's concurrency limit of one, CANCEL_NEW), not queued."""
    with _serve():
        wait_for(lambda: _runs_of("campaign-scheduler/default", StateType.RUNNING), timeout=90, interval=0.5)
        second = run_deployment("campaign-scheduler/default", timeout=0, as_subflow=False)
        wait_for(lambda: _state(second.id).is_final(), timeout=30, interval=0.5)
        state = _state(second.id)
        assert state.type == StateType.CANCELLED and "concurrency limit" in (state.message or ""), state


def test_runs_a_killed_serve_left_running_are_closed_when_it_starts_again():
    """kill -9 of `serve` leaves its runs Running in Prefect with nobody running them; the next `serve`
    marks them Crashed, saying why, before it polls."""
    with _serve() as first:
        wait_for(lambda: _runs_of("ingest-statuses/default", StateType.RUNNING), timeout=90, interval=0.5)
        left = _runs_of("ingest-statuses/default", StateType.RUNNING)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert all(_state(run.id).type == StateType.RUNNING for run in left)  # nobody closes them

    with _serve():
        for run in left:
            wait_for(lambda r=run: _state(r.id).type == StateType.CRASHED, timeout=30, interval=0.5)
            assert "serve running it was gone" in _state(run.id).message


def test_ctrl_c_on_serve_leaves_a_sending_campaign_running_and_the_next_serve_finishes_it(db, org, sandbox):
    """Stopping `serve` is not an operator's Cancel: Prefect gives its runs the same cancel intent, but the
    campaign must stay running (not paused, reason `operator`) and be taken up by the next `serve`. The
    stopping `serve` ends its scheduler before its campaign runs, so no pass of it takes the interrupted run
    for a lost one and launches the campaign again (with 200 campaigns: 200 runs created while it stops)."""
    _settle_earlier_campaigns()
    number = add_sandbox_number(db, org, sandbox, mps=25)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(300)])
    cid = create_campaign(db, org, number, name=f"Interrupted {uuid.uuid4().hex[:6]}")
    with _serve() as first:
        wait_for(lambda: _runs_of("campaign-scheduler/default", StateType.RUNNING), timeout=90, interval=0.5)
        (scheduler,) = _runs_of("campaign-scheduler/default", StateType.RUNNING)
        start_campaign(db, org, cid)
        run = run_deployment("send-campaign/default", parameters={"campaign_id": str(cid)}, timeout=0, as_subflow=False)
        wait_for(lambda: len(sandbox.messages()) >= 20, timeout=60)
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C in serve's terminal
        first.wait(timeout=30)
    campaign = campaign_row(db, cid)
    assert (campaign["status"], campaign["paused_reason"]) == ("running", None)
    assert len(sandbox.messages()) < 300
    interrupted, scheduler = _run(run.id), _run(scheduler.id)
    assert interrupted.state.message == "Runner is shutting down." and scheduler.state.is_final()
    assert scheduler.end_time <= interrupted.end_time  # housekeeping first, then the campaigns
    runs = [r for r in _runs_of("send-campaign/default") if r.parameters.get("campaign_id") == str(cid)]
    assert [r.id for r in runs] == [run.id]  # not launched again by the scheduler of the serve that stopped

    with _serve():  # its scheduler's first pass (15 s after start-up) launches the interrupted campaign again
        wait_for(lambda: campaign_row(db, cid)["status"] == "completed", timeout=120, interval=0.5)
    assert len(sent_counts(sandbox)) == 300 and set(sent_counts(sandbox).values()) == {1}
