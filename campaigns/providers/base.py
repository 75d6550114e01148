"""The provider seam: one interface, one implementation per `whatsapp_numbers.provider`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp


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


def redact(text: str, secret: str) -> str:
    """Providers may quote the credential they refused ("Malformed access token EAAG…"), whole or cut off:
    error texts go to the database, the API and logs, so the secret never passes through. Only whole
    words are replaced, so a short test token does not eat into "token"."""
    if secret:
        text = re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", "[token]", text)
        if len(secret) > 12:  # a cut-off echo: its first 12 characters and whatever of it follows
            text = re.sub(rf"(?<![\w-]){re.escape(secret[:12])}[\w-]*", "[token]", text)
    return text


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
    accepted it); a connection that never opened is not.
    """
    data = json.dumps(body, ensure_ascii=False).encode()
    try:
        async with session.post(url, data=data, headers=headers) as resp:
            raw = await resp.read()
            status = resp.status
            retry_after = resp.headers.get("Retry-After")
    except TimeoutError:
        return SendResult(recipient_id, False, error_message="timeout waiting for the provider", ambiguous=True)
    except aiohttp.ClientConnectorError as exc:
        return SendResult(recipient_id, False, error_message=f"connection failed: {exc.os_error}")
    except aiohttp.ClientError as exc:
        return SendResult(recipient_id, False, error_message=f"transport error: {exc}", ambiguous=True)
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
