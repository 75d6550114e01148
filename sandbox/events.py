"""The webhook bodies the sandbox posts, in Meta's shape and in Evolution's.

One event per status (sent, delivered, read, failed) or reply of an accepted message. Meta's events of a
dispatcher tick share one ``whatsapp_business_account`` envelope, split over several entries and changes so
that a receiver meets every level (:func:`meta_payload`); Evolution posts each event alone, as a
``messages.update`` or ``messages.upsert`` (:func:`evolution_envelope`). When and where they are posted is
:mod:`sandbox.webhooks`' business.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from sandbox.config import FailureRule, SandboxConfig
from sandbox.wire import MessageIds, instance_id, jid

T = TypeVar("T")

# Shared by every sent/delivered event (serialised, never changed): built once, not per event.
_PRICING = {
    category: {"billable": True, "pricing_model": "PMP", "type": "regular", "category": category}
    for category in ("marketing", "service")
}

#: Our lifecycle names (the record's ``final_status``) as Baileys' ``messages.update`` statuses.
_EVOLUTION_STATUS = {"sent": "SERVER_ACK", "delivered": "DELIVERY_ACK", "read": "READ", "failed": "ERROR"}


def display_number(cfg: SandboxConfig, phone_number_id: str) -> str:
    """The sender's number as webhooks show it: configured, or ``1555`` and the id's last seven digits."""
    if phone_number_id in cfg.display_phone_numbers:
        return cfg.display_phone_numbers[phone_number_id]
    digits = "".join(ch for ch in phone_number_id if ch.isdigit())
    return "1555" + digits[-7:].rjust(7, "0")


def meta_event(
    cfg: SandboxConfig, record: dict[str, Any], kind: str, ts: float, rule: FailureRule | None, ids: MessageIds
) -> dict[str, Any]:
    """One Cloud API status, or for ``reply`` an inbound message with its contact (batched later)."""
    wa_id = record["wa_id"]
    if kind == "reply":
        return {
            "contact": {"profile": {"name": cfg.reply_profile_name}, "wa_id": wa_id},
            "message": {
                "context": {"from": display_number(cfg, record["phone_number_id"]), "id": record["wamid"]},
                "from": wa_id,
                "id": ids.new("meta_cloud", inbound=True),
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


def evolution_event(
    cfg: SandboxConfig, record: dict[str, Any], kind: str, ts: float, rule: FailureRule | None, ids: MessageIds
) -> dict[str, Any]:
    """``messages.update`` (Baileys status) or, for ``reply``, ``messages.upsert`` quoting our message."""
    instance, remote_jid = record["instance"], jid(record["wa_id"])
    if kind == "reply":
        data: dict[str, Any] = {
            "key": {"remoteJid": remote_jid, "fromMe": False, "id": ids.new("evolution", inbound=True)},
            "pushName": cfg.reply_profile_name,
            "message": {"extendedTextMessage": {"text": cfg.reply_text, "contextInfo": {"stanzaId": record["wamid"]}}},
            "messageType": "extendedTextMessage",
            "messageTimestamp": int(ts),
            "instanceId": instance_id(instance),
        }
        return {"event": "messages.upsert", "instance": instance, "data": data}
    data = {
        "keyId": record["wamid"],
        "remoteJid": remote_jid,
        "fromMe": True,
        "status": _EVOLUTION_STATUS[kind],
        "instanceId": instance_id(instance),
        "messageId": "sbx" + record["wamid"].lower(),  # Evolution's database id of the message
    }
    return {"event": "messages.update", "instance": instance, "data": data}


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def meta_payload(cfg: SandboxConfig, batch: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    """Meta's envelope of ``(phone_number_id, kind, event)`` triples, split over changes and entries (every level)."""
    by_phone: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for pnid, kind, item in batch:
        statuses, replies = by_phone.setdefault(pnid, ([], []))
        (replies if kind == "reply" else statuses).append(item)
    changes_by_waba: dict[str, list[dict[str, Any]]] = {}
    for pnid, (statuses, replies) in by_phone.items():
        changes = changes_by_waba.setdefault(cfg.waba_ids.get(pnid, cfg.waba_id), [])
        metadata = {"display_phone_number": display_number(cfg, pnid), "phone_number_id": pnid}
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


def evolution_url(cfg: SandboxConfig, instance: str) -> str | None:
    """Where an instance's events go: ``{evolution_webhook_url}/{instance}`` (None without a receiver)."""
    return f"{cfg.evolution_webhook_url.rstrip('/')}/{instance}" if cfg.evolution_webhook_url else None


def evolution_envelope(cfg: SandboxConfig, instance: str, item: dict[str, Any], server_url: str) -> dict[str, Any]:
    """One Evolution event as its webhook posts it: the event and where, when, by and to whom it was sent."""
    return {
        **item,
        "destination": evolution_url(cfg, instance),
        "date_time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "sender": jid(display_number(cfg, instance)),
        "server_url": server_url,
        "apikey": cfg.evolution_keys.get(instance),
    }
