"""Handing a campaign to Prefect: a run of the send-campaign deployment, as the API and the scheduler do."""

from __future__ import annotations

import uuid

SEND_DEPLOYMENT = "send-campaign/default"


def launch_send_run(campaign_id: uuid.UUID, deployment: str = SEND_DEPLOYMENT) -> str:
    """Create a run of the deployment for the campaign and return at once (whoever serves it runs it)."""
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters={"campaign_id": str(campaign_id)}, timeout=0, as_subflow=False)
    return str(run.id)
