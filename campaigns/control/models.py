"""The seed's request bodies as Pydantic models: defaults and ranges are the contract.

Ranges are wider than the seed's where issue #3 asks (messages_per_hour up to 3,600,000 or null for no
campaign cap, fractional delays), so fast senders can use their numbers fully.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from campaigns.sending.rendering import PLACEHOLDER, template_variables_problem

MAX_TEXT = 4096
MAX_DEPTH = 32  # JSON nesting a campaign body may store; more is an attack, not a message


def _key(name: str) -> str:
    """A JSON key as a path step: plain when it reads as a name, else quoted and escaped."""
    return name if name.isidentifier() else json.dumps(name)


def storable_problem(value: Any, path: str, depth: int = 0) -> str | None:
    """Why Postgres cannot store `value` as text or JSONB, naming where; None when it can.

    JSON lets a client send what Postgres refuses (a NUL character, a lone UTF-16 surrogate, NaN or
    Infinity from lenient parsers): refused here with a 422, not at the INSERT with a 500.
    """
    if depth > MAX_DEPTH:
        return f"{path}: nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, str):
        if "\x00" in value:
            return f"{path}: contains a NUL character"
        try:
            value.encode()
        except UnicodeEncodeError:
            return f"{path}: is not valid Unicode text (a lone surrogate)"
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{path}: must be a finite number"
    elif isinstance(value, list):
        items = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
        return next((p for at, item in items if (p := storable_problem(item, at, depth + 1))), None)
    elif isinstance(value, dict):
        for name, item in value.items():
            at = f"{path}.{_key(str(name))}"
            problem = storable_problem(name, at, depth + 1) or storable_problem(item, at, depth + 1)
            if problem:
                return problem
    return None


RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _time_as_text(value: Any) -> Any:
    """A time is ISO 8601 text (2026-12-01T09:00:00-03:00): a bare number would silently be read as seconds
    since 1970 and schedule a campaign in the past."""
    if isinstance(value, datetime) or value is None:
        return value
    if not isinstance(value, str) or not RFC3339.fullmatch(value.strip()):  # "2026-12-01" alone is not a time
        raise ValueError("give the time as ISO 8601 text with its time zone, e.g. 2026-12-01T09:00:00-03:00")
    return value


TimeText = Annotated[datetime | None, BeforeValidator(_time_as_text)]


def _storable(value: Any, path: str) -> Any:
    problem = storable_problem(value, path)
    if problem:
        raise ValueError(problem)
    return value


class AudienceFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tags: list[str] = Field(default_factory=list)
    match: Literal["any", "all"] = "any"
    contact_ids: list[uuid.UUID] = Field(default_factory=list)

    @field_validator("tags")
    @classmethod
    def _storable_tags(cls, tags: list[str]) -> list[str]:
        return _storable(tags, "audience_filter.tags")


SEED_EXAMPLE: dict[str, Any] = {  # the seed's "1. Criar Campanha" body: the example the API's docs show
    "name": "Black Friday 2024",
    "description": "Promo especial",
    "campaign_type": "broadcast",
    "whatsapp_number_id": "6f1c2a1e-3b5d-4c8e-9a7f-2d4b6e8a0c1f",
    "message_type": "text",
    "message_content": {"text": "Olá {{contact.name}}, aproveite nossa promoção!"},
    "audience_type": "all_contacts",
    "messages_per_hour": 100,
    "delay_between_messages_seconds": 2,
    "retry_max_attempts": 3,
    "retry_base_delay": 60,
}


class CampaignCreate(BaseModel):
    """Numbers and switches are strict: "100" or 1 for true are refused, not guessed (a client's bug shows)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SEED_EXAMPLE]})

    name: str = Field(min_length=1, max_length=255)
    description: str | None = None
    campaign_type: Literal["broadcast"] = "broadcast"
    whatsapp_number_id: uuid.UUID
    message_type: Literal["text", "template"] = "text"
    message_content: dict[str, Any]
    template_variables: dict[str, Any] = Field(default_factory=dict)
    audience_type: Literal["all_contacts", "tags", "contacts"] = "all_contacts"
    audience_filter: AudienceFilter = Field(default_factory=AudienceFilter)
    messages_per_hour: int | None = Field(100, ge=1, le=3_600_000, strict=True)
    delay_between_messages_seconds: float = Field(2, ge=0, le=60, strict=True)
    retry_max_attempts: int = Field(
        3, ge=1, le=10, strict=True, description="retries after the first send (60 s, 120 s, 240 s)"
    )
    retry_base_delay: int = Field(60, ge=10, le=600, strict=True)
    retry_max_delay: int = Field(3600, ge=60, le=7200, strict=True)
    respect_opt_out: bool = Field(True, strict=True)
    skip_active_conversations: bool = Field(False, strict=True)
    scheduled_at: TimeText = None

    @model_validator(mode="before")
    @classmethod
    def _field_names_are_text(cls, data: Any) -> Any:
        """A field name that is not valid text (a lone surrogate) fails before any field could name it."""
        for key in data if isinstance(data, dict) else ():
            problem = storable_problem(key, shown(key)) if isinstance(key, str) else None
            if problem:
                raise ValueError(problem)
        return data

    @field_validator("name", "description", "message_content")
    @classmethod
    def _storable_text(cls, value: Any, info: ValidationInfo) -> Any:
        return _storable(value, str(info.field_name))

    @field_validator("template_variables")
    @classmethod
    def _renderable_variables(cls, variables: dict[str, Any]) -> dict[str, Any]:
        """The shape render_template uses (rendering.py), so no batch meets one it cannot render."""
        problem = storable_problem(variables, "template_variables") or template_variables_problem(variables)
        if problem:
            raise ValueError(problem)
        return variables

    @model_validator(mode="after")
    def _content_matches_type(self) -> CampaignCreate:
        content = self.message_content
        if self.message_type == "text":
            text = content.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ValueError("message_content.text: required for a text message")
            if len(text) > MAX_TEXT:
                raise ValueError(f"message_content.text: longer than {MAX_TEXT} characters")
            if text.count("{{") != len(PLACEHOLDER.findall(text)):
                raise ValueError("message_content.text: malformed placeholder (use {{contact.name}})")
        else:
            if not isinstance(content.get("template_name"), str) or not content["template_name"]:
                raise ValueError("message_content.template_name: required for a template message")
            if not isinstance(content.get("language", "pt_BR"), str):
                raise ValueError("message_content.language: must be a locale code such as pt_BR")
        if self.audience_type == "tags" and not self.audience_filter.tags:
            raise ValueError("audience_filter.tags: required when audience_type is 'tags'")
        if self.audience_type == "contacts" and not self.audience_filter.contact_ids:
            raise ValueError("audience_filter.contact_ids: required when audience_type is 'contacts'")
        return self


def field_errors(exc: ValidationError) -> list[str]:
    """One line per problem, each naming its field. A client's own key (an unknown field) is escaped: a NUL
    or a lone surrogate in it must not break the answer that refuses it."""
    return error_lines(exc.errors())


def error_lines(errors: Iterable[Mapping[str, Any]]) -> list[str]:
    """`field_errors` for errors as Pydantic lists them (FastAPI's request errors too)."""
    lines = []
    for err in errors:
        loc = ".".join(str(p) for p in err["loc"]) or ('""' if err["loc"] else "")  # a field named ""
        msg = err["msg"].removeprefix("Value error, ")
        names_itself = msg.startswith((f"{loc}:", f"{loc}.", f"{loc}["))  # our messages say which part
        lines.append(shown(f"{loc}: {msg}" if loc and not names_itself else msg))
    return lines


def shown(text: str) -> str:
    """A client's own text (an unknown field's name) as an error may quote it: NUL and lone surrogates escaped."""
    return text.encode(errors="backslashreplace").decode().replace("\x00", "\\x00")


def describe_validation_error(exc: ValidationError) -> str:
    return "; ".join(field_errors(exc))
