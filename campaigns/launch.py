"""Handing a campaign to Prefect: a run of the send-campaign deployment, as the API and the scheduler do."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

SEND_DEPLOYMENT = "send-campaign/default"


def launch_send_run(campaign_id: uuid.UUID, deployment: str = SEND_DEPLOYMENT) -> str:
    """Create a run of the deployment for the campaign and return at once (whoever serves it runs it)."""
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters={"campaign_id": str(campaign_id)}, timeout=0, as_subflow=False)
    return str(run.id)


@dataclass(frozen=True)
class RunState:
    type: str  # CANCELLED, FAILED, CRASHED, RUNNING, SCHEDULED, PENDING…
    message: str = ""


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
    return RunState(run.state.type.value, run.state.message or "") if run.state else None
