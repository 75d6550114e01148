"""campaign-control: the operator's form in the Prefect UI that acts on one campaign: pause, resume, cancel,
retry-failed (optionally only some error codes), schedule (at a time, in a time zone) or start.

Requires: DATABASE_URL, REDIS_URL (start's checklist), the send-campaign/default deployment (resume,
retry-failed, start, schedule). Deployed as `campaign-control/default`. The logic is
campaigns.control.operator.control_campaign, over the same domain functions as the HTTP API and the CLI; a refused
transition ends the run Failed with the domain's message ("Cannot resume a completed campaign").
"""

# No `from __future__ import annotations` here: `serve` pickles this flow's function by value into its run
# (deployments/warm_start.py), and the run builds its parameter form's model from the annotations, which
# must then be the types themselves, not names to look up.
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import State
from pydantic import Field
from pydantic.config import JsonDict

from blocks.whatsapp import fresh_credentials
from campaigns.control import operator
from campaigns.control.forms import DEFAULT_TIME_ZONE, ControlAction
from campaigns.errors import CampaignError
from campaigns.store.db import get_engine
from deployments.launch import PrefectRuns
from flows import console

# The UI offers the two branches of `at` by these titles (by default: "date-time" and "None").
START_AT: JsonDict = {
    "anyOf": [
        {"type": "string", "format": "date-time", "title": "Date and time"},
        {"type": "null", "title": "Not scheduled"},
    ]
}


@flow(name="campaign-control", flow_run_name="{action}: {campaign}")
def campaign_control(
    campaign: str,
    action: ControlAction,
    organization: str = "",
    error_codes: tuple[int, ...] = (),
    at: datetime | None = Field(None, json_schema_extra=START_AT),
    time_zone: str = DEFAULT_TIME_ZONE,
) -> dict[str, Any] | State:
    """Pause, resume, cancel, retry the failures of, schedule or start a campaign.

    Args:
        campaign: The campaign's name or id; a name several campaigns share is refused, listing their ids.
        action: pause / resume / cancel (final) / retry-failed (failed recipients are sent again, never
            opted-out ones) / schedule (start by itself at the time below) / start (checklist, then send now).
        organization: The organization's name (or id); needed only when the campaign is given by name.
        error_codes: For retry-failed: only failures with these error codes (e.g. 131026); none: every failure.
        at: For schedule: the date and time to start (it shows under Upcoming).
        time_zone: For a start time written without a zone; an IANA name (America/Sao_Paulo, UTC).
    """
    log = get_run_logger()
    try:
        return operator.control_campaign(
            get_engine(),
            organization,
            campaign,
            action,
            error_codes,
            at,
            time_zone,
            runs=PrefectRuns(),
            credentials=fresh_credentials,
            logger=log,
        ).as_dict()
    except CampaignError as exc:
        return console.refused(exc, log)
