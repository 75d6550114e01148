"""Handing a campaign to Prefect: a run of the send-campaign deployment, as the API and the scheduler do.

`PrefectRuns` is what the control asks for (campaigns.control.runs.Runs); the faces and flows pass it in.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, cast

from campaigns.control.runs import RunState

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

SEND_DEPLOYMENT = "send-campaign/default"


@dataclass(frozen=True)
class PrefectRuns:
    """campaigns.control.runs.Runs in Prefect: runs of the send-campaign deployment `deployment`."""

    deployment: str = SEND_DEPLOYMENT

    def launch(self, campaign_id: uuid.UUID) -> str:
        return launch_send_run(campaign_id, self.deployment)

    def schedule(self, campaign_id: uuid.UUID, at: datetime) -> str:
        return schedule_send_run(campaign_id, at, self.deployment)

    def drop_scheduled(self, flow_run_id: str | None, why: str) -> bool:
        return drop_scheduled_run(flow_run_id, why)

    def wake_suspended(self, campaign_id: uuid.UUID) -> str | None:
        return wake_suspended_run(campaign_id)

    def state(self, flow_run_id: str | None) -> RunState | None:
        return flow_run_state(flow_run_id)

    def close(self, flow_run_id: str | None, why: str) -> bool:
        return close_lost_run(flow_run_id, why)


def launch_send_run(campaign_id: uuid.UUID, deployment: str = SEND_DEPLOYMENT) -> str:
    """Hand the campaign to Prefect and return at once (whoever serves the deployment runs it): its run
    suspended by a pause is woken, so one run tells the campaign's story from start to end; otherwise a new
    run of the deployment is created."""
    woken = wake_suspended_run(campaign_id)
    if woken:
        return woken
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters={"campaign_id": str(campaign_id)}, timeout=0, as_subflow=False)
    return str(cast("FlowRun", run).id)  # sync here: Prefect's sync-or-async call types as either


def wake_suspended_run(campaign_id: uuid.UUID) -> str | None:
    """Resume the campaign's last run if it is suspended (it then resumes, or ends with the campaign's state,
    say Cancelled after a cancel); its id, or None when there is no such run."""
    import sqlalchemy as sa

    from campaigns.store.db import get_engine

    with get_engine().connect() as conn:
        run_id = conn.execute(sa.text("select flow_run_id from campaigns where id = :c"), {"c": campaign_id}).scalar()
    state = flow_run_state(run_id)
    if state is None or state.type != "PAUSED":
        return None
    from prefect.flow_runs import resume_flow_run

    try:
        resume_flow_run(uuid.UUID(run_id))
    except Exception:  # timed out or resumed by someone else meanwhile: a new run will do
        return None
    return run_id


def flow_run_state(flow_run_id: str | None) -> RunState | None:
    """The state of a flow run, or None when Prefect has none for that id."""
    if not flow_run_id:
        return None
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(flow_run_id))
    except Exception:  # not a Prefect id (a test launcher's), or unreadable: no verdict
        return None
    if run.state is None:
        return None
    return RunState(run.state.type.value, run.state.message or "", run.state.timestamp)


def close_lost_run(flow_run_id: str | None, why: str) -> bool:
    """Mark Crashed a run whose process is gone (a worker killed, a machine lost) but that still reads Running
    or Pending, so the UI stops showing it as live; an ended run, or an id Prefect does not know, is left
    alone. True when it was closed."""
    state = flow_run_state(flow_run_id)
    if state is None or state.type not in ("RUNNING", "PENDING"):
        return False
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        status = client.set_flow_run_state(uuid.UUID(str(flow_run_id)), Crashed(message=why)).status
    return bool(status == SetStateStatus.ACCEPT)


def schedule_send_run(campaign_id: uuid.UUID, at: datetime, deployment: str = SEND_DEPLOYMENT) -> str:
    """Create a run of the deployment for the campaign in a Scheduled state at `at`: Prefect shows it under
    Upcoming and whoever serves the deployment starts it then (the server holds it back until its time)."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        deployment,
        parameters={"campaign_id": str(campaign_id)},
        scheduled_time=at,
        timeout=0,
        as_subflow=False,
        flow_run_name=f"send-campaign-{campaign_id}",
    )
    return str(cast("FlowRun", run).id)


def drop_scheduled_run(flow_run_id: str | None, why: str) -> bool:
    """Cancel a flow run that is still waiting for its time (SCHEDULED, Late included), saying why; a run
    that has started, or an id Prefect does not know, is left alone. True when one was cancelled."""
    if not flow_run_id:
        return False
    try:
        run_id = uuid.UUID(flow_run_id)
    except ValueError:  # a test launcher's id
        return False
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Cancelled

    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:
            return False
        if run.state is None or run.state.type != StateType.SCHEDULED:
            return False
        return client.set_flow_run_state(run_id, Cancelled(message=why)).status == SetStateStatus.ACCEPT
