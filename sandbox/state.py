"""A local, real-HTTP imitation of Meta's WhatsApp Cloud API (and of Evolution API's text sends).

The campaign engine is only trustworthy if it is exercised against something that answers like Meta does:
real sockets, real latency, real throughput limits, Meta's error envelope and codes, and signed status
webhooks that arrive late, twice or out of order. This module provides exactly that, so that the demo and
the test-suite talk HTTP to a peer instead of to mocks.

Pieces:

* :class:`SandboxConfig` / :class:`FailureRule`: every knob (latency, ``mps_cap``, failure rules, tokens,
  webhook behaviour), changeable at runtime through :meth:`Sandbox.configure` or ``POST /_sandbox/config``.
* :class:`Sandbox`: the state and request handlers; everything runs on one asyncio event loop, so the hot
  path needs no locks (all decisions are taken synchronously between two awaits).
* :func:`create_app`: the aiohttp application (send endpoint + ``/_sandbox/`` admin API).
* :class:`SandboxServer`: runs the app on a background thread with its own loop (tests, demo, benchmarks).
* :func:`serve`: runs the app in the foreground (``campaigns sandbox serve``).

Semantics worth knowing (they are what the tests rely on):

* A message is *accepted* the moment the request is decided (before the configured latency sleep). It is
  recorded then, like Meta: if the client gives up while waiting, the message was still sent.
* The throughput window counts accepted messages per ``phone_number_id`` over the last 1.0 s of decision
  times; ``max_window_per_second`` is therefore exact and can never exceed ``mps_cap``.
* Failure-rule attempts are counted per ``(rule, phone_number_id, wa_id, biz_opaque_callback_data)``: a
  ``times: 2`` rule fails the first two sends of *that message* and lets the third through; an exhausted
  rule, or one whose probability roll misses, is skipped and the next rule is tried.
* Evolution (``POST /message/sendText/{instance}``, header ``apikey``) goes through the same decision,
  record and webhook schedule, with the instance in the place of the phone_number_id. Only the wire
  differs: Evolution's answers (:func:`_evolution_refusal` maps Graph errors to them) and one unsigned
  ``messages.update``/``messages.upsert`` event per POST to ``{evolution_webhook_url}/{instance}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import random
import re
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import IO, Any, Literal, Self, TypeVar

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

__all__ = [
    "ERROR_CATALOG",
    "FailureRule",
    "Sandbox",
    "SandboxConfig",
    "SandboxServer",
    "create_app",
    "default_http_status",
    "serve",
    "sign_body",
    "verify_signature",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# --------------------------------------------------------------------------------------------------------
# Meta's error codes
# --------------------------------------------------------------------------------------------------------

#: code -> (title, default details). Titles follow Meta's Cloud API error-code table so that engine code
#: which logs or classifies errors sees the same strings it would see in production.
ERROR_CATALOG: dict[int, tuple[str, str]] = {
    0: ("AuthException", "Unable to authenticate the app user."),
    2: ("Service temporarily unavailable", "Service temporarily unavailable due to downtime or overload."),
    4: ("Application request limit reached", "The app has reached its API call rate limit."),
    100: ("Invalid parameter", "The request included one or more unsupported or misspelled parameters."),
    190: ("Access token has expired", "Error validating access token: Session has expired."),
    368: ("Temporarily blocked for policies violations", "The phone number is temporarily restricted."),
    80007: ("Rate limit issues", "The WhatsApp Business Account has reached its rate limit."),
    130429: ("Rate limit hit", "Cloud API message throughput has been reached."),
    131000: ("Something went wrong", "Message failed to send due to an unknown error."),
    131005: ("Access denied", "Permission is either not granted or has been removed."),
    131008: ("Required parameter is missing", "The request is missing a required parameter."),
    131009: ("Parameter value is not valid", "One or more parameter values are invalid."),
    131016: ("Service unavailable", "A service is temporarily unavailable."),
    131021: ("Recipient cannot be sender", "Sender and recipient phone number is the same."),
    131026: (
        "Message undeliverable",
        "Unable to deliver message. The recipient may not be a WhatsApp user or has not accepted the "
        "latest terms of service.",
    ),
    131031: ("Account has been locked", "The business account was restricted or disabled."),
    131042: ("Business eligibility payment issue", "There was an error related to your payment method."),
    131047: (
        "Re-engagement message",
        "More than 24 hours have passed since the recipient last replied to the sender number.",
    ),
    131048: ("Spam rate limit hit", "Message failed to send because of restrictions on the phone number."),
    131049: (
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "Meta chose not to deliver this message.",
    ),
    131050: (
        "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages "
        "on WhatsApp from your business.",
        "The recipient opted out of marketing messages.",
    ),
    131051: ("Unsupported message type", "Unsupported message type."),
    131052: ("Media download error", "Unable to download the media sent by the user."),
    131053: ("Media upload error", "Unable to upload the media used in the message."),
    131056: (
        "(Business Account, Consumer Account) pair rate limit hit",
        "Too many messages sent from the sender phone number to the same recipient phone number in a "
        "short period of time.",
    ),
    131057: ("Account in maintenance mode", "Business account is in maintenance mode."),
    132000: ("Template Param Count Mismatch", "The number of parameters does not match the template."),
    132001: ("Template does not exist", "The template does not exist in the specified language."),
    132005: ("Template Hydrated Text Too Long", "Translated text is too long."),
    132007: ("Template Format Character Policy Violated", "Template content violates a policy."),
    132012: ("Template Parameter Format Mismatch", "Variable parameter values formatted incorrectly."),
    132015: ("Template is Paused", "Template is paused due to low quality."),
    132016: ("Template is Disabled", "Template has been paused too many times and is now disabled."),
    133004: ("Server Temporarily Unavailable", "Server is temporarily unavailable."),
    133010: ("Phone number Not Registered", "The phone number is not registered on the WhatsApp Business Platform."),
}

_AUTH_CODES = frozenset({0, 190})
_HTTP_503_CODES = frozenset({131016, 133004})
_HTTP_500_CODES = frozenset({2, 131000})


def default_http_status(code: int) -> int:
    """HTTP status Meta answers with for a Graph error ``code`` (401 auth, 5xx server-side, else 400)."""
    if code in _AUTH_CODES:
        return 401
    if code in _HTTP_503_CODES:
        return 503
    if code in _HTTP_500_CODES:
        return 500
    return 400


class GraphError(Exception):
    """A Graph API error on its way to becoming Meta's JSON error envelope."""

    def __init__(
        self,
        code: int,
        message: str | None = None,
        *,
        details: str | None = None,
        http_status: int | None = None,
        subcode: int | None = None,
    ) -> None:
        title, default_details = ERROR_CATALOG.get(code, ("Unknown error", "Unknown error."))
        self.code = code
        self.title = title
        self.message = message if message is not None else f"(#{code}) {title}"
        self.details = details if details is not None else default_details
        self.http_status = http_status if http_status is not None else default_http_status(code)
        self.subcode = subcode
        super().__init__(self.message)

    def envelope(self) -> dict[str, Any]:
        """Meta's Graph error body: ``{"error": {message, type, code, error_data, fbtrace_id}}``."""
        error: dict[str, Any] = {
            "message": self.message,
            "type": "OAuthException",
            "code": self.code,
            "error_data": {"messaging_product": "whatsapp", "details": self.details},
            "fbtrace_id": "A" + secrets.token_urlsafe(16),
        }
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        return {"error": error}

    def webhook_error(self) -> dict[str, Any]:
        """The ``errors[]`` element of a ``failed`` status webhook."""
        return {
            "code": self.code,
            "title": self.title,
            "message": self.title,
            "error_data": {"details": self.details},
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
        }


# --------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------


class FailureRule(BaseModel):
    """Make sends to matching recipients fail, synchronously or through a ``failed`` status webhook.

    ``match`` is a regex searched in the recipient's wa_id (the ``to`` number without ``+``/spaces), so
    ``"3$"`` hits every number ending in 3 and ``".*"`` hits everyone. Rules apply to Evolution sends too
    (``phone_number_id`` then names the instance); see :func:`_evolution_refusal` for their answers.
    """

    model_config = ConfigDict(extra="forbid")

    match: str = ".*"
    code: int
    http_status: int | None = None
    times: int | None = Field(default=None, ge=0, description="fail the first N attempts, then succeed")
    probability: float = Field(default=1.0, ge=0.0, le=1.0)
    where: Literal["sync", "webhook"] = "sync"
    phone_number_id: str | None = Field(default=None, description="only for this sender number")
    message: str | None = Field(default=None, description="override of the error message")
    details: str | None = Field(default=None, description="override of error_data.details")
    retry_after: str | None = Field(default=None, description="Retry-After header of a sync refusal (any text)")

    _pattern: re.Pattern[str] = PrivateAttr()

    @field_validator("match")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regex {value!r}: {exc}") from exc
        return value

    def model_post_init(self, __context: Any) -> None:
        """Compile the regex once; rules are evaluated on every request."""
        self._pattern = re.compile(self.match)

    def matches(self, phone_number_id: str, wa_id: str) -> bool:
        if self.phone_number_id is not None and self.phone_number_id != phone_number_id:
            return False
        return self._pattern.search(wa_id) is not None

    def error(self) -> GraphError:
        return GraphError(self.code, self.message, details=self.details, http_status=self.http_status)


class SandboxConfig(BaseModel):
    """All sandbox settings. Every field can be changed at runtime (``configure`` / ``POST /_sandbox/config``)."""

    model_config = ConfigDict(extra="forbid")

    # --- send endpoint
    latency_ms: float = Field(default=0.0, ge=0)
    latency_jitter_ms: float = Field(default=0.0, ge=0, description="uniform +/- around latency_ms")
    mps_cap: int | None = Field(default=None, ge=0, description="accepted messages/s per phone number")
    rules: list[FailureRule] = Field(default_factory=list)
    tokens: dict[str, str | None] = Field(
        default_factory=dict,
        description="phone_number_id -> valid token (None = revoked). Numbers not listed accept any token.",
    )
    quality_ratings: dict[str, str] = Field(
        default_factory=dict, description="phone_number_id -> quality rating Graph reports (default GREEN)"
    )
    evolution_states: dict[str, str] = Field(
        default_factory=dict, description="instance -> connection state Evolution reports (default open)"
    )
    templates: dict[str, str] = Field(
        default_factory=dict,
        description="template name -> body text with {{1}}/{{name}} placeholders; when non-empty, unknown "
        "names fail with 132001 and wrong parameter counts with 132000",
    )
    answer_ids: dict[str, Any] = Field(
        default_factory=dict,
        description="wa_id -> the message id its accepted sends are answered with instead of their own (any "
        "JSON: a broken or hostile peer's duplicate or non-string id); records and webhooks keep the real id",
    )
    seed: int | None = Field(default=0, description="seed of the RNG behind rule probabilities and rates")
    record_path: str | None = Field(default=None, description="append every accepted message as JSONL")

    # --- identity used in webhooks
    waba_id: str = "100000000000001"
    waba_ids: dict[str, str] = Field(default_factory=dict, description="phone_number_id -> WABA id")
    display_phone_numbers: dict[str, str] = Field(default_factory=dict)

    # --- status webhooks
    webhook_url: str | None = None
    app_secret: str = "sandbox-app-secret"
    sent_delay_ms: float = Field(default=50.0, ge=0)
    delivered_delay_ms: float = Field(default=50.0, ge=0, description="after sent")
    read_delay_ms: float = Field(default=100.0, ge=0, description="after delivered")
    reply_delay_ms: float = Field(default=150.0, ge=0, description="after delivered")
    delivered_rate: float = Field(default=1.0, ge=0, le=1)
    read_rate: float = Field(default=0.5, ge=0, le=1, description="fraction of delivered")
    reply_rate: float = Field(default=0.0, ge=0, le=1, description="fraction of delivered")
    reply_text: str = "Obrigado!"
    reply_profile_name: str = "Sandbox User"
    duplicate_rate: float = Field(default=0.0, ge=0, le=1, description="fraction of events posted twice")
    duplicate_delay_ms: float = Field(default=200.0, ge=0, description="max delay of the second copy")
    duplicate_copies: int = Field(default=1, ge=1, le=10, description="extra copies of a duplicated event")
    shuffle: bool = False
    shuffle_window_ms: float = Field(default=300.0, ge=0, description="random extra delay when shuffling")
    webhook_batch_size: int = Field(default=50, ge=1, description="events per POST")
    webhook_statuses_per_change: int = Field(default=10, ge=1)
    webhook_changes_per_entry: int = Field(default=3, ge=1)
    webhook_concurrency: int = Field(default=8, ge=1, description="POSTs in flight")
    webhook_max_retries: int = Field(default=4, ge=0)
    webhook_retry_backoff_ms: float = Field(default=100.0, ge=0, description="doubles on every retry")
    webhook_timeout_s: float = Field(default=10.0, gt=0)

    # --- Evolution API (POST /message/sendText/{instance}); the knobs above apply to it as well
    evolution_keys: dict[str, str] = Field(
        default_factory=dict, description="instance -> valid apikey. Instances not listed accept any key."
    )
    evolution_webhook_url: str | None = Field(
        default=None, description="receiver base: each event is POSTed to {evolution_webhook_url}/{instance}"
    )

    def updated(self, fields: dict[str, Any]) -> SandboxConfig:
        """A validated copy with ``fields`` replaced (rules given as dicts are parsed)."""
        return SandboxConfig.model_validate({**self.model_dump(), **fields})


# --------------------------------------------------------------------------------------------------------
# Webhook signature
# --------------------------------------------------------------------------------------------------------


def sign_body(body: bytes, app_secret: str) -> str:
    """Value of ``X-Hub-Signature-256`` for ``body``: ``sha256=<hex HMAC-SHA256(app_secret, body)>``."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, app_secret: str) -> bool:
    """Constant-time check of an ``X-Hub-Signature-256`` header against the raw body."""
    return bool(header) and hmac.compare_digest(sign_body(body, app_secret), header or "")


# --------------------------------------------------------------------------------------------------------
# Request parsing
# --------------------------------------------------------------------------------------------------------

_PHONE_STRIP = re.compile(r"[\s+\-().]")
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


class _Outgoing:
    """The parts of a send request the sandbox needs (parsed once, synchronously)."""

    __slots__ = ("to", "wa_id", "type", "body", "template", "rendered", "biz")

    def __init__(
        self,
        to: str,
        wa_id: str,
        type_: str,
        body: str | None,
        template: dict[str, Any] | None,
        rendered: str,
        biz: str | None,
    ) -> None:
        self.to = to
        self.wa_id = wa_id
        self.type = type_
        self.body = body
        self.template = template
        self.rendered = rendered
        self.biz = biz


def _bad_param(field: str, problem: str = "is required") -> GraphError:
    return GraphError(100, f"(#100) The parameter {field} {problem}.", details=f"Parameter {field} {problem}.")


def _param_text(param: Any) -> str:
    """Plain-text value of one template parameter (text, currency, date_time; else its JSON)."""
    if isinstance(param, dict):
        kind = param.get("type")
        if kind == "text" and "text" in param:
            return str(param["text"])
        if kind in ("currency", "date_time") and isinstance(param.get(kind), dict):
            return str(param[kind].get("fallback_value", ""))
    return json.dumps(param, sort_keys=True)


def _render_template(name: str, language: str, components: list[Any], templates: dict[str, str]) -> str:
    """Render a template the way the recipient would see it, when the sandbox knows its body text."""
    body_params: list[Any] = []
    for component in components:
        if isinstance(component, dict) and str(component.get("type", "")).lower() == "body":
            body_params.extend(component.get("parameters") or [])
    texts = [_param_text(p) for p in body_params]
    if not templates:
        return f"{name}[{language}](" + ", ".join(texts) + ")"
    if name not in templates:
        raise GraphError(132001, details=f"template name ({name}) does not exist in {language}")
    text = templates[name]
    placeholders = list(dict.fromkeys(_PLACEHOLDER.findall(text)))
    if len(placeholders) != len(texts):
        raise GraphError(
            132000,
            details=f"body: number of localizable_params ({len(texts)}) does not match the expected "
            f"number of params ({len(placeholders)})",
        )
    values: dict[str, str] = {}
    for position, (param, value) in enumerate(zip(body_params, texts, strict=True), start=1):
        key = param.get("parameter_name") if isinstance(param, dict) else None
        values[str(key) if key else str(position)] = value
    missing = [p for p in placeholders if p not in values]
    if missing:
        raise GraphError(132000, details=f"body: missing parameters {missing}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _parse_message(raw: bytes, templates: dict[str, str]) -> _Outgoing:
    """Validate a send body like Meta does (code 100 naming the field) and extract what we record."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GraphError(100, "(#100) Invalid parameter", details=f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise GraphError(100, "(#100) Invalid parameter", details="Request body must be a JSON object.")
    if data.get("messaging_product") != "whatsapp":
        raise _bad_param("messaging_product", "is required and must be 'whatsapp'")
    to = data.get("to")
    if isinstance(to, int) and not isinstance(to, bool):
        to = str(to)
    if not isinstance(to, str) or not to.strip():
        raise _bad_param("to")
    wa_id = _PHONE_STRIP.sub("", to)
    if not wa_id.isdigit() or not 5 <= len(wa_id) <= 20:
        raise _bad_param("to", "is not a valid phone number")
    type_ = data.get("type", "text")
    biz = data.get("biz_opaque_callback_data")
    if biz is not None and not isinstance(biz, str):
        raise _bad_param("biz_opaque_callback_data", "must be a string")
    if type_ == "text":
        text = data.get("text")
        body = text.get("body") if isinstance(text, dict) else None
        if not isinstance(body, str) or not body:
            raise _bad_param("text['body']")
        return _Outgoing(to, wa_id, "text", body, None, body, biz)
    if type_ == "template":
        template = data.get("template")
        if not isinstance(template, dict):
            raise _bad_param("template")
        name = template.get("name")
        if not isinstance(name, str) or not name:
            raise _bad_param("template['name']")
        language = template.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        if not isinstance(code, str) or not code:
            raise _bad_param("template['language']['code']")
        components = template.get("components") or []
        if not isinstance(components, list):
            raise _bad_param("template['components']", "must be an array")
        rendered = _render_template(name, code, components, templates)
        return _Outgoing(to, wa_id, "template", None, template, rendered, biz)
    if not isinstance(type_, str) or not isinstance(data.get(type_), dict):
        raise _bad_param(f"{type_}" if isinstance(type_, str) else "type", "is required")
    return _Outgoing(to, wa_id, type_, None, None, json.dumps(data[type_], sort_keys=True), biz)


def _parse_evolution(raw: bytes) -> _Outgoing:
    """Evolution's ``textMessageSchema``: ``number`` and ``text`` are required strings (code 100 if not)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GraphError(100, details=f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise GraphError(100, details="instance is not of a type(s) object")
    for field in ("number", "text"):
        if not isinstance(data.get(field), str) or not data[field]:
            raise GraphError(100, details=f'instance requires property "{field}"')
    number, text = data["number"], data["text"]
    wa_id = _PHONE_STRIP.sub("", number)
    if not wa_id.isdigit() or not 5 <= len(wa_id) <= 20:
        raise GraphError(100, details="instance.number is not a valid phone number")
    return _Outgoing(number, wa_id, "text", text, None, text, None)


def _graph_accepted(record: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return 200, {
        "messaging_product": "whatsapp",
        "contacts": [{"input": record["to"], "wa_id": record["wa_id"]}],
        "messages": [{"id": record["wamid"], "message_status": "accepted"}],
    }


def _graph_refused(err: GraphError, msg: _Outgoing | None) -> tuple[int, dict[str, Any]]:
    return err.http_status, err.envelope()


@functools.cache  # asked on every accept and every event: one uuid5 per instance
def _instance_id(instance: str) -> str:
    """A stable per-instance UUID, like the ``instanceId`` Evolution keeps in its database."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-evolution:{instance}"))


# Shared by every sent/delivered event (serialised, never changed): built once, not per event.
_PRICING = {category: {"billable": True, "pricing_model": "PMP", "type": "regular", "category": category}
            for category in ("marketing", "service")}


def _jid(wa_id: str) -> str:
    return f"{wa_id}@s.whatsapp.net"


def _evolution_accepted(record: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Evolution answers 201 with the stored message; ``key.id`` is what its webhooks call ``keyId``."""
    return 201, {
        "key": {"remoteJid": _jid(record["wa_id"]), "fromMe": True, "id": record["wamid"]},
        "pushName": "",
        "status": "PENDING",
        "message": {"conversation": record["body"]},
        "contextInfo": None,
        "messageType": "conversation",
        "messageTimestamp": int(record["accepted_at"]),
        "instanceId": _instance_id(record["instance"]),
        "source": "unknown",
    }


def _evolution_refusal(err: GraphError, msg: _Outgoing | None) -> tuple[int, dict[str, Any]]:
    """Evolution has no error codes, only HTTP statuses, so a Graph error maps onto the one it would give.

    Auth (190, any 401/403) → 401 Unauthorized; 130429 (``mps_cap``) → 429; a 5xx (131000, 2, 131016,
    133004 or a rule's ``http_status`` ≥ 500) → 500; a malformed request → 400 naming the field; any other
    code (131026, 131049, …) → 400 ``exists: false``, the only per-recipient refusal Evolution has.
    """
    if err.http_status in (401, 403):
        status, message = 401, "Unauthorized"
    elif err.code == 130429:
        status, message = 429, [err.details]
    elif err.http_status >= 500:
        status, message = 500, [err.details]
    elif msg is None:  # refused before the body was understood
        status, message = 400, [err.details]
    else:
        status, message = 400, [{"exists": False, "jid": _jid(msg.wa_id), "number": msg.to}]
    return status, {"status": status, "error": HTTPStatus(status).phrase, "response": {"message": message}}


@dataclass(frozen=True)
class _Wire:
    """What differs between the APIs the sandbox speaks; admission, limits, rules and records are shared."""

    provider: str
    accepted: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]
    refused: Callable[[GraphError, _Outgoing | None], tuple[int, dict[str, Any]]]


_GRAPH = _Wire("meta_cloud", _graph_accepted, _graph_refused)
_EVOLUTION = _Wire("evolution", _evolution_accepted, _evolution_refusal)


def _guarded(wire: _Wire, check: Callable[[], None], body: dict[str, Any]) -> web.Response:
    """``body`` when ``check`` passes, else the refusal in the wire's format (a read: nothing recorded)."""
    try:
        check()
    except GraphError as err:
        status, refused = wire.refused(err, None)
        return web.json_response(refused, status=status)
    return web.json_response(body)
#: Our lifecycle names (the record's ``final_status``) as Baileys' ``messages.update`` statuses.
_EVOLUTION_STATUS = {"sent": "SERVER_ACK", "delivered": "DELIVERY_ACK", "read": "READ", "failed": "ERROR"}


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------------------------------------
# The sandbox
# --------------------------------------------------------------------------------------------------------

#: A scheduled webhook event: (due monotonic time, tie-breaker, provider, phone_number_id or instance, kind,
#: item); kind is sent/delivered/read/failed/reply whatever the provider, so stats count both alike.
_Event = tuple[float, int, str, str, str, dict[str, Any]]
#: Where a webhook body goes, from the config current at each attempt (so rotated secrets and URLs apply to
#: retries): (url, headers), or None when no receiver is configured any more.
_Target = Callable[[SandboxConfig, bytes], tuple[str, dict[str, str]] | None]
#: One POST to make: the kinds of the events it carries, its body and its target.
_Post = tuple[list[str], bytes, _Target]


def _meta_target(cfg: SandboxConfig, body: bytes) -> tuple[str, dict[str, str]] | None:
    if not cfg.webhook_url:
        return None
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign_body(body, cfg.app_secret),
        "User-Agent": "facebookexternalua",
    }
    return cfg.webhook_url, headers


def _evolution_url(cfg: SandboxConfig, instance: str) -> str | None:
    return f"{cfg.evolution_webhook_url.rstrip('/')}/{instance}" if cfg.evolution_webhook_url else None


def _evolution_target(instance: str, cfg: SandboxConfig, body: bytes) -> tuple[str, dict[str, str]] | None:
    """Evolution signs nothing: the receiver checks the ``apikey`` header against the instance's key."""
    url = _evolution_url(cfg, instance)
    if url is None:
        return None
    headers = {"Content-Type": "application/json", "User-Agent": "axios/1.7.9"}
    if key := cfg.evolution_keys.get(instance):
        headers["apikey"] = key
    return url, headers


class Sandbox:
    """State and handlers of one fake Cloud API. All methods must run on the event loop serving the app."""

    _DISPATCH_TICK_S = 0.01

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self._cfg = config or SandboxConfig()
        self._rng = random.Random(self._cfg.seed)  # outcomes: rules, rates, duplicates (reproducible)
        self._timing_rng = random.Random()  # latency jitter and shuffle delays (timing only)
        self._run_id = secrets.token_hex(5).upper()
        self._wamid_seq = itertools.count(1)
        self._heap: list[_Event] = []
        self._heap_seq = itertools.count()
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._inflight_posts = 0
        self._pending = 0  # events scheduled and not yet posted or dropped
        self._post_tasks: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._server_url = "http://127.0.0.1"  # Evolution's SERVER_URL, as last seen by an Evolution request
        self._record_file: IO[str] | None = None
        self._open_record_file()
        self._reset_state()

    # ---- configuration -------------------------------------------------------------------------------

    @property
    def config(self) -> SandboxConfig:
        return self._cfg

    def configure(self, **fields: Any) -> SandboxConfig:
        """Validate and apply new settings; raises ``pydantic.ValidationError`` on bad values."""
        old = self._cfg
        new = old.updated(fields)
        self._cfg = new
        if new.rules != old.rules:
            self._rule_hits.clear()
        if new.seed != old.seed:
            self._rng.seed(new.seed)
        if new.record_path != old.record_path:
            self._close_record_file()
            self._open_record_file()
        logger.debug("sandbox configured: %s", sorted(fields))
        return new

    def set_token(self, phone_number_id: str, token: str | None) -> None:
        """Set the only valid token for a number; ``None`` revokes it (every token then gets 401/190)."""
        tokens = dict(self._cfg.tokens)
        tokens[phone_number_id] = token
        self.configure(tokens=tokens)

    def reset(self) -> None:
        """Forget records and counters, drop scheduled (not yet posted) webhooks, truncate ``record_path``."""
        self._pending -= len(self._heap)
        self._heap.clear()
        self._rng.seed(self._cfg.seed)
        if self._record_file is not None:
            self._record_file.seek(0)
            self._record_file.truncate()
        self._reset_state()

    def _reset_state(self) -> None:
        self._records: list[dict[str, Any]] = []
        self._requests = 0
        self._accepted = 0
        self._throttled = 0
        self._errors_by_code: Counter[int] = Counter()
        self._webhook_failures_by_code: Counter[int] = Counter()
        self._accepted_by_phone: Counter[str] = Counter()
        self._windows: dict[str, deque[float]] = {}
        self._overall_window: deque[float] = deque()
        self._max_window = 0
        self._max_window_by_phone: dict[str, int] = {}
        self._rule_hits: dict[tuple[int, str, str, str | None], int] = {}
        self._webhook_posts_ok = 0
        self._webhook_posts_failed = 0
        self._webhook_events_dropped = 0
        self._webhook_events_posted: Counter[str] = Counter()
        self._duplicates_scheduled = 0

    def _open_record_file(self) -> None:
        if self._cfg.record_path:
            self._record_file = open(self._cfg.record_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def _close_record_file(self) -> None:
        if self._record_file is not None:
            self._record_file.close()
            self._record_file = None

    # ---- read-only views ----------------------------------------------------------------------------

    def messages(
        self, biz: str | None = None, to: str | None = None, phone_number_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Copies of the accepted-message records, optionally filtered."""
        return [
            dict(r)
            for r in self._records
            if (biz is None or r["biz_opaque_callback_data"] == biz)
            and (to is None or r["to"] == to or r["wa_id"] == to)
            and (phone_number_id is None or r["phone_number_id"] == phone_number_id)
        ]

    def stats(self) -> dict[str, Any]:
        """Counters; ``max_window_per_second`` is the most accepted messages seen in any 1-s window."""
        return {
            "requests": self._requests,
            "accepted": self._accepted,
            "accepted_by_phone": dict(self._accepted_by_phone),
            "throttled_130429": self._throttled,
            "errors_by_code": dict(self._errors_by_code),
            "max_window_per_second": self._max_window,
            "max_window_per_second_by_phone": dict(self._max_window_by_phone),
            "webhook_failures_by_code": dict(self._webhook_failures_by_code),
            "webhook_posts_ok": self._webhook_posts_ok,
            "webhook_posts_failed": self._webhook_posts_failed,
            "webhook_events_posted": dict(self._webhook_events_posted),
            "webhook_events_dropped": self._webhook_events_dropped,
            "webhook_duplicates_scheduled": self._duplicates_scheduled,
            "webhook_pending": self._pending,
        }

    # ---- send endpoint ------------------------------------------------------------------------------

    async def handle_send(self, request: web.Request) -> web.Response:
        """``POST /{version}/{phone_number_id}/messages``: decide at once, sleep the latency, answer."""
        phone_number_id = request.match_info["phone_number_id"]
        raw = await request.read()
        cfg = self._cfg

        def admit() -> _Outgoing:
            self._check_token(cfg, phone_number_id, request.headers.get("Authorization"))
            return _parse_message(raw, cfg.templates)

        return await self._send(cfg, _GRAPH, phone_number_id, admit)

    async def handle_evolution_send(self, request: web.Request) -> web.Response:
        """``POST /message/sendText/{instance}`` (header ``apikey``): Evolution's wire, the same decision."""
        instance = request.match_info["instance"]
        raw = await request.read()
        cfg = self._cfg
        self._server_url = f"{request.scheme}://{request.host}"

        def admit() -> _Outgoing:
            self._check_apikey(cfg, instance, request.headers.get("apikey"))
            return _parse_evolution(raw)

        return await self._send(cfg, _EVOLUTION, instance, admit)

    async def handle_phone_number(self, request: web.Request) -> web.Response:
        """``GET /{version}/{phone_number_id}``: the number as Graph shows it, token checked (the preflight)."""
        pnid = request.match_info["phone_number_id"]
        cfg = self._cfg
        return _guarded(_GRAPH, lambda: self._check_token(cfg, pnid, request.headers.get("Authorization")), {
            "id": pnid,
            "verified_name": "PyTake Sandbox",
            "display_phone_number": f"+1 555 {pnid[-7:]}",
            "quality_rating": cfg.quality_ratings.get(pnid, "GREEN"),
        })

    async def handle_evolution_state(self, request: web.Request) -> web.Response:
        """``GET /instance/connectionState/{instance}`` (header ``apikey``): whether the instance is connected."""
        instance = request.match_info["instance"]
        cfg = self._cfg
        state = cfg.evolution_states.get(instance, "open")
        return _guarded(_EVOLUTION, lambda: self._check_apikey(cfg, instance, request.headers.get("apikey")),
                        {"instance": {"instanceName": instance, "state": state}})

    async def _send(self, cfg: SandboxConfig, wire: _Wire, sender: str, admit: Callable[[], _Outgoing]) -> web.Response:
        """Decide at once (auth + body, throughput, rules, record), sleep the latency, answer in ``wire``."""
        # From here to the sleep there is no await: the decision is atomic with respect to other requests.
        self._requests += 1
        rule: FailureRule | None = None
        record: dict[str, Any] | None = None
        msg: _Outgoing | None = None
        try:
            msg = admit()
            now = time.monotonic()
            window = self._check_throughput(cfg, sender, now)
            rule = self._match_rule(cfg, sender, msg)
            if rule is not None and rule.where == "sync":
                raise rule.error()
            record = self._accept(wire.provider, sender, msg, now, window, rule)
            status, body = wire.accepted({**record, "wamid": cfg.answer_ids.get(msg.wa_id, record["wamid"])})
        except GraphError as err:
            self._errors_by_code[err.code] += 1
            if err.code == 130429:
                self._throttled += 1
            status, body = wire.refused(err, msg)
        delay = cfg.latency_ms
        if cfg.latency_jitter_ms:
            delay += self._timing_rng.uniform(-cfg.latency_jitter_ms, cfg.latency_jitter_ms)
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        if record is not None:
            self._schedule_webhooks(self._cfg, record, rule)
        retry_after = rule.retry_after if record is None and rule is not None else None
        return web.json_response(body, status=status, headers={"Retry-After": retry_after} if retry_after else None)

    @staticmethod
    def _check_token(cfg: SandboxConfig, phone_number_id: str, header: str | None) -> None:
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise GraphError(
                190,
                "Invalid OAuth access token - Cannot parse access token",
                details="Missing or malformed Authorization header.",
            )
        if phone_number_id in cfg.tokens:
            expected = cfg.tokens[phone_number_id]
            if expected is None or not hmac.compare_digest(expected.encode(), token.encode()):
                raise GraphError(
                    190,
                    "Error validating access token: Session has expired",
                    details="The access token is invalid or has expired.",
                    subcode=463,
                )

    @staticmethod
    def _check_apikey(cfg: SandboxConfig, instance: str, key: str | None) -> None:
        """Evolution's guard: an ``apikey`` is always required, and must be the instance's when one is set."""
        expected = cfg.evolution_keys.get(instance)
        if not key or (expected is not None and not hmac.compare_digest(expected.encode(), key.encode())):
            raise GraphError(190, "Unauthorized", details="Missing or wrong apikey.")

    def _check_throughput(self, cfg: SandboxConfig, phone_number_id: str, now: float) -> deque[float]:
        """Prune this number's 1-s window and answer 130429 if one more message would exceed ``mps_cap``."""
        window = self._windows.get(phone_number_id)
        if window is None:
            window = self._windows[phone_number_id] = deque()
        cutoff = now - 1.0
        while window and window[0] <= cutoff:
            window.popleft()
        if cfg.mps_cap is not None and len(window) >= cfg.mps_cap:
            raise GraphError(130429, details=f"Cloud API message throughput ({cfg.mps_cap}/s) has been reached.")
        return window

    def _match_rule(self, cfg: SandboxConfig, phone_number_id: str, msg: _Outgoing) -> FailureRule | None:
        for index, rule in enumerate(cfg.rules):
            if not rule.matches(phone_number_id, msg.wa_id):
                continue
            key = (index, phone_number_id, msg.wa_id, msg.biz)
            hits = self._rule_hits.get(key, 0)
            if rule.times is not None and hits >= rule.times:
                continue
            if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                continue
            self._rule_hits[key] = hits + 1
            return rule
        return None

    def _new_id(self, provider: str, inbound: bool = False) -> str:
        """A unique message id in the provider's style (Meta's ``wamid.…``, Baileys' ``3EB0…``)."""
        seq = next(self._wamid_seq)
        if provider == "evolution":
            return f"{'3A' if inbound else '3EB0'}{self._run_id}{seq:010X}"
        return f"wamid.SBX{'IN' if inbound else ''}{self._run_id}{seq:010d}"

    def _accept(
        self,
        provider: str,
        phone_number_id: str,
        msg: _Outgoing,
        now: float,
        window: deque[float],
        rule: FailureRule | None,
    ) -> dict[str, Any]:
        window.append(now)
        if len(window) > self._max_window_by_phone.get(phone_number_id, 0):
            self._max_window_by_phone[phone_number_id] = len(window)
        overall = self._overall_window
        cutoff = now - 1.0
        while overall and overall[0] <= cutoff:
            overall.popleft()
        overall.append(now)
        self._max_window = max(self._max_window, len(overall))
        self._accepted += 1
        self._accepted_by_phone[phone_number_id] += 1
        record: dict[str, Any] = {
            "wamid": self._new_id(provider),
            "provider": provider,  # the API spoken: "meta_cloud" (Graph) or "evolution"
            "phone_number_id": phone_number_id,
            "to": msg.to,
            "wa_id": msg.wa_id,
            "type": msg.type,
            "body": msg.body,
            "template": msg.template,
            "rendered": msg.rendered,
            "biz_opaque_callback_data": msg.biz,
            "accepted_at": time.time(),
            "webhook_error_code": rule.code if rule is not None else None,
        }
        if provider == "evolution":
            record["instance"] = phone_number_id
        self._records.append(record)
        if self._record_file is not None:
            self._record_file.write(json.dumps(record, default=str) + "\n")
        return record

    # ---- webhook scheduling -------------------------------------------------------------------------

    def _push(
        self, cfg: SandboxConfig, offset_s: float, record: dict[str, Any], kind: str, item: dict[str, Any], now: float
    ) -> None:
        """Schedule one event ``offset_s`` from now (plus shuffle jitter), maybe twice."""
        due = now + offset_s
        if cfg.shuffle:
            due += self._timing_rng.uniform(0, cfg.shuffle_window_ms / 1000.0)
        route = (record["provider"], record["phone_number_id"], kind, item)
        heapq.heappush(self._heap, (due, next(self._heap_seq), *route))
        self._pending += 1
        if cfg.duplicate_rate and self._rng.random() < cfg.duplicate_rate:
            for _ in range(cfg.duplicate_copies):
                again = due + self._timing_rng.uniform(0, cfg.duplicate_delay_ms / 1000.0)
                heapq.heappush(self._heap, (again, next(self._heap_seq), *route))
                self._pending += 1
                self._duplicates_scheduled += 1
        self._wake.set()

    def _schedule_webhooks(self, cfg: SandboxConfig, record: dict[str, Any], rule: FailureRule | None) -> None:
        """Plan sent/delivered/read (or failed) and maybe a reply. Only heap pushes: never slows the send."""
        evolution = record["provider"] == "evolution"
        if not (cfg.evolution_webhook_url if evolution else cfg.webhook_url):
            return
        now, wall = time.monotonic(), time.time()
        build = self._evolution_event if evolution else self._meta_event

        def push(kind: str, at: float) -> None:
            # The timestamp is the event time; shuffling only changes when it is posted.
            self._push(cfg, at, record, kind, build(cfg, record, kind, wall + at, rule), now)

        t_sent = cfg.sent_delay_ms / 1000.0
        # The truth the engine's statistics must match: each message's last status and whether it was replied.
        record["final_status"], record["replied"] = "sent", False
        if rule is not None:  # where == "webhook": the API accepted it, then reports the failure
            record["final_status"] = "failed"
            self._webhook_failures_by_code[rule.code] += 1
            push("failed", t_sent)
            return
        push("sent", t_sent)
        if self._rng.random() >= cfg.delivered_rate:
            return
        t_delivered = t_sent + cfg.delivered_delay_ms / 1000.0
        record["final_status"] = "delivered"
        push("delivered", t_delivered)
        if self._rng.random() < cfg.read_rate:
            record["final_status"] = "read"
            push("read", t_delivered + cfg.read_delay_ms / 1000.0)
        if self._rng.random() < cfg.reply_rate:
            record["replied"] = True
            push("reply", t_delivered + cfg.reply_delay_ms / 1000.0)

    def _meta_event(
        self, cfg: SandboxConfig, record: dict[str, Any], kind: str, ts: float, rule: FailureRule | None
    ) -> dict[str, Any]:
        """One Cloud API status, or for ``reply`` an inbound message with its contact (batched later)."""
        wa_id = record["wa_id"]
        if kind == "reply":
            return {
                "contact": {"profile": {"name": cfg.reply_profile_name}, "wa_id": wa_id},
                "message": {
                    "context": {"from": self._display_number(cfg, record["phone_number_id"]), "id": record["wamid"]},
                    "from": wa_id,
                    "id": self._new_id("meta_cloud", inbound=True),
                    "timestamp": str(int(ts)),
                    "type": "text",
                    "text": {"body": cfg.reply_text},
                },
            }
        status: dict[str, Any] = {
            "id": record["wamid"],
            "status": kind,
            "timestamp": str(int(ts)),
            "recipient_id": wa_id,
        }
        if record["biz_opaque_callback_data"] is not None:
            status["biz_opaque_callback_data"] = record["biz_opaque_callback_data"]
        if kind == "failed" and rule is not None:
            status["errors"] = [rule.error().webhook_error()]
        elif kind != "read":
            status["pricing"] = _PRICING["marketing" if record["type"] == "template" else "service"]
        return status

    def _evolution_event(
        self, cfg: SandboxConfig, record: dict[str, Any], kind: str, ts: float, rule: FailureRule | None
    ) -> dict[str, Any]:
        """``messages.update`` (Baileys status) or, for ``reply``, ``messages.upsert`` quoting our message."""
        instance, jid = record["instance"], _jid(record["wa_id"])
        if kind == "reply":
            data: dict[str, Any] = {
                "key": {"remoteJid": jid, "fromMe": False, "id": self._new_id("evolution", inbound=True)},
                "pushName": cfg.reply_profile_name,
                "message": {
                    "extendedTextMessage": {"text": cfg.reply_text, "contextInfo": {"stanzaId": record["wamid"]}}
                },
                "messageType": "extendedTextMessage",
                "messageTimestamp": int(ts),
                "instanceId": _instance_id(instance),
            }
            return {"event": "messages.upsert", "instance": instance, "data": data}
        data = {
            "keyId": record["wamid"],
            "remoteJid": jid,
            "fromMe": True,
            "status": _EVOLUTION_STATUS[kind],
            "instanceId": _instance_id(instance),
            "messageId": "sbx" + record["wamid"].lower(),  # Evolution's database id of the message
        }
        return {"event": "messages.update", "instance": instance, "data": data}

    @staticmethod
    def _display_number(cfg: SandboxConfig, phone_number_id: str) -> str:
        if phone_number_id in cfg.display_phone_numbers:
            return cfg.display_phone_numbers[phone_number_id]
        digits = "".join(ch for ch in phone_number_id if ch.isdigit())
        return "1555" + digits[-7:].rjust(7, "0")

    # ---- webhook delivery ---------------------------------------------------------------------------

    async def start_webhooks(self) -> None:
        """Create the long-lived client session and the dispatcher task (on the serving loop)."""
        if self._record_file is None:
            self._open_record_file()
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False))
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="sandbox-webhook-dispatcher")

    async def stop_webhooks(self) -> None:
        """Cancel the dispatcher and in-flight POSTs, close the session and the record file."""
        tasks = [*self._post_tasks, *([self._dispatcher] if self._dispatcher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._dispatcher = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._close_record_file()

    async def _dispatch_loop(self) -> None:
        """Every tick, post the due events in batches, keeping at most ``webhook_concurrency`` POSTs open."""
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self._DISPATCH_TICK_S)  # lets a tick's worth of events share a POST
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                cfg = self._cfg
                batch: list[tuple[str, str, str, dict[str, Any]]] = []
                while self._heap and self._heap[0][0] <= now and len(batch) < cfg.webhook_batch_size:
                    _, _, provider, sender, kind, item = heapq.heappop(self._heap)
                    batch.append((provider, sender, kind, item))
                for kinds, body, target in self._posts(cfg, batch):
                    while self._inflight_posts >= self._cfg.webhook_concurrency:
                        self._slot_free.clear()
                        await self._slot_free.wait()
                    self._inflight_posts += 1
                    task = asyncio.create_task(self._post(kinds, body, target))
                    self._post_tasks.add(task)
                    task.add_done_callback(self._post_tasks.discard)

    def _posts(self, cfg: SandboxConfig, batch: list[tuple[str, str, str, dict[str, Any]]]) -> Iterator[_Post]:
        """Meta batches a tick's events into one signed POST; Evolution posts every event on its own."""
        meta = [(sender, kind, item) for provider, sender, kind, item in batch if provider != "evolution"]
        if meta:
            body = json.dumps(self._build_payload(cfg, meta), separators=(",", ":")).encode()
            yield [kind for _, kind, _ in meta], body, _meta_target
        for provider, instance, kind, item in batch:
            if provider == "evolution":
                envelope = {
                    **item,
                    "destination": _evolution_url(cfg, instance),
                    "date_time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "sender": _jid(self._display_number(cfg, instance)),
                    "server_url": self._server_url,
                    "apikey": cfg.evolution_keys.get(instance),
                }
                body = json.dumps(envelope, separators=(",", ":")).encode()
                yield [kind], body, functools.partial(_evolution_target, instance)

    def _build_payload(self, cfg: SandboxConfig, batch: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
        """Meta's envelope; statuses split over several changes and entries to exercise every level."""
        if cfg.shuffle:
            self._timing_rng.shuffle(batch)
        by_phone: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        for pnid, kind, item in batch:
            statuses, replies = by_phone.setdefault(pnid, ([], []))
            (replies if kind == "reply" else statuses).append(item)
        changes_by_waba: dict[str, list[dict[str, Any]]] = {}
        for pnid, (statuses, replies) in by_phone.items():
            changes = changes_by_waba.setdefault(cfg.waba_ids.get(pnid, cfg.waba_id), [])
            metadata = {"display_phone_number": self._display_number(cfg, pnid), "phone_number_id": pnid}
            for chunk in _chunks(statuses, cfg.webhook_statuses_per_change):
                value = {"messaging_product": "whatsapp", "metadata": metadata, "statuses": chunk}
                changes.append({"field": "messages", "value": value})
            for chunk in _chunks(replies, cfg.webhook_statuses_per_change):
                contacts = list({r["contact"]["wa_id"]: r["contact"] for r in chunk}.values())
                value = {
                    "messaging_product": "whatsapp",
                    "metadata": metadata,
                    "contacts": contacts,
                    "messages": [r["message"] for r in chunk],
                }
                changes.append({"field": "messages", "value": value})
        entries = [
            {"id": waba, "changes": chunk}
            for waba, changes in changes_by_waba.items()
            for chunk in _chunks(changes, cfg.webhook_changes_per_entry)
        ]
        return {"object": "whatsapp_business_account", "entry": entries}

    async def _post(self, kinds: list[str], body: bytes, target: _Target) -> None:
        """POST one webhook body, retrying with exponential backoff as Meta and Evolution do; count the outcome."""
        try:
            for attempt in range(self._cfg.webhook_max_retries + 1):
                cfg = self._cfg
                destination = target(cfg, body) if self._session is not None else None
                if destination is None:
                    break
                url, headers = destination
                try:
                    async with self._session.post(
                        url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=cfg.webhook_timeout_s)
                    ) as resp:
                        await resp.read()
                        if 200 <= resp.status < 300:
                            self._webhook_posts_ok += 1
                            self._webhook_events_posted.update(kinds)
                            return
                        reason = f"HTTP {resp.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    reason = repr(exc)
                self._webhook_posts_failed += 1
                logger.debug("webhook POST attempt %d failed: %s", attempt + 1, reason)
                if attempt < cfg.webhook_max_retries:
                    await asyncio.sleep(min(5.0, cfg.webhook_retry_backoff_ms / 1000.0 * 2**attempt))
            self._webhook_events_dropped += len(kinds)
            logger.warning(
                "dropping %d webhook events after %d failed POSTs", len(kinds), self._cfg.webhook_max_retries + 1
            )
        finally:
            self._pending -= len(kinds)
            self._inflight_posts -= 1
            self._slot_free.set()

    async def drain_webhooks(self, timeout: float = 10.0) -> bool:
        """Wait until every scheduled webhook was posted (or dropped). False if ``timeout`` elapsed first."""
        deadline = time.monotonic() + timeout
        while self._pending > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # ---- admin API ----------------------------------------------------------------------------------

    async def handle_messages(self, request: web.Request) -> web.Response:
        q = request.query
        return web.json_response(self.messages(q.get("biz"), q.get("to"), q.get("phone_number_id")))

    async def handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def handle_get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self._cfg.model_dump(mode="json"))

    async def handle_config(self, request: web.Request) -> web.Response:
        fields = await _json_object(request)
        try:
            cfg = self.configure(**fields)
        except ValidationError as exc:
            raise web.HTTPBadRequest(text=exc.json(), content_type="application/json") from exc
        return web.json_response(cfg.model_dump(mode="json"))

    async def handle_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})

    async def handle_tokens(self, request: web.Request) -> web.Response:
        data = await _json_object(request)
        pnid, token = data.get("phone_number_id"), data.get("token")
        if not isinstance(pnid, str) or not (token is None or isinstance(token, str)):
            raise web.HTTPBadRequest(
                text='{"error": "need phone_number_id (str) and token (str or null)"}', content_type="application/json"
            )
        self.set_token(pnid, token)
        return web.json_response({"phone_number_id": pnid, "token": token})

    async def handle_drain(self, request: web.Request) -> web.Response:
        try:
            timeout = float(request.query.get("timeout", "10"))
        except ValueError as exc:
            raise web.HTTPBadRequest(
                text='{"error": "timeout must be a number"}', content_type="application/json"
            ) from exc
        drained = await self.drain_webhooks(timeout)
        return web.json_response({"drained": drained, "pending": self._pending})


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json() if request.can_read_body else {}
    except ValueError as exc:
        raise web.HTTPBadRequest(text='{"error": "body is not JSON"}', content_type="application/json") from exc
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}', content_type="application/json")
    return data


SANDBOX_KEY = web.AppKey("sandbox", Sandbox)


def create_app(config: SandboxConfig | None = None, *, sandbox: Sandbox | None = None) -> web.Application:
    """The aiohttp app: Cloud API and Evolution send endpoints plus the ``/_sandbox/`` admin API."""
    sb = sandbox if sandbox is not None else Sandbox(config)
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[SANDBOX_KEY] = sb

    async def webhooks_ctx(_: web.Application) -> AsyncIterator[None]:
        await sb.start_webhooks()
        yield
        await sb.stop_webhooks()

    app.cleanup_ctx.append(webhooks_ctx)
    app.add_routes(
        [
            web.get("/_sandbox/messages", sb.handle_messages),
            web.get("/_sandbox/stats", sb.handle_stats),
            web.get("/_sandbox/config", sb.handle_get_config),
            web.post("/_sandbox/config", sb.handle_config),
            web.post("/_sandbox/reset", sb.handle_reset),
            web.post("/_sandbox/tokens", sb.handle_tokens),
            web.post("/_sandbox/webhooks/drain", sb.handle_drain),
            web.post(r"/{version:v\d+(?:\.\d+)?}/{phone_number_id}/messages", sb.handle_send),
            web.post("/message/sendText/{instance}", sb.handle_evolution_send),
            web.get(r"/{version:v\d+(?:\.\d+)?}/{phone_number_id}", sb.handle_phone_number),
            web.get("/instance/connectionState/{instance}", sb.handle_evolution_state),
        ]
    )
    return app


# --------------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------------


class SandboxServer:
    """The sandbox on a background thread with its own event loop; every method is thread-safe.

    Calls from other threads are executed on the server's loop (``run_coroutine_threadsafe``), so they
    see and change state exactly as the request handlers do, without locks.
    """

    def __init__(
        self, config: SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 0, **overrides: Any
    ) -> None:
        cfg = config or SandboxConfig()
        self.sandbox = Sandbox(cfg.updated(overrides) if overrides else cfg)
        self.host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        """Start listening; returns once the socket is bound (``.url`` is then valid)."""
        if self._thread is not None:
            return self
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="sandbox-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("sandbox server did not start in time")
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise self._start_error
        logger.info("sandbox listening on %s", self.url)
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(
            create_app(sandbox=self.sandbox), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self._port, backlog=2048)
            loop.run_until_complete(site.start())
            self._port = runner.addresses[0][1]
        except BaseException as exc:  # reported to start()
            self._start_error = exc
            loop.run_until_complete(runner.cleanup())
            loop.close()
            self._ready.set()
            return
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, cancel pending webhooks and join the thread."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- addresses ----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (the Graph API root to give the engine)."""
        return f"http://{self.host}:{self._port}"

    def messages_url(self, phone_number_id: str, version: str = "v24.0") -> str:
        return f"{self.url}/{version}/{phone_number_id}/messages"

    def evolution_send_url(self, instance: str) -> str:
        return f"{self.url}/message/sendText/{instance}"

    # ---- thread-safe access -------------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = self._loop
        if loop is None or (self._thread is not None and threading.get_ident() == self._thread.ident):
            return fn(*args, **kwargs)

        async def invoke() -> T:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(invoke(), loop).result(timeout=30)

    @property
    def config(self) -> SandboxConfig:
        return self._call(lambda: self.sandbox.config)

    def messages(
        self, biz: str | None = None, to: str | None = None, phone_number_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Accepted messages (copies), optionally filtered by biz_opaque_callback_data / to / sender."""
        return self._call(self.sandbox.messages, biz, to, phone_number_id)

    def stats(self) -> dict[str, Any]:
        return self._call(self.sandbox.stats)

    def configure(self, **fields: Any) -> SandboxConfig:
        return self._call(self.sandbox.configure, **fields)

    def set_token(self, phone_number_id: str, token: str | None) -> None:
        self._call(self.sandbox.set_token, phone_number_id, token)

    def reset(self) -> None:
        self._call(self.sandbox.reset)

    def drain_webhooks(self, timeout: float = 10.0) -> bool:
        """Block until all scheduled webhooks were posted (True) or ``timeout`` passed (False)."""
        loop = self._loop
        if loop is None:
            return self.sandbox.stats()["webhook_pending"] == 0
        future = asyncio.run_coroutine_threadsafe(self.sandbox.drain_webhooks(timeout), loop)
        return future.result(timeout + 5)


def serve(config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 8787) -> None:
    """Run the sandbox in the foreground until interrupted (``campaigns sandbox serve``)."""
    logger.info("sandbox serving on http://%s:%d", host, port)
    # The sandbox is also the meter of every rate test: a full garbage collection over its growing record
    # would pause its loop and make paced requests look bunched. Collect young objects rarely instead.
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(
            create_app(config), host=host, port=port, access_log=None, print=None, backlog=2048, shutdown_timeout=1.0
        )
