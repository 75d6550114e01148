"""The provider seam: one interface, one implementation per `whatsapp_numbers.provider`."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import aiohttp

MAX_ERROR_CODE = 2**31 - 1  # a code is recorded as a 32-bit integer; Graph's are far below (providers see no SQL)


@dataclass(frozen=True)
class Credentials:
    """What a provider needs to talk for one number. Built from the number's Prefect block."""

    phone_number_id: str  # Meta's phone number id, or Evolution's instance name
    token: str = field(repr=False)
    api_base: str
    graph_version: str = "v24.0"
    app_secret: str = field(default="", repr=False)
    verify_token: str = field(default="", repr=False)


@dataclass(frozen=True)
class OutboundMessage:
    recipient_id: int
    to: str  # E.164, with the leading +
    kind: str  # "text" | "template"
    text: str | None = None
    template: dict[str, Any] | None = None

    @property
    def callback_data(self) -> str:
        """Our recipient id, echoed by Meta in every status webhook (biz_opaque_callback_data)."""
        return f"pytake:{self.recipient_id}"


@dataclass(frozen=True)
class SendResult:
    recipient_id: int
    ok: bool
    message_id: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    http_status: int | None = None
    ambiguous: bool = False  # the provider may have accepted it: reconcile before any resend
    retry_after: float | None = None
    cap_until: float | None = None  # not attempted: a cap of the number is full until then (Unix seconds)
    cap_pause: bool = False  # ...and it is one that pauses the campaign (Meta hour/day) rather than waits
    unavailable: bool = False  # the provider could not take it (5xx, a Graph "service unavailable", unreachable)
    outage: bool = False  # ...and the provider was judged down when the batch ended (sending.deliver)


def redact(text: str, secret: str) -> str:
    """Providers may quote the credential they refused ("Malformed access token EAAG…"), whole or cut off:
    error texts go to the database, the API and logs, so the secret never passes through. Only whole
    words are replaced, so a short test token does not eat into "token"."""
    if secret:
        text = re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", "[token]", text)
        if len(secret) > 12:  # a cut-off echo: its first 12 characters and whatever of it follows
            text = re.sub(rf"(?<![\w-]){re.escape(secret[:12])}[\w-]*", "[token]", text)
    return text


MAX_MESSAGE_ID = 255  # Meta's wamids are ~60 characters, Baileys' ids ~32
MAX_ERROR_TEXT = 1000
MAX_RETRY_AFTER = 86_400.0


def clean_text(value: Any, limit: int | None = None) -> str:
    """`value` as text Postgres can store: NULs dropped (text and JSONB refuse them), lone surrogates replaced
    (not UTF-8), cut to `limit`. The usual ASCII text comes back as it is, without a copy."""
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text if limit is None else text[:limit]


def graph_code(value: Any) -> int | None:
    """A Graph error code as an int, when it is one: an int or a string of at most 10 ASCII digits (not a
    bool, not "²", not thousands of digits, which int() refuses)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value < 10**10 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        return int(value)
    return None


def _message_id(value: Any) -> str | None:
    """A message id we can store and match webhooks against; anything else is dropped (the send stands)."""
    ok = isinstance(value, str) and 0 < len(value) <= MAX_MESSAGE_ID and value.isprintable() and value.strip()
    return value if ok else None  # isprintable: no NUL, no control character, no lone surrogate


def clean_result(result: SendResult) -> SendResult:
    """A provider's answer as the database can record it, whatever the peer sent (hostile or broken).

    Every provider's result passes here before it is recorded, so one odd answer can never make the batch's
    write fail: a code outside int4 (or not an integer) moves into the text, NULs and lone surrogates are
    stripped from the text, a message id that is not a plain string is dropped (the send still counts as
    sent; Meta's status webhooks still find the row by its callback data), a Retry-After that is not a
    finite number of seconds up to a day is ignored.
    """
    code = graph_code(result.error_code)
    message = None if result.error_message is None else clean_text(result.error_message)
    if result.error_code is not None and (code is None or not 0 <= code <= MAX_ERROR_CODE):
        shown = clean_text(result.error_code, 40)
        message, code = (f"{message} (code {shown})" if message else f"code {shown}"), None
    retry_after = result.retry_after
    if not isinstance(retry_after, int | float) or not (
        math.isfinite(retry_after) and 0 <= retry_after <= MAX_RETRY_AFTER
    ):
        retry_after = None
    return replace(
        result,
        message_id=_message_id(result.message_id),
        error_code=code,
        error_message=message[:MAX_ERROR_TEXT] if message is not None else None,
        retry_after=retry_after,
    )


def parse_callback_data(value: str | None) -> int | None:
    if value and value.startswith("pytake:"):
        try:
            return int(value.removeprefix("pytake:"))
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class HttpReply:
    status: int
    payload: Any  # parsed JSON, or the body as text when it is not JSON
    retry_after: float | None


async def post_json(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str], recipient_id: int
) -> HttpReply | SendResult:
    """POST a JSON body; a transport failure comes back as a failed SendResult with its class.

    A timeout or a broken connection after the request left is ambiguous (the provider may have
    accepted it); a connection that never opened is not. Each of them says the provider is unavailable.
    """
    data = json.dumps(body, ensure_ascii=False).encode()
    try:
        async with session.post(url, data=data, headers=headers) as resp:
            raw = await resp.read()
            status = resp.status
            retry_after = resp.headers.get("Retry-After")
    except TimeoutError:
        return SendResult(
            recipient_id, False, error_message="timeout waiting for the provider", ambiguous=True, unavailable=True
        )
    except aiohttp.ClientConnectorError as exc:
        return SendResult(recipient_id, False, error_message=f"connection failed: {exc.os_error}", unavailable=True)
    except aiohttp.ClientError as exc:
        return SendResult(
            recipient_id, False, error_message=f"transport error: {exc}", ambiguous=True, unavailable=True
        )
    try:
        payload: Any = json.loads(raw)
    except ValueError:
        payload = raw.decode(errors="replace")
    try:
        seconds = float(retry_after) if retry_after is not None else None
    except ValueError:
        seconds = None
    return HttpReply(status, payload, seconds)


class Provider(Protocol):
    name: str

    async def send(self, session: aiohttp.ClientSession, msg: OutboundMessage) -> SendResult: ...

    def supports(self, kind: str) -> bool: ...
