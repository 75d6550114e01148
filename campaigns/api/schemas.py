"""The API's request and response bodies: the contract a main app generates its client from.

Responses are declared, not raw rows: a column added by a migration (or an internal one such as
`consecutive_failures` or `flow_run_id` on the campaign) does not reach a client until a field is added here.
Times are written as the seed writes them, 2024-12-14T10:00:00Z. Request bodies for campaigns are the seed's
(`campaigns.control.models.CampaignCreate`); a PATCH takes any subset of its fields.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    StrictBool,
    StrictInt,
    ValidationInfo,
    create_model,
    field_validator,
)

from campaigns.audience.contacts import KNOWN as CONTACT_COLUMNS
from campaigns.control.models import CampaignCreate, TimeText, storable_problem
from campaigns.store.db import iso_z
from campaigns.store.schema import INT4_MAX

ATTRIBUTE = re.compile(r"[a-z_][a-z0-9_]{0,63}")  # lower case: the CSV import lower-cases its header too
Time = Annotated[datetime, PlainSerializer(iso_z, return_type=str, when_used="json")]
CampaignStatus = Literal["draft", "scheduled", "running", "paused", "completed", "cancelled", "failed"]


def _all_optional(model: type[BaseModel], name: str) -> type[BaseModel]:
    """The model's fields, each optional with no default: a PATCH names only what it changes."""
    fields: dict[str, Any] = {}
    for field, info in model.model_fields.items():
        kind: Any = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[field] = (kind | None, Field(None, description=info.description))
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


CampaignUpdate = _all_optional(CampaignCreate, "CampaignUpdate")
CampaignUpdate.__doc__ = "Fields left out are unchanged; the result is checked as a whole, as on create."


class ScheduleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheduled_at: TimeText = None  # None: the scheduled_at the campaign was created with


class RetryFailedBody(BaseModel):
    """Without codes, every failure but opted-out users is queued again."""

    model_config = ConfigDict(extra="forbid")

    codes: list[Annotated[StrictInt, Field(ge=-INT4_MAX - 1, le=INT4_MAX)]] | None = Field(
        None, description="only failures with these error codes (e.g. 131000)"
    )


class NumberLimitsBody(BaseModel):
    """Fields left out are unchanged; null removes a cap. The preset applies first, explicit fields win."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["meta-conservative", "none"] | None = None
    mps: int | None = None
    per_minute: int | None = None
    per_hour: int | None = None
    per_day: int | None = None
    portfolio_id: uuid.UUID | None = None

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set - {"preset"}}


class Campaign(BaseModel):
    """A campaign as the main app sees it (the seed's "1. Criar Campanha" response)."""

    id: uuid.UUID
    name: str
    description: str | None
    campaign_type: str
    whatsapp_number_id: uuid.UUID
    message_type: str
    message_content: dict[str, Any]
    template_variables: dict[str, Any]
    audience_type: str
    audience_filter: dict[str, Any]
    messages_per_hour: int | None
    delay_between_messages_seconds: float
    retry_max_attempts: int
    retry_base_delay: int
    retry_max_delay: int
    respect_opt_out: bool
    skip_active_conversations: bool
    scheduled_at: Time | None
    status: CampaignStatus
    paused_reason: str | None = Field(description="why a paused campaign stopped, and what to do")
    resume_at: Time | None = Field(description="when a campaign paused by a cap resumes by itself")
    started_at: Time | None
    completed_at: Time | None
    total_recipients: int
    error_count: int
    last_error_message: str | None
    flow_run_id: str | None = Field(description="the Prefect flow run sending it, or the last that did")
    created_at: Time
    updated_at: Time


class Stats(BaseModel):
    """The seed's "4. Obter Estatísticas", counted from the recipients' rows, with the breakdowns behind it."""

    total_recipients: int
    messages_sent: int
    messages_delivered: int
    messages_read: int
    messages_failed: int
    messages_pending: int
    delivery_rate: float
    read_rate: float
    reply_rate: float
    error_count: int
    last_error_message: str | None
    messages_skipped: int
    messages_cancelled: int
    skipped_by_reason: dict[str, int]
    failures_by_code: dict[str, int]
    awaiting_status: int = Field(description="sent, waiting for the delivered status")
    in_flight: int = Field(description="being sent now")


class CampaignWithStats(Stats, Campaign):
    """GET /campaigns/{id}: the campaign and its statistics (the seed's "Campaign Status")."""


class CampaignPage(BaseModel):
    total: int
    skip: int
    limit: int
    campaigns: list[Campaign]


class Progress(BaseModel):
    """The seed's "3. Monitorar Progresso"."""

    campaign_id: uuid.UUID
    progress_percentage: float
    messages_processed: int
    messages_pending: int
    estimated_remaining_time: str = Field(description="HH:MM:SS at the rate the limits allow")
    current_status: CampaignStatus
    last_update: str


class RetryPolicy(BaseModel):
    retry_max_attempts: int
    retry_base_delay: int
    retry_max_delay: int


class WaitingRetry(BaseModel):
    recipients: int
    next_attempt_at: str | None
    last_attempt_at: str | None


class RetryStats(BaseModel):
    campaign_id: uuid.UUID
    retry_policy: RetryPolicy
    recipients_by_attempts: dict[str, int]
    total_attempts: int
    waiting_retry: WaitingRetry
    failed_attempts_by_code: dict[str, int]
    failures_by_code: dict[str, int]
    retries_exhausted: int


class Attempt(BaseModel):
    """One send of a recipient (the seed's attempts list): attempt 0 is the first, 1 the first retry."""

    attempt: int
    success: bool
    timestamp: str | None
    error_code: int | None = None
    error_message: str | None = None


class RecipientStatus(BaseModel):
    contact_name: str | None
    contact_phone: str
    status: str
    skip_reason: str | None
    error_code: int | None
    error_message: str | None
    message_id: str | None
    attempts: list[Attempt]
    sent_at: str | None
    delivered_at: str | None
    read_at: str | None
    failed_at: str | None
    replied_at: str | None


class RecipientsPage(BaseModel):
    campaign_id: uuid.UUID
    status: str | None
    total: int
    page_size: int
    next_cursor: str | None = Field(description="pass as `after` for the next page; null on the last")
    recipients: dict[str, RecipientStatus] = Field(description="by contact id")


class Transition(BaseModel):
    """A lifecycle move: where the campaign is now and where it was."""

    campaign_id: uuid.UUID
    status: CampaignStatus
    previous_status: CampaignStatus
    message: str | None = None
    flow_run_id: str | None = Field(None, description="the Prefect run sending it, when one was launched")
    requeued: int | None = Field(None, description="retry-failed: recipients queued again")
    scheduled_at: Time | None = None


class Started(BaseModel):
    """The seed's "2. Iniciar Campanha"."""

    campaign_id: uuid.UUID
    status: CampaignStatus
    started_at: Time | None
    total_recipients: int
    message: str
    warnings: list[str]
    flow_run_id: str


class NumberLimits(BaseModel):
    mps: int = Field(description="messages a second")
    per_minute: int | None
    per_hour: int | None
    per_day: int | None
    portfolio_id: uuid.UUID | None
    portfolio_limit: int | None = Field(description="the business portfolio's daily conversations, if in one")


class AuditEntry(BaseModel):
    """One action through the API: who (the main app's user, or `token:<id>`), with which role, what."""

    at: Time
    actor: str
    role: str
    action: str
    details: dict[str, Any]


class NumberCreate(BaseModel):
    """A WhatsApp number and its credentials. The secrets go to the number's Prefect block; no answer, log or
    artifact ever shows them again."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["meta_cloud", "evolution", "sandbox"]
    phone_number_id: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Meta's phone number id, or the Evolution instance's name"
    )
    access_token: SecretStr = Field(min_length=1, max_length=4096)
    app_secret: SecretStr | None = Field(
        None, max_length=4096, description="signs its webhooks; none: the platform app's"
    )
    verify_token: SecretStr | None = Field(None, max_length=4096)
    api_base: str = Field(pattern=r"^https?://[\x21-\x7e]{1,2040}$", description="e.g. https://graph.facebook.com")
    graph_version: str = Field("v24.0", pattern=r"^v\d{1,3}\.\d{1,3}$")
    mps: int = Field(80, ge=1, le=1000, strict=True, description="messages a second (Meta's default tier: 80)")
    display_phone_number: str | None = Field(None, pattern=r"^\+?[0-9 ()-]{3,32}$")

    @field_validator("access_token", "app_secret", "verify_token")
    @classmethod
    def _storable_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        problem = value and storable_problem(value.get_secret_value(), str(info.field_name))
        if problem:
            raise ValueError(problem)
        return value


class Number(NumberLimits):
    """A number as the API shows it: never its credentials."""

    id: uuid.UUID
    provider: str
    phone_number_id: str
    display_phone_number: str | None
    active: bool
    created_at: Time


class Contact(BaseModel):
    """One contact, upserted by phone (the CSV import's columns, as JSON)."""

    model_config = ConfigDict(extra="forbid")

    phone: str = Field(min_length=1, max_length=64, description="E.164, or national with DEFAULT_COUNTRY_CODE")
    name: str | None = Field(None, max_length=255)
    tags: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list, max_length=100)
    opted_out: StrictBool = False
    last_inbound_at: TimeText = Field(None, description="the contact's last message: opens the 24 h window")
    attributes: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="for {{contact.<attribute>}} placeholders"
    )

    @field_validator("tags")
    @classmethod
    def _tags_without_separator(cls, tags: list[str]) -> list[str]:
        if any("|" in t or not t.strip() for t in tags):
            raise ValueError("a tag is text without '|' (the CSV's separator)")
        return tags

    @field_validator("attributes")
    @classmethod
    def _attribute_names(cls, attributes: dict[str, Any]) -> dict[str, Any]:
        for name in attributes:
            if not ATTRIBUTE.fullmatch(name) or name.lower() in CONTACT_COLUMNS:
                raise ValueError(
                    f"{name!r} is not an attribute name: lower-case letters, digits and _ "
                    f"(as in {{{{contact.city}}}}), not one of {', '.join(CONTACT_COLUMNS)}"
                )
        return attributes


class ContactsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contacts: list[Contact] = Field(max_length=100_000)


class Rejected(BaseModel):
    at: str = Field(description="line N of the CSV (the header is line 1), or contacts[i] of a JSON body")
    reason: str


class ImportReport(BaseModel):
    imported: int
    inserted: int
    updated: int
    rejected: list[Rejected]
    encoding: str = Field(description="how a CSV was read: utf-8, or windows-1252 for a file that is not UTF-8")


class Check(BaseModel):
    name: str
    ok: bool
    blocking: bool = Field(description="false: a warning, reported, does not stop a start")
    detail: str = Field(description="what is wrong and what to do; empty when ok")


class PreflightReport(BaseModel):
    """The seed's checklist, each item with its result: what a start would check, changing nothing."""

    campaign_id: uuid.UUID
    ok: bool = Field(description="a start would pass the checklist now")
    audience_size: int
    checks: list[Check]
