"""What the operator deployments do (create-campaign, campaign-control), as plain functions.

The forms are pydantic models: the Prefect UI renders their JSON schema (titles, descriptions, defaults,
bounds, dropdowns for Literal fields, `position` for the order). They only describe the form: the values
are checked by the seed's CampaignCreate, so a wrong field gets the same field-named error as from the HTTP
API or the command line. Everything else goes through the same domain functions as the API and the CLI
(lifecycle, services, and Prefect's runs and credentials, passed in); each step is logged in plain words, and a
refusal is a CampaignError with the domain's message.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from campaigns.control import lifecycle, services
from campaigns.control.models import MAX_TEXT, CampaignCreate, field_errors
from campaigns.control.runs import LoadCredentials, Runs
from campaigns.control.tenancy import org_id_by_name
from campaigns.errors import CampaignError, Conflict, Invalid, NotFound
from campaigns.store.db import iso_z
from campaigns.store.schema import campaigns, whatsapp_numbers

log = logging.getLogger(__name__)

DEFAULT_TIME_ZONE = "America/Sao_Paulo"


def _extra(position: int, choices: tuple[str, ...] = ()) -> Callable[[dict[str, Any]], None]:
    """The field's place in the form and, for an `X | None` field, a title per branch: the UI offers the
    branches by title ("No campaign cap") rather than by type."""

    def extra(schema: dict[str, Any]) -> None:
        schema["position"] = position
        for branch, title in zip(schema.get("anyOf", []), choices, strict=False):
            branch["title"] = title

    return extra


def _like(name: str, title: str, description: str, position: int, choices: tuple[str, ...] = ()) -> Any:
    """A form field with the default and bounds of CampaignCreate's field `name` (one source of truth)."""
    model_field = CampaignCreate.model_fields[name]
    bounds = {
        attr: getattr(m, attr)
        for m in model_field.metadata
        for attr in ("ge", "le", "gt", "lt", "min_length", "max_length")
        if getattr(m, attr, None) is not None
    }
    return Field(
        model_field.default, title=title, description=description, json_schema_extra=_extra(position, choices), **bounds
    )


# -- the create-campaign form ------------------------------------------------------------------------------


class CampaignDetails(BaseModel):
    """The campaign's name and the WhatsApp number that sends it."""

    model_config = ConfigDict(title="Campaign")

    name: str = _like("name", "Name", "Shown in lists, in the API and in the send-campaign run's name.", 0)
    description: str = Field(
        "", title="Description", description="Optional; for the team.", json_schema_extra={"position": 1}
    )
    whatsapp_number: str = Field(
        title="WhatsApp number",
        min_length=1,
        json_schema_extra={"position": 2},
        description="The organization's number that sends it: its phone_number_id (Meta's, e.g. 100000000000001), "
        "its display number (+55 11 91234-0001) or its id.",
    )


class MessageForm(BaseModel):
    """What every contact receives. A template can reach anyone; free-form text reaches only contacts who
    wrote to the number in the last 24 hours."""

    model_config = ConfigDict(title="Message")

    message_type: Literal["text", "template"] = _like(
        "message_type", "Message type", "template: an approved WhatsApp template; text: free-form text.", 0
    )
    text: str = Field(
        "",
        title="Text",
        max_length=MAX_TEXT,
        json_schema_extra={"position": 1},
        description="For a text message. Placeholders: {{contact.name}}, {{contact.first_name}}, "
        "{{contact.city}} (any imported column); a fallback after a bar: "
        "{{contact.name|cliente}}.",
    )
    template_name: str = Field(
        "",
        title="Template name",
        json_schema_extra={"position": 2},
        description="For a template message: the approved template's name, e.g. black_friday.",
    )
    language: str = Field(
        "pt_BR",
        title="Template language",
        json_schema_extra={"position": 3},
        description="The template's locale code: pt_BR, en_US, es…",
    )
    template_variables: dict[str, Any] = Field(
        default_factory=dict,
        title="Template variables",
        json_schema_extra={"position": 4},
        description='The template\'s parameters, e.g. {"body": ["{{contact.name}}"]}; also "header" and '
        '"buttons": [{"index": 0, "sub_type": "url", "text": "..."}].',
    )


class AudienceForm(BaseModel):
    """Who receives it. The audience is built once, when the campaign starts."""

    model_config = ConfigDict(title="Audience")

    audience_type: Literal["all_contacts", "tags", "contacts"] = _like(
        "audience_type",
        "Audience",
        "all_contacts: every contact of the organization; tags: contacts with the "
        "tags below; contacts: the contact ids below.",
        0,
    )
    tags: list[str] = Field(
        default_factory=list,
        title="Tags",
        json_schema_extra={"position": 1},
        description="For audience 'tags': e.g. vip, geral.",
    )
    match: Literal["any", "all"] = Field(
        "any",
        title="Tags match",
        json_schema_extra={"position": 2},
        description="any: contacts with one of the tags at least; all: with all.",
    )
    contact_ids: list[uuid.UUID] = Field(
        default_factory=list,
        title="Contact ids",
        json_schema_extra={"position": 3},
        description="For audience 'contacts': the contacts' ids.",
    )
    respect_opt_out: bool = _like(
        "respect_opt_out", "Respect opt-outs", "Skip contacts who opted out (PARAR, SAIR, STOP…). Leave on.", 4
    )
    skip_active_conversations: bool = _like(
        "skip_active_conversations", "Skip active conversations", "Skip contacts an agent is talking to now.", 5
    )


class PaceForm(BaseModel):
    """How fast it sends and how it retries. The number's own limits (messages per second, caps per hour
    and day, its business portfolio) always apply on top."""

    model_config = ConfigDict(title="Pace and retries")

    messages_per_hour: int | None = _like(
        "messages_per_hour",
        "Messages per hour",
        "This campaign's pace (at 100 an hour, 1,000 contacts take 10 "
        "hours); 'No campaign cap' sends as fast as the delay below and the number's limits allow.",
        0,
        choices=("Messages per hour", "No campaign cap"),
    )
    delay_between_messages_seconds: float = _like(
        "delay_between_messages_seconds",
        "Delay between messages (s)",
        "Seconds between two sends of this "
        "campaign, across all its batches (2 s: at most 1,800 an hour; 0: no delay); fractions allowed.",
        1,
    )
    retry_max_attempts: int = _like(
        "retry_max_attempts",
        "Retries",
        "Retries after the first send of a message that failed for a passing reason (so at most retries + 1 sends).",
        2,
    )
    retry_base_delay: int = _like(
        "retry_base_delay", "First retry after (s)", "Doubles at each retry, ±20%: 60 s, 120 s, 240 s.", 3
    )
    retry_max_delay: int = _like("retry_max_delay", "Longest retry delay (s)", "The doubling stops here.", 4)


class AfterCreate(BaseModel):
    """What happens once it is created."""

    model_config = ConfigDict(title="Then")

    action: Literal["draft", "start", "schedule"] = Field(
        "draft",
        title="Then",
        json_schema_extra={"position": 0},
        description="draft: only create it; start: run the pre-launch checklist and send now; schedule: start by "
        "itself at the time below (it shows under Upcoming in Prefect).",
    )
    at: datetime | None = Field(
        None,
        title="Start at",
        description="For schedule: the date and time to start.",
        json_schema_extra=_extra(1, ("Date and time", "Not scheduled")),
    )
    time_zone: str = Field(
        DEFAULT_TIME_ZONE,
        title="Time zone",
        json_schema_extra={"position": 2},
        description="For a start time written without a zone; an IANA name (America/Sao_Paulo, America/Manaus, UTC).",
    )


ControlAction = Literal["pause", "resume", "cancel", "retry-failed", "schedule", "start"]


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


# -- shared look-ups ---------------------------------------------------------------------------------------


def find_org(conn: sa.Connection, organization: str) -> uuid.UUID:
    try:
        return org_id_by_name(conn, (organization or "").strip())
    except NotFound:
        raise Invalid(f"organization: no organization named {organization!r}") from None


def find_number(conn: sa.Connection, org: uuid.UUID, ref: str) -> uuid.UUID:
    """The organization's number by its phone_number_id, display number (any punctuation) or id."""
    ref = (ref or "").strip()
    n = whatsapp_numbers.c
    conditions = [n.phone_number_id == ref]
    with contextlib.suppress(ValueError):
        conditions.append(n.id == uuid.UUID(ref))
    if digits := re.sub(r"\D", "", ref):
        conditions.append(sa.func.regexp_replace(n.display_phone_number, r"\D", "", "g") == digits)
    found = conn.execute(sa.select(n.id).where(n.organization_id == org, sa.or_(*conditions))).scalars().all()
    if len(found) == 1:
        return found[0]
    if found:
        raise Invalid(
            f"whatsapp_number: {ref!r} matches {len(found)} numbers; give the id of one: " + ", ".join(map(str, found))
        )
    known = conn.execute(
        sa.select(n.phone_number_id, n.display_phone_number)
        .where(n.organization_id == org)
        .order_by(n.created_at)
        .limit(10)
    ).all()
    listed = ", ".join(f"{p} ({d})" if d else p for p, d in known) or "none yet"
    raise Invalid(f"whatsapp_number: no WhatsApp number {ref!r} in this organization (its numbers: {listed})")


def find_campaign(conn: sa.Connection, org: uuid.UUID, ref: str) -> dict[str, Any]:
    """The organization's campaign by id or by name; a name several campaigns share is refused, listing them."""
    ref = (ref or "").strip()
    try:
        return lifecycle.get(conn, org, uuid.UUID(ref))
    except ValueError:
        pass
    rows = (
        conn.execute(
            sa.select(campaigns)
            .where(campaigns.c.organization_id == org, campaigns.c.name == ref)
            .order_by(campaigns.c.created_at.desc())
        )
        .mappings()
        .all()
    )
    if not rows:
        raise NotFound(f"Campaign not found: no campaign named {ref!r} in this organization")
    if len(rows) > 1:
        raise Invalid(
            f"campaign: {len(rows)} campaigns are named {ref!r}; give the id of the one you mean",
            [f"{r['id']} ({r['status']}, created {iso_z(r['created_at'])})" for r in rows],
        )
    return dict(rows[0])


def start_time(at: datetime | str | None, time_zone: str) -> tuple[datetime, str]:
    """The start time, aware (a time without a zone is read in `time_zone`), and how to say it."""
    try:
        zone = ZoneInfo((time_zone or "").strip() or DEFAULT_TIME_ZONE)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(
            f"time_zone: unknown time zone {time_zone!r} (an IANA name such as {DEFAULT_TIME_ZONE} or UTC)"
        ) from None
    if at is None or at == "":
        raise Invalid("at: give the date and time the campaign should start")
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at.strip())
        except ValueError:
            raise Invalid(f"at: not a date and time: {at!r} (e.g. 2026-12-01T09:00)") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=zone)
    return at, f"{iso_z(at)} ({at.astimezone(zone):%Y-%m-%d %H:%M} {zone.key})"


def _values(section: BaseModel | dict[str, Any] | None, model: type[BaseModel]) -> dict[str, Any]:
    """A form section as given (a model, a dict from the UI or the API, or nothing), over its defaults.
    Nothing is validated here: CampaignCreate does it, naming the seed's fields."""
    defaults = {
        name: f.get_default(call_default_factory=True) for name, f in model.model_fields.items() if not f.is_required()
    }
    given = section.model_dump() if isinstance(section, BaseModel) else dict(section or {})
    return {**defaults, **given}


# -- create-campaign ---------------------------------------------------------------------------------------


def campaign_body(
    conn: sa.Connection,
    org: uuid.UUID,
    campaign: dict[str, Any],
    message: dict[str, Any],
    audience: dict[str, Any],
    pace: dict[str, Any],
) -> CampaignCreate:
    """The seed's body from the form, validated by CampaignCreate; every wrong field is named at once."""
    errors: list[str] = []
    campaign, message, audience = dict(campaign), dict(message), dict(audience)
    try:
        number_id: Any = find_number(conn, org, str(campaign.pop("whatsapp_number", "") or ""))
    except Invalid as exc:
        errors.append(exc.message)
        number_id = uuid.UUID(int=0)  # stands in, so the other fields are checked too
    kind = message.pop("message_type")
    text, template_name, language = message.pop("text"), message.pop("template_name"), message.pop("language")
    content = {"template_name": template_name, "language": language} if kind == "template" else {"text": text}
    audience_type = audience.pop("audience_type")
    tags, match, contact_ids = audience.pop("tags"), audience.pop("match"), audience.pop("contact_ids")
    chosen = (
        {"tags": tags, "match": match}
        if audience_type == "tags"
        else {"contact_ids": contact_ids}
        if audience_type == "contacts"
        else {}
    )
    body = {
        **campaign,
        "description": campaign.get("description") or None,
        "whatsapp_number_id": number_id,
        "message_type": kind,
        "message_content": content,
        **message,
        "audience_type": audience_type,
        "audience_filter": chosen,
        **audience,
        **pace,
    }  # keys the form does not know go on: named as extra
    try:
        valid = CampaignCreate.model_validate(body)
    except ValidationError as exc:
        errors.extend(field_errors(exc))
    if errors:
        raise Invalid("; ".join(errors), errors)
    return valid


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
    after = _values(then, AfterCreate)
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
            _values(campaign, CampaignDetails),
            _values(message, MessageForm),
            _values(audience, AudienceForm),
            _values(pace, PaceForm),
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
    organization: str,
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
        org = find_org(conn, organization)
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
