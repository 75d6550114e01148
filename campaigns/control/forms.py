"""The operator deployments' forms (create-campaign, campaign-control) and what their values become.

The forms are pydantic models: the Prefect UI renders their JSON schema (titles, descriptions, defaults,
bounds, dropdowns for Literal fields, `position` for the order). They only describe the form: the values
are checked by the seed's CampaignCreate (`campaign_body`), so a wrong field gets the same field-named error
as from the HTTP API or the command line. Apart from `operator`, which acts on a campaign: this module only
reads what was typed (the sections over their defaults, the start time in its zone, the seed's body).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from campaigns.control.lookup import find_number
from campaigns.control.models import MAX_TEXT, CampaignCreate, field_errors
from campaigns.errors import Invalid
from campaigns.store.db import iso_z

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


# -- the campaign-control form -----------------------------------------------------------------------------


ControlAction = Literal["pause", "resume", "cancel", "retry-failed", "schedule", "start"]


# -- what the values become --------------------------------------------------------------------------------


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


def form_values(section: BaseModel | dict[str, Any] | None, model: type[BaseModel]) -> dict[str, Any]:
    """A form section as given (a model, a dict from the UI or the API, or nothing), over its defaults.
    Nothing is validated here: CampaignCreate does it, naming the seed's fields."""
    defaults = {
        name: f.get_default(call_default_factory=True) for name, f in model.model_fields.items() if not f.is_required()
    }
    given = section.model_dump() if isinstance(section, BaseModel) else dict(section or {})
    return {**defaults, **given}


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
