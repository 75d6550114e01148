"""Webhook bodies → what happened, as plain records. Every entry × change × status/message is read.

Meta (`whatsapp_business_account` notifications): `statuses[]` (sent/delivered/read/failed), `messages[]`
(inbound: replies carry `context.id`, the campaign message's wamid) and the `user_preferences` field
(marketing stop/resume). Evolution: `messages.update` (SERVER_ACK → sent, DELIVERY_ACK → delivered,
READ/PLAYED → read, ERROR → failed) and `messages.upsert` (inbound). Anything else is kept as an event
and ignored.

A body is trusted only as far as its signature goes (any tenant with its own Meta app or Evolution instance
can sign anything), so `parse_body` never raises: a body that is not JSON, is nested too deep for the
decoder, or has a field of the wrong type (a dict where a wamid belongs, a number as a message text) comes
back with `error` set, and the event is refused as a whole, naming the field. Strings are made storable:
NUL characters (Postgres text refuses them) are dropped, lone surrogates replaced, lengths bounded; ids
too long to be ids refuse the event, numbers past the columns' ranges are dropped or kept as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from campaigns.sending.providers.base import clean_text, graph_code, parse_callback_data
from campaigns.store.recipients import WEBHOOK_RANK
from campaigns.store.schema import INT4_MAX, INT8_MAX

RANK = WEBHOOK_RANK  # the statuses a webhook may say, by rank: campaigns.store.recipients' table
EVOLUTION_STATUS = {
    "SERVER_ACK": "sent",
    "DELIVERY_ACK": "delivered",
    "READ": "read",
    "PLAYED": "read",
    "ERROR": "failed",
    "SENT": "sent",
    "DELIVERED": "delivered",
    "FAILED": "failed",
}
MAX_ID = 256  # wamids, phone_number_ids, instances: Meta's are under 100 characters
MAX_TEXT = 4096  # message texts, names, error texts (a WhatsApp text is at most 4,096 characters)
MAX_PHONE_DIGITS = 15  # E.164


class Malformed(ValueError):
    """A field of the wrong type or size: the event is refused as a whole, with the field named.

    Raised with the field's own key; each enclosing level adds its part of the path on the way out, so that
    a well-formed event (nearly all of them) never pays for formatting paths."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason

    def within(self, prefix: str) -> Malformed:
        return Malformed(f"{prefix}.{self.path}" if self.path else prefix, self.reason)


def _text(value: Any, key: str, limit: int = MAX_TEXT) -> str | None:
    """A string field: None when absent, cleaned when a string, the event refused otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        return clean_text(value, limit)
    raise Malformed(key, f"expected a string, got {type(value).__name__}")


def _id(value: Any, key: str, digits_ok: bool = False) -> str | None:
    """An identifier (wamid, phone_number_id, instance): a string (or, if `digits_ok`, a non-negative integer)
    of at most MAX_ID characters; an empty one is no id. Cutting a longer one could make it another's id."""
    if digits_ok and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**MAX_ID:
        value = str(value)
    text = _text(value, key, MAX_ID + 1)
    if text is not None and len(text) > MAX_ID:
        raise Malformed(key, f"longer than {MAX_ID} characters")
    return text or None


def _dict(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise Malformed(key, f"expected an object, got {type(value).__name__}")


def _list(value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise Malformed(key, f"expected a list, got {type(value).__name__}")


def _word(value: Any) -> str:
    """A status or choice keyword; anything that is not a string is no keyword."""
    return value if isinstance(value, str) else ""


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
    if isinstance(value, str) and len(value) > 20:  # no epoch second has more digits; int() of 5,000 would fail
        value = None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return default or datetime.now(UTC)


def _phone(wa_id: Any, key: str) -> str | None:
    """E.164 from Meta's wa_id or a JID's user part; None when it cannot be a phone (no digits, over 15)."""
    if isinstance(wa_id, int) and not isinstance(wa_id, bool):
        wa_id = str(wa_id)
    text = _text(wa_id, key, 65) or ""
    if len(text) > 64:
        return None
    digits = text if text.isdigit() and text.isascii() else "".join(ch for ch in text if ch in "0123456789")
    return "+" + digits if digits and len(digits) <= MAX_PHONE_DIGITS else None


def _each(items: list[Any], key: str, read: Any) -> list[Any]:
    """`read(item)` for each item of the list `items` (`key` in the path of a Malformed), Nones left out."""
    out = []
    for i, item in enumerate(items):
        try:
            got = read(item)
        except Malformed as exc:
            raise exc.within(f"{key}[{i}]") from None
        if got is not None:
            out.append(got)
    return out


def _error(status: dict[str, Any]) -> tuple[int | None, str | None]:
    errors = _list(status.get("errors"), "errors")
    if not errors or not isinstance(errors[0], dict):
        return None, None
    err = errors[0]
    try:
        details = _text(_dict(err.get("error_data"), "error_data").get("details"), "error_data.details")
        title = _text(err.get("title"), "title") or _text(err.get("message"), "message")
    except Malformed as exc:
        raise exc.within("errors[0]") from None
    text = " - ".join(x for x in (title, details) if x)
    number = graph_code(err.get("code"))
    if number is not None and number > INT4_MAX:  # not a Graph code; keep it in the text only
        text, number = f"{text} (code {number})", None
    return number, clean_text(text, MAX_TEXT) or None


def _meta_text(msg: dict[str, Any]) -> str | None:
    """What the user typed or tapped: text, a template's quick-reply button, an interactive reply."""
    kind = msg.get("type")
    if kind == "text":
        return _text(_dict(msg.get("text"), "text").get("body"), "text.body")
    if kind == "button":
        return _text(_dict(msg.get("button"), "button").get("text"), "button.text")
    if kind == "interactive":
        inter = _dict(msg.get("interactive"), "interactive")
        reply = _dict(inter.get("button_reply") or inter.get("list_reply"), "interactive.reply")
        return _text(reply.get("title"), "interactive.reply.title")
    return None


def _meta_status(event_id: int, st: Any) -> StatusUpdate | None:
    st = _dict(st, "")
    status = _word(st.get("status")).lower()
    if status not in RANK:
        return None
    code, message = _error(st) if status == "failed" else (None, None)
    rid = parse_callback_data(_text(st.get("biz_opaque_callback_data"), "biz_opaque_callback_data"))
    if rid is not None and not 0 < rid <= INT8_MAX:  # not one of our recipient ids
        rid = None
    return StatusUpdate(event_id, _id(st.get("id"), "id"), rid, status, _ts(st.get("timestamp")), code, message)


def _meta_messages(event_id: int, value: dict[str, Any], channel: str | None) -> list[Inbound]:
    def contact(c: Any) -> tuple[str, str | None]:
        c = _dict(c, "")
        name = _text(_dict(c.get("profile"), "profile").get("name"), "profile.name", 256)
        return _phone(c.get("wa_id"), "wa_id") or "", name

    names = dict(_each(_list(value.get("contacts"), "contacts"), "contacts", contact))

    def message(msg: Any) -> Inbound | None:
        msg = _dict(msg, "")
        phone = _phone(msg.get("from"), "from")
        if phone is None:
            return None
        return Inbound(
            event_id,
            channel,
            phone,
            _ts(msg.get("timestamp")),
            _meta_text(msg),
            _id(_dict(msg.get("context"), "context").get("id"), "context.id"),
            names.get(phone),
        )

    return _each(_list(value.get("messages"), "messages"), "messages", message)


def _meta_preference(event_id: int, pref: Any, channel: str | None) -> Preference | None:
    pref = _dict(pref, "")
    phone, choice = _phone(pref.get("wa_id"), "wa_id"), _word(pref.get("value")).lower()
    if phone and choice in ("stop", "resume"):
        return Preference(event_id, channel, phone, _ts(pref.get("timestamp")), choice)
    return None


def _meta_change(out: ParsedEvent, change: Any) -> None:
    value = _dict(_dict(change, "").get("value"), "value")
    try:
        channel = _id(
            _dict(value.get("metadata"), "metadata").get("phone_number_id"), "metadata.phone_number_id", digits_ok=True
        )
        out.statuses += _each(
            _list(value.get("statuses"), "statuses"), "statuses", lambda st: _meta_status(out.event_id, st)
        )
        out.inbound += _meta_messages(out.event_id, value, channel)
        out.preferences += _each(
            _list(value.get("user_preferences"), "user_preferences"),
            "user_preferences",
            lambda pref: _meta_preference(out.event_id, pref, channel),
        )
    except Malformed as exc:
        raise exc.within("value") from None


def parse_meta(event_id: int, payload: Any) -> ParsedEvent:
    """Raises Malformed for a field of the wrong type (see `parse_body`, which never raises)."""
    out = ParsedEvent(event_id)
    if not isinstance(payload, dict) or not isinstance(payload.get("entry"), list):
        out.error = "not a WhatsApp Business Account notification (no entry list)"
        return out

    def entry(e: Any) -> None:
        _each(_list(_dict(e, "").get("changes"), "changes"), "changes", lambda change: _meta_change(out, change))

    _each(payload["entry"], "entry", entry)
    return out


def _evolution_text(message: dict[str, Any]) -> tuple[str | None, str | None]:
    """(text, quoted message id) of a Baileys message."""
    if message.get("conversation"):
        return _text(message["conversation"], "conversation"), None
    extended = _dict(message.get("extendedTextMessage"), "extendedTextMessage")
    quoted = _dict(extended.get("contextInfo"), "extendedTextMessage.contextInfo").get("stanzaId")
    return (
        _text(extended.get("text"), "extendedTextMessage.text"),
        _id(quoted, "extendedTextMessage.contextInfo.stanzaId"),
    )


def _evolution_inbound(event_id: int, item: dict[str, Any], channel: str | None, at: datetime) -> Inbound | None:
    key = _dict(item.get("key"), "key")
    jid = _word(key.get("remoteJid"))
    if key.get("fromMe") or not jid.endswith("@s.whatsapp.net"):
        return None  # our own sends, groups and broadcasts are not a contact writing to us
    phone = _phone(jid.split("@")[0], "key.remoteJid")
    if phone is None:
        return None
    text, quoted = _evolution_text(_dict(item.get("message"), "message"))
    return Inbound(
        event_id,
        channel,
        phone,
        _ts(item.get("messageTimestamp"), at),
        text,
        quoted,
        _text(item.get("pushName"), "pushName", 256),
    )


def parse_evolution(event_id: int, payload: Any, received_at: datetime | None = None) -> ParsedEvent:
    """Raises Malformed for a field of the wrong type (see `parse_body`, which never raises)."""
    out = ParsedEvent(event_id)
    if not isinstance(payload, dict):
        out.error = "not an Evolution event"
        return out
    at = received_at or datetime.now(UTC)
    channel = _id(payload.get("instance"), "instance")
    data = payload.get("data")
    items = [i for i in (data if isinstance(data, list) else [data]) if isinstance(i, dict)]
    event = _word(payload.get("event")).lower().replace("_", ".")
    if event == "messages.update":

        def update(item: dict[str, Any]) -> StatusUpdate | None:
            status = EVOLUTION_STATUS.get(_word(item.get("status")).upper())
            return StatusUpdate(event_id, _id(item.get("keyId"), "keyId"), None, status, at) if status else None

        out.statuses += _each(items, "data", update)
    elif event == "messages.upsert":
        out.inbound += _each(items, "data", lambda item: _evolution_inbound(event_id, item, channel, at))
    return out


def parse_body(event_id: int, provider: str, body: bytes, received_at: datetime | None = None) -> ParsedEvent:
    """A stored webhook body → what happened; never raises. `error` says why an event is refused."""
    try:
        payload = json.loads(body)
    except RecursionError:  # the C decoder's own depth guard: ~1,000 levels, where Meta's use 8
        return ParsedEvent(event_id, error="body nested too deep to be a webhook")
    except ValueError:
        return ParsedEvent(event_id, error="body is not valid JSON")
    try:
        if provider == "evolution":
            return parse_evolution(event_id, payload, received_at)
        return parse_meta(event_id, payload)
    except Malformed as exc:
        return ParsedEvent(event_id, error=f"malformed event: {exc}")
    except Exception as exc:  # nothing a signed body holds may stop ingestion for the rest
        return ParsedEvent(event_id, error=clean_text(f"malformed event: {type(exc).__name__}: {exc}", 500))
