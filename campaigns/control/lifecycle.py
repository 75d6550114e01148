"""Campaign lifecycle: draft → scheduled → running ⇄ paused → completed | cancelled | failed.

Every function takes the organization and scopes its queries by it: a campaign of another tenant is
"Campaign not found", exactly as for a missing one. Transitions are single guarded UPDATEs, so two
operators acting at once cannot break the state machine. Who sends (organizations, numbers, portfolios)
is in tenancy.py. The refusals (campaigns/errors.py) carry no status code: each face chooses its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from campaigns.control.models import CampaignCreate
from campaigns.control.tenancy import get_number
from campaigns.errors import Conflict, Invalid, NotFound
from campaigns.sending.error_codes import OPTED_OUT
from campaigns.store import recipients
from campaigns.store.schema import INT4_MAX, campaigns, organizations

EDITABLE = ("draft", "scheduled", "paused")
AUDIENCE_FIELDS = frozenset({"audience_type", "audience_filter", "respect_opt_out", "skip_active_conversations"})
STARTABLE = ("draft", "scheduled")
TERMINAL = ("completed", "cancelled", "failed")


def _check_number(conn: sa.Connection, org: uuid.UUID, body: CampaignCreate) -> None:
    """The number must be this organization's, and able to send the message type."""
    try:
        number = get_number(conn, org, body.whatsapp_number_id)
    except NotFound:
        raise Invalid("whatsapp_number_id: no such WhatsApp number in this organization") from None
    if body.message_type == "template" and number["provider"] == "evolution":
        raise Invalid("message_type: Evolution numbers cannot send templates; use a text message")


def create(conn: sa.Connection, org: uuid.UUID, body: CampaignCreate) -> uuid.UUID:
    _check_number(conn, org, body)
    values = body.model_dump(mode="json")
    values["whatsapp_number_id"] = body.whatsapp_number_id
    values["scheduled_at"] = body.scheduled_at
    values["status"] = "draft"
    return conn.execute(
        sa.insert(campaigns).values(organization_id=org, **values).returning(campaigns.c.id)
    ).scalar_one()


def get(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID | str, *, lock: bool = False) -> dict[str, Any]:
    try:
        cid = uuid.UUID(str(campaign_id))
    except ValueError:
        raise NotFound("Campaign not found") from None
    stmt = sa.select(campaigns).where(campaigns.c.id == cid, campaigns.c.organization_id == org)
    if lock:
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).mappings().first()
    if row is None:
        raise NotFound("Campaign not found")
    return dict(row)


def get_any_org(conn: sa.Connection, campaign_id: uuid.UUID) -> dict[str, Any]:
    """For the flow, which receives only a campaign id: the row, with its organization's name as `org_name`
    (the run's name and tag)."""
    row = (
        conn.execute(
            sa.select(campaigns, organizations.c.name.label("org_name"))
            .join(organizations, organizations.c.id == campaigns.c.organization_id)
            .where(campaigns.c.id == campaign_id)
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound("Campaign not found")
    return dict(row)


def _differs(field: str, old: Any, new: Any) -> bool:
    return (old or {}) != (new or {}) if field == "audience_filter" else old != new


def update(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID, changes: dict[str, Any]) -> None:
    current = get(conn, org, campaign_id, lock=True)
    if current["status"] not in EDITABLE:
        raise Conflict(
            "Cannot edit running campaign"
            if current["status"] == "running"
            else f"Cannot edit a {current['status']} campaign"
        )
    # Values, not keys: a client may PATCH back the whole object it read.
    fixed = sorted(f for f in AUDIENCE_FIELDS & changes.keys() if _differs(f, current[f], changes[f]))
    if fixed and current["audience_frozen_at"] is not None:  # a silent no-op would mislead the operator
        raise Conflict(f"Cannot change {', '.join(fixed)}: the audience was built when the campaign started")
    merged = {k: v for k, v in current.items() if k in CampaignCreate.model_fields}
    merged["audience_filter"] = merged.get("audience_filter") or {}
    merged.update(changes)
    body = CampaignCreate.model_validate(merged)
    _check_number(conn, org, body)  # a PATCH must not point a campaign at another organization's number
    values = body.model_dump(mode="json", include=set(changes))
    conn.execute(sa.update(campaigns).where(campaigns.c.id == current["id"]).values(**values, updated_at=sa.func.now()))


@dataclass(frozen=True)
class Transition:
    status: str
    previous: str


def _transition(
    conn: sa.Connection,
    org: uuid.UUID,
    campaign_id: uuid.UUID,
    allowed: tuple[str, ...],
    values: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]],
    refusal: str,
) -> Transition:
    """One guarded UPDATE; `values` may be worked out from the locked row."""
    current = get(conn, org, campaign_id, lock=True)
    if current["status"] not in allowed:
        raise Conflict(refusal.format(status=current["status"]))
    if callable(values):
        values = values(current)
    conn.execute(sa.update(campaigns).where(campaigns.c.id == current["id"]).values(**values, updated_at=sa.func.now()))
    return Transition(values.get("status", current["status"]), current["status"])


def mark_running(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID) -> Transition:
    return _transition(
        conn,
        org,
        campaign_id,
        STARTABLE,
        {
            "status": "running",
            "started_at": sa.func.coalesce(campaigns.c.started_at, sa.func.now()),
            "paused_reason": None,
            "resume_at": None,
        },
        "Cannot start a {status} campaign",
    )


def pause(
    conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID, reason: str = "operator", message: str | None = None
) -> Transition:
    values: dict[str, Any] = {"status": "paused", "paused_reason": reason}
    if message:
        values["last_error_message"] = message
    return _transition(conn, org, campaign_id, ("running", "scheduled"), values, "Cannot pause a {status} campaign")


def schedule(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID, at: datetime | None = None) -> Transition:
    """Start by itself at `at` (or at the scheduled_at it was created with); the scheduler flow starts it."""
    current = get(conn, org, campaign_id)
    when = at or current["scheduled_at"]
    if when is None:
        raise Invalid("scheduled_at: give the time the campaign should start")
    if when.tzinfo is None:
        raise Invalid("scheduled_at: include the time zone (e.g. 2026-12-01T09:00:00-03:00)")
    return _transition(
        conn,
        org,
        campaign_id,
        ("draft", "scheduled"),
        {"status": "scheduled", "scheduled_at": when},
        "Cannot schedule a {status} campaign",
    )


def resume(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID) -> Transition:
    """A paused campaign runs again. One held before it ever started (paused while scheduled, or refused
    by the checklist at its time) goes back to scheduled instead: its start still passes the pre-launch
    checklist, and the scheduler starts it at once if its time has come."""
    return _transition(
        conn,
        org,
        campaign_id,
        ("paused",),
        lambda current: {
            "status": "running" if current["started_at"] else "scheduled",
            "paused_reason": None,
            "resume_at": None,
        },
        "Cannot resume a {status} campaign",
    )


def retry_failed(
    conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID, codes: list[int] | None = None
) -> tuple[Transition, int]:
    """Send again to the campaign's failed recipients (those with `codes`, or all but opted-out ones):
    they go back to pending with a fresh retry budget, and the campaign runs again. Their history stays in
    the attempt log; opt-outs are checked again when each batch claims its rows."""
    if any(not -INT4_MAX - 1 <= code <= INT4_MAX for code in codes or ()):
        raise Invalid(f"codes: error codes are between {-INT4_MAX - 1} and {INT4_MAX}")
    current = get(conn, org, campaign_id, lock=True)
    if current["status"] not in ("running", "paused", "completed"):
        raise Conflict(f"Cannot retry the failures of a {current['status']} campaign")
    requeued = recipients.retry_failed(conn, org, campaign_id, codes, OPTED_OUT)
    if not requeued:
        raise Conflict("No failed recipient to retry" + (f" with code {', '.join(map(str, codes))}" if codes else ""))
    values: dict[str, Any] = {"status": "running", "completed_at": None, "paused_reason": None, "resume_at": None}
    conn.execute(sa.update(campaigns).where(campaigns.c.id == current["id"]).values(**values, updated_at=sa.func.now()))
    return Transition("running", current["status"]), requeued


def cancel(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID) -> Transition:
    """Final. Pending rows become cancelled at once; rows in flight are cancelled by their batch."""
    t = _transition(
        conn,
        org,
        campaign_id,
        ("draft", "scheduled", "running", "paused"),
        {"status": "cancelled", "completed_at": sa.func.now()},
        "Cannot cancel a {status} campaign",
    )
    recipients.cancel_pending(conn, campaign_id)  # the campaign is cancelled in this transaction
    return t


def pause_for_error(
    conn: sa.Connection, campaign_id: uuid.UUID, reason: str, message: str, resume_at: datetime | None = None
) -> bool:
    """Pause a running campaign from inside the send path (auth_error, template_paused, payment, quality,
    rate_limit with the time it may resume: the scheduler resumes it then)."""
    return bool(
        conn.execute(
            sa.update(campaigns)
            .where(campaigns.c.id == campaign_id, campaigns.c.status == "running")
            .values(
                status="paused",
                paused_reason=reason,
                last_error_message=message,
                resume_at=resume_at,
                updated_at=sa.func.now(),
            )
        ).rowcount
    )


OPEN_ROWS = recipients.status_in("status", recipients.OPEN)  # pending or in flight: the campaign is not done


def complete_if_done(conn: sa.Connection, campaign_id: uuid.UUID) -> bool:
    """Completed is a query: nothing pending and nothing in flight. A wait for the provider ends with it (its
    last sends may have been settled by their status webhooks while the provider was down)."""
    return bool(
        conn.execute(
            sa.text(f"""
        update campaigns set status = 'completed', completed_at = now(), updated_at = now(),
               provider_down_since = null, provider_probe_at = null
        where id = :c and status = 'running' and not exists (
            select 1 from campaign_recipients where campaign_id = :c and {OPEN_ROWS})
    """),
            {"c": campaign_id},
        ).rowcount
    )
