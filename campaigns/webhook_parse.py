"""Webhook bodies → what happened, as plain records. Every entry × change × status/message is read.

Meta (`whatsapp_business_account` notifications): `statuses[]` (sent/delivered/read/failed), `messages[]`
(inbound: replies carry `context.id`, the campaign message's wamid) and the `user_preferences` field
(marketing stop/resume). Evolution: `messages.update` (SERVER_ACK → sent, DELIVERY_ACK → delivered,
READ/PLAYED → read, ERROR → failed) and `messages.upsert` (inbound). Anything else is kept as an event
and ignored. Parsing never raises on odd shapes; the caller turns an exception into `unparseable`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from campaigns.providers.base import parse_callback_data

RANK = {"sent": 2, "delivered": 3, "read": 4, "played": 4, "failed": 5}
EVOLUTION_STATUS = {"SERVER_ACK": "sent", "DELIVERY_ACK": "delivered", "READ": "read", "PLAYED": "read",
                    "ERROR": "failed", "SENT": "sent", "DELIVERED": "delivered", "FAILED": "failed"}
INT4_MAX = 2**31 - 1


@dataclass
class StatusUpdate:
    event_id: int
    wamid: str | None
    recipient_id: int | None
    status: str
    at: datetime
    code: int | None = None
    message: str | None = None


@dataclass
class Inbound:
    """A message from a contact to one of our numbers (`channel` is Meta's phone_number_id or the instance)."""

    event_id: int
    channel: str | None
    phone: str  # E.164
    at: datetime
    text: str | None = None
    context_wamid: str | None = None
    name: str | None = None


@dataclass
class Preference:
    """Meta's `user_preferences`: the user stopped or resumed marketing messages from this business."""

    event_id: int
    channel: str | None
    phone: str
    at: datetime
    value: str  # stop | resume


@dataclass
class ParsedEvent:
    event_id: int
    statuses: list[StatusUpdate] = field(default_factory=list)
    inbound: list[Inbound] = field(default_factory=list)
    preferences: list[Preference] = field(default_factory=list)
    error: str | None = None


def _ts(value: Any, default: datetime | None = None) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return default or datetime.now(UTC)


def _phone(wa_id: Any) -> str | None:
    digits = "".join(ch for ch in str(wa_id or "") if ch.isdigit())
    return "+" + digits if digits else None


def _error(status: dict[str, Any]) -> tuple[int | None, str | None]:
    errors = status.get("errors") or []
    if not errors or not isinstance(errors[0], dict):
        return None, None
    err = errors[0]
    details = (err.get("error_data") or {}).get("details") if isinstance(err.get("error_data"), dict) else None
    text = " - ".join(str(x) for x in (err.get("title") or err.get("message"), details) if x)
    code = err.get("code")
    number = int(code) if str(code).isdigit() else None
    if number is not None and number > INT4_MAX:  # not a Graph code; keep it in the text only
        text, number = f"{text} (code {number})", None
    return number, text or None


def _meta_text(msg: dict[str, Any]) -> str | None:
    """What the user typed or tapped: text, a template's quick-reply button, an interactive reply."""
    kind = msg.get("type")
    if kind == "text":
        return (msg.get("text") or {}).get("body")
    if kind == "button":
        return (msg.get("button") or {}).get("text")
    if kind == "interactive":
        inter = msg.get("interactive") or {}
        return (inter.get("button_reply") or inter.get("list_reply") or {}).get("title")
    return None


def parse_meta(event_id: int, payload: Any) -> ParsedEvent:
    out = ParsedEvent(event_id)
    if not isinstance(payload, dict) or not isinstance(payload.get("entry"), list):
        out.error = "not a WhatsApp Business Account notification (no entry list)"
        return out
    for entry in payload["entry"]:
        for change in (entry or {}).get("changes") or []:
            value = (change or {}).get("value") or {}
            channel = (value.get("metadata") or {}).get("phone_number_id")
            for st in value.get("statuses") or []:
                status = str(st.get("status", "")).lower()
                if status not in RANK:
                    continue
                code, message = _error(st) if status == "failed" else (None, None)
                out.statuses.append(StatusUpdate(
                    event_id, st.get("id"), parse_callback_data(st.get("biz_opaque_callback_data")), status,
                    _ts(st.get("timestamp")), code, message,
                ))
            names = {c.get("wa_id"): (c.get("profile") or {}).get("name") for c in value.get("contacts") or []
                     if isinstance(c, dict)}
            for msg in value.get("messages") or []:
                phone = _phone(msg.get("from"))
                if phone is None:
                    continue
                out.inbound.append(Inbound(
                    event_id, channel, phone, _ts(msg.get("timestamp")), _meta_text(msg),
                    (msg.get("context") or {}).get("id"), names.get(msg.get("from")),
                ))
            for pref in value.get("user_preferences") or []:
                phone, choice = _phone(pref.get("wa_id")), str(pref.get("value", "")).lower()
                if phone and choice in ("stop", "resume"):
                    out.preferences.append(Preference(event_id, channel, phone, _ts(pref.get("timestamp")), choice))
    return out


def _evolution_text(message: dict[str, Any]) -> tuple[str | None, str | None]:
    """(text, quoted message id) of a Baileys message."""
    if message.get("conversation"):
        return message["conversation"], None
    extended = message.get("extendedTextMessage") or {}
    return extended.get("text"), (extended.get("contextInfo") or {}).get("stanzaId")


def parse_evolution(event_id: int, payload: Any, received_at: datetime | None = None) -> ParsedEvent:
    out = ParsedEvent(event_id)
    if not isinstance(payload, dict):
        out.error = "not an Evolution event"
        return out
    at = received_at or datetime.now(UTC)
    channel = payload.get("instance")
    data = payload.get("data")
    items = [i for i in (data if isinstance(data, list) else [data]) if isinstance(i, dict)]
    event = str(payload.get("event", "")).lower().replace("_", ".")
    if event == "messages.update":
        for item in items:
            status = EVOLUTION_STATUS.get(str(item.get("status", "")).upper())
            if status:
                out.statuses.append(StatusUpdate(event_id, item.get("keyId"), None, status, at))
    elif event == "messages.upsert":
        for item in items:
            key = item.get("key") or {}
            jid = str(key.get("remoteJid", ""))
            if key.get("fromMe") or not jid.endswith("@s.whatsapp.net"):
                continue  # our own sends, groups and broadcasts are not a contact writing to us
            phone = _phone(jid.split("@")[0])
            if phone is None:
                continue
            text, quoted = _evolution_text(item.get("message") or {})
            out.inbound.append(Inbound(event_id, channel, phone, _ts(item.get("messageTimestamp"), at), text,
                                       quoted, item.get("pushName")))
    return out
