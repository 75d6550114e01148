"""Handing a campaign to Prefect: a run of the send-campaign deployment, refused before anything changes
when nothing would pick it up."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from campaigns.api.errors import Unavailable
from deployments.launch import SEND_DEPLOYMENT, PrefectRuns

Launch = Callable[[uuid.UUID], str]  # starts a send-campaign run for the campaign; returns the run's id
Ready = Callable[[], None]  # raises Unavailable when a launch could not be run now


class PrefectLauncher:
    """Runs of the send-campaign deployment. A campaign marked running with no process to send it would
    sit still while the API said "started", so `ready` refuses before anything changes."""

    def __init__(self, deployment: str = SEND_DEPLOYMENT) -> None:
        self.deployment = deployment
        # Imported now, not by the first start: Prefect's import takes ~1.6 s, which a `POST /start` paid
        # (4 s in the walkthrough, against a target of 1 s).
        import prefect.deployments  # noqa: F401
        import prefect.flow_runs  # noqa: F401
        from prefect.client.orchestration import get_client  # noqa: F401

    def ready(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.objects import DeploymentStatus
        from prefect.exceptions import ObjectNotFound

        from campaigns.settings import get_settings

        serve = (
            "`campaigns serve` (or a worker of the `campaigns` work pool, queue `campaigns`) must be running "
            "to send campaigns"
        )
        try:
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name(self.deployment)
        except ObjectNotFound:
            raise Unavailable(f"No {self.deployment} deployment in Prefect: {serve}") from None
        except Exception as exc:  # Prefect down or misconfigured: the same answer, with the cause
            raise Unavailable(f"Prefect is not reachable: {serve}", [f"{type(exc).__name__}: {exc}"[:300]]) from None
        if deployment.status == DeploymentStatus.NOT_READY:
            raise Unavailable(f"Nothing is serving {self.deployment} (Prefect marks it not ready): {serve}")
        # Prefect marks a deployment not ready only a minute or more after its last poll; `serve` polls
        # every 0.5 s (deployments/serve.py POLL_SECONDS), so a longer silence means nobody would pick the run up.
        age = (datetime.now(UTC) - deployment.last_polled).total_seconds() if deployment.last_polled else None
        if age is not None and age > get_settings().serve_poll_stale_seconds:
            raise Unavailable(f"Nothing has polled {self.deployment} for {age:.0f} s: {serve}")

    def __call__(self, campaign_id: uuid.UUID) -> str:
        return PrefectRuns(self.deployment).launch(campaign_id)
