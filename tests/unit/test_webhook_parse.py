"""Webhook bodies as they arrive, and what ingestion learns from them (campaigns/webhooks/parse.py): statuses with
their errors, replies to a campaign message, marketing opt-outs, Evolution's shapes, and bodies refused whole
with the field named. The order of statuses (sent < delivered < read) is the transition table's: see
campaigns/store and its tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from campaigns.webhooks.parse import parse_body
from tests.helpers import meta_change

PNID = "1122334455667"
AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
STAMP = str(int(AT.timestamp()))


def meta(**value: Any):
    return parse_body(1, "meta_cloud", json.dumps(meta_change(PNID, **value)).encode())


def evolution(event: str, data: Any, instance: str = "loja"):
    body = {"event": event, "instance": instance, "data": data}
    return parse_body(1, "evolution", json.dumps(body).encode(), received_at=AT)


def status(word: Any = "delivered", **fields: Any) -> dict[str, Any]:
    return {"id": "wamid.A", "status": word, "timestamp": STAMP, "recipient_id": "5511900000001", **fields}


@pytest.mark.parametrize(
    ("word", "said"),
    [
        ("sent", "sent"),
        ("delivered", "delivered"),
        ("read", "read"),
        ("failed", "failed"),
        ("DELIVERED", "delivered"),  # the word's case does not matter
        ("deleted", None),
        ("warning", None),
        ("", None),
        (5, None),
        (None, None),  # no status a row records
    ],
)
def test_a_meta_status_says_what_happened_to_the_message(word, said):
    parsed = meta(statuses=[status(word)])
    assert parsed.error is None
    assert [(u.wamid, u.status, u.at) for u in parsed.statuses] == ([("wamid.A", said, AT)] if said else [])


@pytest.mark.parametrize(
    ("callback", "recipient_id"),
    [
        ("pytake:42", 42),  # our recipient id: the row is found even if its wamid was never written
        ("pytake:0", None),
        ("pytake:-1", None),
        (f"pytake:{2**63}", None),  # not one of our row ids
        ("pytake:abc", None),
        ("someone-else:42", None),
        (None, None),
    ],
)
def test_a_status_finds_its_row_by_our_callback_data(callback, recipient_id):
    [update] = meta(statuses=[status(biz_opaque_callback_data=callback)]).statuses
    assert update.recipient_id == recipient_id


@pytest.mark.parametrize(
    ("errors", "code", "message"),
    [
        (
            [{"code": 131026, "title": "Message undeliverable", "error_data": {"details": "not on WhatsApp"}}],
            131026,
            "Message undeliverable - not on WhatsApp",
        ),
        ([{"code": "131050", "message": "User stopped marketing"}], 131050, "User stopped marketing"),
        ([{"code": 2**31, "title": "odd"}], None, "odd (code 2147483648)"),  # past int4: kept in the text only
        ([{"code": "1e5", "title": "odd"}], None, "odd"),
        ([{"title": "nul\x00 inside"}], None, "nul inside"),
        ([], None, None),
        (None, None, None),
        (["not an object"], None, None),
    ],
)
def test_a_failed_status_carries_the_providers_code_and_reason(errors, code, message):
    [update] = meta(statuses=[status("failed", errors=errors)]).statuses
    assert (update.code, update.message) == (code, message)


def test_errors_on_a_status_that_is_not_a_failure_are_ignored():
    [update] = meta(statuses=[status("delivered", errors=[{"code": 131026, "title": "x"}])]).statuses
    assert (update.code, update.message) == (None, None)


def test_every_entry_change_and_status_is_read_not_only_the_first():
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "changes": [
                    {"value": {"statuses": [status(id="w1"), status(id="w2")]}},
                    {"value": {"statuses": [status(id="w3")]}},
                ]
            },
            {"changes": [{"value": {"statuses": [status(id="w4")]}}]},
        ],
    }
    parsed = parse_body(9, "meta_cloud", json.dumps(body).encode())
    assert [(u.event_id, u.wamid) for u in parsed.statuses] == [(9, "w1"), (9, "w2"), (9, "w3"), (9, "w4")]


@pytest.mark.parametrize(
    ("message", "text"),
    [
        ({"type": "text", "text": {"body": "PARAR"}}, "PARAR"),
        ({"type": "button", "button": {"payload": "stop_promo", "text": "Parar promoções"}}, "Parar promoções"),
        (
            {
                "type": "interactive",
                "interactive": {"type": "button_reply", "button_reply": {"id": "1", "title": "Sim"}},
            },
            "Sim",
        ),
        (
            {"type": "interactive", "interactive": {"type": "list_reply", "list_reply": {"id": "2", "title": "Não"}}},
            "Não",
        ),
        ({"type": "image", "image": {"id": "m1"}}, None),  # a message without text still opens the 24 h window
    ],
)
def test_an_inbound_message_is_read_as_what_the_user_typed_or_tapped(message, text):
    msg = {"from": "5511900000001", "id": "wamid.IN", "timestamp": STAMP, **message}
    [inbound] = meta(messages=[msg]).inbound
    assert (inbound.channel, inbound.phone, inbound.at, inbound.text) == (PNID, "+5511900000001", AT, text)


def test_a_reply_names_the_campaign_message_it_answers_and_the_contacts_profile_name():
    msg = {
        "from": "5511900000001",
        "id": "wamid.IN",
        "timestamp": STAMP,
        "type": "text",
        "text": {"body": "oi"},
        "context": {"from": PNID, "id": "wamid.CAMPAIGN"},
    }
    contacts = [{"profile": {"name": "Ana"}, "wa_id": "5511900000001"}, {"wa_id": "5511900000002"}]
    [inbound] = meta(messages=[msg], contacts=contacts).inbound
    assert (inbound.context_wamid, inbound.name) == ("wamid.CAMPAIGN", "Ana")


@pytest.mark.parametrize(
    ("sender", "phone"),
    [
        ("5511900000001", "+5511900000001"),
        (5511900000001, "+5511900000001"),
        ("+55 11 90000-0001", "+5511900000001"),
        ("abc", None),
        ("1" * 16, None),  # no phone: no digits, or more than E.164's 15
    ],
)
def test_an_inbound_message_is_kept_only_from_a_phone(sender, phone):
    msg = {"from": sender, "id": "wamid.IN", "timestamp": STAMP, "type": "text", "text": {"body": "oi"}}
    assert [m.phone for m in meta(messages=[msg]).inbound] == ([phone] if phone else [])


@pytest.mark.parametrize(
    ("value", "kept"), [("stop", "stop"), ("resume", "resume"), ("STOP", "stop"), ("signup", None), (1, None)]
)
def test_a_marketing_stop_or_resume_is_read_from_user_preferences(value, kept):
    pref = {"wa_id": "5511900000001", "category": "marketing_messages", "value": value, "timestamp": int(STAMP)}
    parsed = meta(field="user_preferences", user_preferences=[pref])
    assert [(p.channel, p.phone, p.value, p.at) for p in parsed.preferences] == (
        [(PNID, "+5511900000001", kept, AT)] if kept else []
    )


# -- Evolution ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "said"),
    [
        ("SERVER_ACK", "sent"),
        ("DELIVERY_ACK", "delivered"),
        ("READ", "read"),
        ("PLAYED", "read"),
        ("ERROR", "failed"),
        ("SENT", "sent"),
        ("DELIVERED", "delivered"),
        ("FAILED", "failed"),
        ("delivery_ack", "delivered"),
        ("PENDING", None),
        (3, None),
    ],
)
def test_an_evolution_update_says_what_happened_to_the_message(word, said):
    parsed = evolution("messages.update", {"keyId": "BAE5A", "status": word})
    assert [(u.wamid, u.status, u.at) for u in parsed.statuses] == ([("BAE5A", said, AT)] if said else [])


@pytest.mark.parametrize("event", ["messages.update", "MESSAGES_UPDATE", "messages_update"])
def test_evolutions_event_names_and_data_as_a_list_or_one_object_are_read_alike(event):
    one = evolution(event, {"keyId": "a", "status": "READ"})
    many = evolution(event, [{"keyId": "a", "status": "READ"}, {"keyId": "b", "status": "SERVER_ACK"}])
    assert [u.wamid for u in one.statuses] == ["a"] and [u.wamid for u in many.statuses] == ["a", "b"]


def upsert(key: dict[str, Any], message: dict[str, Any], **item: Any):
    return evolution("messages.upsert", {"key": key, "message": message, "pushName": "Ana", **item}).inbound


def test_an_evolution_reply_quotes_the_campaign_message_and_opens_the_window():
    key = {"remoteJid": "5511900000001@s.whatsapp.net", "fromMe": False, "id": "IN1"}
    [reply] = upsert(
        key,
        {"extendedTextMessage": {"text": "SAIR", "contextInfo": {"stanzaId": "BAE5A"}}},
        messageTimestamp=int(STAMP),
    )
    assert (reply.channel, reply.phone, reply.text, reply.context_wamid, reply.name, reply.at) == (
        "loja",
        "+5511900000001",
        "SAIR",
        "BAE5A",
        "Ana",
        AT,
    )
    [plain] = upsert(key, {"conversation": "oi"})
    assert (plain.text, plain.context_wamid, plain.at) == ("oi", None, AT)  # no timestamp: when it arrived


@pytest.mark.parametrize(
    "key",
    [
        {"remoteJid": "5511900000001@s.whatsapp.net", "fromMe": True},  # our own send
        {"remoteJid": "120363000000000000@g.us"},  # a group
        {"remoteJid": "status@broadcast"},
    ],
)
def test_evolution_messages_that_are_not_a_contact_writing_to_us_are_ignored(key):
    assert upsert(key, {"conversation": "oi"}) == []


# -- bodies refused whole -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", "body is not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "body nested too deep to be a webhook"),
        (b'{"object": "page"}', "not a WhatsApp Business Account notification (no entry list)"),
        (
            json.dumps(meta_change(PNID, statuses=[status(id={"a": 1})])).encode(),
            "malformed event: entry[0].changes[0].value.statuses[0].id: expected a string, got dict",
        ),
        (
            json.dumps(meta_change(PNID, statuses=[status(id="w" * 257)])).encode(),
            "malformed event: entry[0].changes[0].value.statuses[0].id: longer than 256 characters",
        ),
        (
            json.dumps(
                meta_change(PNID, messages=[{"from": "5511900000001", "type": "text", "text": {"body": 5}}])
            ).encode(),
            "malformed event: entry[0].changes[0].value.messages[0].text.body: expected a string, got int",
        ),
        (
            json.dumps(meta_change(PNID, statuses="all of them")).encode(),
            "malformed event: entry[0].changes[0].value.statuses: expected a list, got str",
        ),
    ],
)
def test_a_body_that_cannot_be_read_is_refused_whole_naming_why(body, error):
    parsed = parse_body(1, "meta_cloud", body)
    assert parsed.error == error
    assert parsed.statuses == parsed.inbound == parsed.preferences == []


def test_an_evolution_body_that_is_not_an_object_is_refused():
    assert parse_body(1, "evolution", b"[1, 2]").error == "not an Evolution event"


def test_text_postgres_cannot_store_is_cleaned_not_refused():
    msg = {"from": "5511900000001", "timestamp": STAMP, "type": "text", "text": {"body": "o\x00i \ud800"}}
    contacts = [{"profile": {"name": "A\x00na"}, "wa_id": "5511900000001"}]
    [inbound] = meta(messages=[msg], contacts=contacts).inbound
    assert (inbound.text, inbound.name) == ("oi ?", "Ana")
