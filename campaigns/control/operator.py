"""What the operator deployments do (create-campaign, campaign-control), as plain functions.

Everything goes through the same domain functions as the API and the CLI (lifecycle, services, and Prefect's
runs and credentials, passed in); each step is logged in plain words, and a refusal is a CampaignError with the
domain's message. The forms and what their values become are in `forms`; the names typed in them are found by
`lookup`; this module holds the actions and the steps they share.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, get_args

import sqlalchemy as sa

from campaigns.control import lifecycle, services
from campaigns.control.forms import (
    DEFAULT_TIME_ZONE,
    AfterCreate,
    AudienceForm,
    CampaignDetails,
    ControlAction,
    MessageForm,
    PaceForm,
    campaign_body,
    form_values,
    start_time,
)
from campaigns.control.lookup import find_campaign, find_org, org_of_campaign
from campaigns.control.runs import LoadCredentials, Runs
from campaigns.errors import CampaignError, Conflict, Invalid

log = logging.getLogger(__name__)


# -- results ---------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What an operator flow did: the campaign, where it is now, and the lines it logged."""

    campaign_id: uuid.UUID
    name: str
    status: str
    done: list[str] = field(default_factory=list)
    flow_run_id: str | None = None
    total_recipients: int | None = None

    def say(self, logger: Any, line: str) -> None:
        self.done.append(line)
        logger.info("%s", line)

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign_id": str(self.campaign_id),
            "name": self.name,
            "status": self.status,
            "flow_run_id": self.flow_run_id,
            "total_recipients": self.total_recipients,
            "done": self.done,
        }


def describe(exc: CampaignError) -> str:
    """A refusal on one line: the message, then each detail (every failed check, every wrong field)."""
    return "; ".join([exc.message, *(d for d in exc.details if d not in exc.message)])


# -- create-campaign ---------------------------------------------------------------------------------------


def create_campaign(
    db: sa.Engine,
    organization: str,
    campaign: CampaignDetails | dict[str, Any],
    message: MessageForm | dict[str, Any] | None = None,
    audience: AudienceForm | dict[str, Any] | None = None,
    pace: PaceForm | dict[str, Any] | None = None,
    then: AfterCreate | dict[str, Any] | None = None,
    *,
    runs: Runs,
    credentials: LoadCredentials,
    logger: Any = log,
) -> Outcome:
    """Create the campaign, then leave it a draft, start it (checklist, then a send-campaign run) or schedule
    it (a Scheduled send-campaign run, under Upcoming). Raises CampaignError with every wrong field."""
    after = form_values(then, AfterCreate)
    if unknown := sorted(after.keys() - AfterCreate.model_fields.keys()):
        raise Invalid("; ".join(f"then.{k}: not a field of the form" for k in unknown))
    action = after["action"]
    if action not in ("draft", "start", "schedule"):
        raise Invalid(f"then.action: one of draft, start, schedule (got {action!r})")
    at, said_at = start_time(after["at"], after["time_zone"]) if action == "schedule" else (None, "")
    with db.begin() as conn:
        org = find_org(conn, organization)
        body = campaign_body(
            conn,
            org,
            form_values(campaign, CampaignDetails),
            form_values(message, MessageForm),
            form_values(audience, AudienceForm),
            form_values(pace, PaceForm),
        )
        campaign_id = lifecycle.create(conn, org, body)
    out = Outcome(campaign_id, body.name, "draft")
    out.say(
        logger,
        f"created campaign {campaign_id} {body.name!r} ({body.message_type}, audience {body.audience_type}) as a draft",
    )
    if action == "start":
        _start(db, org, out, runs, credentials, logger)
    elif action == "schedule":
        _schedule(db, org, out, at, said_at, runs, logger)
    return out


# -- campaign-control --------------------------------------------------------------------------------------


def control_campaign(
    db: sa.Engine,
    organization: str | None,
    campaign: str,
    action: str,
    error_codes: Sequence[int] | None = None,
    at: datetime | str | None = None,
    time_zone: str = DEFAULT_TIME_ZONE,
    *,
    runs: Runs,
    credentials: LoadCredentials,
    logger: Any = log,
) -> Outcome:
    """Pause, resume, cancel, retry the failures of, schedule or start one campaign of the organization, as
    the API and the CLI do; a refused transition raises the domain's CampaignError."""
    if action not in get_args(ControlAction):
        raise Invalid(f"action: one of {', '.join(get_args(ControlAction))} (got {action!r})")
    when = start_time(at, time_zone) if action == "schedule" else None
    with db.connect() as conn:
        org = find_org(conn, organization) if organization and organization.strip() else org_of_campaign(conn, campaign)
        row = find_campaign(conn, org, campaign)
    cid = row["id"]
    out = Outcome(cid, row["name"], row["status"])
    logger.info("campaign %s %r is %s: %s", cid, row["name"], row["status"], action)
    if action == "start":
        _start(db, org, out, runs, credentials, logger)
    elif action == "schedule":
        assert when is not None
        _schedule(db, org, out, *when, runs, logger)
    elif action == "retry-failed":
        codes = [int(c) for c in error_codes or []]
        with db.begin() as conn:
            t, requeued = lifecycle.retry_failed(conn, org, cid, codes or None)
        out.status = t.status
        only = f" with code {', '.join(map(str, codes))}" if codes else ""
        out.say(logger, f"retry-failed: {t.previous} -> {t.status}; {requeued} failed recipients{only} back to pending")
        _hand_to_prefect(db, org, out, runs, logger)
    else:
        verb = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
        fn = {"pause": lifecycle.pause, "resume": lifecycle.resume, "cancel": lifecycle.cancel}[action]
        with db.begin() as conn:
            t = fn(conn, org, cid)
        out.status = t.status
        out.say(logger, f"{verb}: {t.previous} -> {t.status}")
        if t.status == "running":
            _hand_to_prefect(db, org, out, runs, logger)
        else:
            _follow(db, org, out, t, runs, logger)
    return out


# -- steps -------------------------------------------------------------------------------------------------


def _start(db: sa.Engine, org: uuid.UUID, out: Outcome, runs: Runs, credentials: LoadCredentials, logger: Any) -> None:
    try:
        started = services.start_campaign(db, org, out.campaign_id, credentials=credentials, runs=runs)
    except CampaignError as exc:  # the campaign stays as it was (a draft, when just created)
        raise type(exc)(f"campaign {out.campaign_id} not started: {exc.message}", exc.details) from None
    out.status, out.total_recipients = started["status"], started["total_recipients"]
    for warning in started["warnings"]:
        logger.warning("preflight: %s", warning)
    out.say(
        logger,
        f"started campaign {out.campaign_id} {out.name!r}: audience of {out.total_recipients} contacts "
        f"(opt-outs, duplicates and invalid numbers are skipped when its run builds it)",
    )
    _hand_to_prefect(db, org, out, runs, logger)


def _hand_to_prefect(db: sa.Engine, org: uuid.UUID, out: Outcome, runs: Runs, logger: Any) -> None:
    """A send-campaign run for the running campaign, recorded on it (as the API does); if Prefect cannot
    take it, the campaign is paused (launch_failed) rather than left running with nobody sending."""
    try:
        run_id = runs.launch(out.campaign_id)
    except Exception as exc:
        cause = f"{type(exc).__name__}: {exc}"[:300]
        with db.begin() as conn, contextlib.suppress(Conflict):  # an operator may have acted meanwhile
            lifecycle.pause(conn, org, out.campaign_id, "launch_failed", f"no send-campaign run: {cause}")
        raise CampaignError(
            f"campaign {out.campaign_id} could not be handed to Prefect and was paused "
            f"(launch_failed); resume it once send-campaign/default is served",
            [cause],
        ) from None
    with db.begin() as conn:
        services.record_flow_run(conn, org, out.campaign_id, run_id)
    out.flow_run_id = run_id
    out.say(logger, f"send-campaign flow run {run_id} will send it")


def _schedule(
    db: sa.Engine, org: uuid.UUID, out: Outcome, at: datetime | None, said_at: str, runs: Runs, logger: Any
) -> None:
    with db.begin() as conn:
        t = lifecycle.schedule(conn, org, out.campaign_id, at)
    out.status = t.status
    out.say(logger, f"scheduled: {t.previous} -> {t.status}, to start at {said_at}")
    _follow(db, org, out, t, runs, logger)


def _follow(db: sa.Engine, org: uuid.UUID, out: Outcome, t: lifecycle.Transition, runs: Runs, logger: Any) -> None:
    """Prefect's Upcoming follows the transition (services.follow_transition); say what it shows now."""
    run_id = services.follow_transition(db, org, out.campaign_id, t, runs, logger)
    if run_id:
        out.flow_run_id = run_id
        out.say(logger, f"send-campaign flow run {run_id} is scheduled for then (Upcoming in Prefect)")
    elif t.status == "scheduled":
        out.say(logger, "no Prefect run for it: campaign-scheduler starts it at its time")
