"""create-campaign: the operator's form in the Prefect UI that creates a campaign (the seed's body), then
leaves it a draft, starts it (pre-launch checklist, then a send-campaign run) or schedules it (a Scheduled
send-campaign run, under Upcoming).

Requires: DATABASE_URL, REDIS_URL (the checklist of a start), the send-campaign/default deployment (start,
schedule). Deployed as `create-campaign/default`. The logic is campaigns.control.operator.create_campaign; the
form's sections are the pydantic models of campaigns.control.forms. A wrong field ends the run Failed with the
field named, as the HTTP API's 422 names it.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import State

from blocks.whatsapp import fresh_credentials
from campaigns.control import operator
from campaigns.control.forms import AfterCreate, AudienceForm, CampaignDetails, MessageForm, PaceForm
from campaigns.errors import CampaignError
from campaigns.store.db import get_engine
from deployments.launch import PrefectRuns
from flows import console


def _run_name() -> str:
    from prefect.runtime import flow_run

    campaign = flow_run.parameters.get("campaign")
    name = campaign.get("name") if isinstance(campaign, dict) else getattr(campaign, "name", None)
    return f"create-campaign: {name}" if name else "create-campaign"


# validate_parameters=False: the values go to CampaignCreate as given, so its errors name the seed's fields.
@flow(name="create-campaign", validate_parameters=False, flow_run_name=_run_name)
def create_campaign(
    organization: str,
    campaign: CampaignDetails,
    message: MessageForm = MessageForm(),
    audience: AudienceForm = AudienceForm(),
    pace: PaceForm = PaceForm(),
    then: AfterCreate = AfterCreate(),
) -> dict[str, Any] | State:
    """Create a WhatsApp campaign, then keep it as a draft, start it now or schedule it.

    Args:
        organization: The organization's name (or id).
    """
    log = get_run_logger()
    try:
        return operator.create_campaign(
            get_engine(),
            organization,
            campaign,
            message,
            audience,
            pace,
            then,
            runs=PrefectRuns(),
            credentials=fresh_credentials,
            logger=log,
        ).as_dict()
    except CampaignError as exc:
        return console.refused(exc, log)
