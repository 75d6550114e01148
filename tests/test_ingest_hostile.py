"""Hostile or odd webhook events never stop ingestion: each is applied, refused or quarantined on its own.

A webhook signed with a tenant's own app secret is trusted only as far as its signature goes. Every case
below queues the offending event *before* a well-formed status, because the failure this guards against
was a round rolled back as a whole, with the same event picked first again on every round, forever.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from campaigns.webhooks.ingest import ingest_once, ingest_pending
from tests.helpers import meta_change, signed
from tests.hostile_events import AT, Fleet, assert_good_applied, body, events, fleet_fixture, queue, status  # noqa: F401


def deep(depth: int) -> bytes:
    return b'{"object":"whatsapp_business_account","entry":' + b"[" * depth + b"]" * depth + b"}"


def test_a_body_nested_5000_deep_is_stored_then_refused_and_the_next_status_applies(db, fleet, receiver):
    """The receiver never parses (it stores the raw body); ingestion used to die on json.loads' RecursionError."""
    good = fleet.recipient()
    bad = deep(5000)
    assert httpx.post(receiver, content=bad, headers=signed(bad)).status_code == 200
    with db.connect() as conn:
        bad_id = conn.execute(sa.text("select max(id) from webhook_events")).scalar_one()
    (good_id,) = queue(db, meta_change(fleet.pnid, statuses=[status(good)]))

    ingest_pending(db)

    assert_good_applied(fleet, good, good_id)
    (event,) = events(db, [bad_id])
    assert event.state == "unparseable" and "nested" in event.error


def _inbound(fleet: Fleet, phone: str, msg: dict[str, Any], name: Any = "Bia", pnid: Any = None) -> dict[str, Any]:
    """A contact's text message to the fleet's number (or to `pnid`, whatever it is), fields overridden by `msg`."""
    message = {
        "from": phone.lstrip("+"),
        "id": f"wamid.IN{uuid.uuid4().hex}",
        "timestamp": str(AT),
        "type": "text",
        "text": {"body": "oi"},
        **msg,
    }
    payload = meta_change(
        fleet.pnid, contacts=[{"wa_id": phone.lstrip("+"), "profile": {"name": name}}], messages=[message]
    )
    if pnid is not None:
        payload["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = pnid
    return payload


HOSTILE_SHAPES = {  # name: (body for (fleet, a recipient), the event's state afterwards)
    # a dict or list where a string id belongs: "unhashable type" in the set of keys to look up
    "status-id-is-a-dict": (
        lambda f, v: meta_change(f.pnid, statuses=[status(v) | {"id": {"$ne": None}}]),
        "unparseable",
    ),
    "status-id-is-a-list": (
        lambda f, v: meta_change(f.pnid, statuses=[status(v) | {"id": ["wamid.A"]}]),
        "unparseable",
    ),
    "context-id-is-a-dict": (lambda f, v: _inbound(f, "+5511977770001", {"context": {"id": {"x": 1}}}), "unparseable"),
    "phone_number_id-is-a-list": (lambda f, v: _inbound(f, "+5511977770002", {}, pnid=[f.pnid]), "unparseable"),
    # a non-string message text: the keyword check normalised it as a string
    "text-body-is-a-number": (lambda f, v: _inbound(f, "+5511977770003", {"text": {"body": 5}}), "unparseable"),
    "text-body-is-a-dict": (
        lambda f, v: _inbound(f, "+5511977770004", {"text": {"body": {"a": "PARAR"}}}),
        "unparseable",
    ),
    "button-text-is-a-list": (
        lambda f, v: _inbound(f, "+5511977770005", {"type": "button", "button": {"text": ["STOP"]}}),
        "unparseable",
    ),
    # numbers past what the columns hold
    "callback-data-past-bigint": (
        lambda f, v: meta_change(
            f.pnid,
            statuses=[
                status(v) | {"id": "wamid.Z" + uuid.uuid4().hex, "biz_opaque_callback_data": "pytake:" + "9" * 30}
            ],
        ),
        "pending",
    ),  # no recipient id then, and a wamid nobody knows: retried, then orphaned
    "wamid-is-a-huge-number": (lambda f, v: meta_change(f.pnid, statuses=[status(v) | {"id": 10**30}]), "unparseable"),
    "callback-data-is-a-dict": (
        lambda f, v: meta_change(f.pnid, statuses=[status(v) | {"biz_opaque_callback_data": {"pytake": 1}}]),
        "unparseable",
    ),
    # a wa_id of 9,000 digits is no phone: it used to become a contact whose index entry Postgres refuses
    "phone-of-9000-digits": (
        lambda f, v: _inbound(f, "+" + "".join(random.choice("0123456789") for _ in range(9000)), {}),
        "processed",
    ),
}


@pytest.mark.parametrize("shape", HOSTILE_SHAPES)
def test_a_mistyped_event_is_refused_alone_and_the_next_status_applies(db, fleet, shape):
    victim, good = fleet.recipient(), fleet.recipient()
    build, expected = HOSTILE_SHAPES[shape]
    bad_id, good_id = queue(db, build(fleet, victim), meta_change(fleet.pnid, statuses=[status(good)]))

    ingest_pending(db)

    assert_good_applied(fleet, good, good_id)
    (bad,) = events(db, [bad_id])
    assert bad.state == expected, bad
    if bad.state == "unparseable":
        assert bad.error.startswith("malformed event: entry[0].changes[0].value."), bad.error  # names the field
    assert fleet.row(victim["id"]).status in ("sent", "delivered")
    if bad.state != "pending":  # settled events are never picked again
        ingest_pending(db)
        assert events(db, [bad_id])[0] == bad


def test_nul_characters_in_a_profile_name_and_an_error_text_are_stripped(db, fleet):
    failed, good = fleet.recipient(), fleet.recipient()
    phone = "+5511977771001"
    bad_name = _inbound(fleet, phone, {}, name="Bi\x00a")
    bad_error = meta_change(
        fleet.pnid,
        statuses=[
            status(
                failed,
                "failed",
                errors=[{"code": 131026, "title": "Message\x00 undeliverable", "error_data": {"details": "nul\x00"}}],
            )
        ],
    )
    bad_ids = queue(db, bad_name, bad_error)
    (good_id,) = queue(db, meta_change(fleet.pnid, statuses=[status(good)]))

    ingest_pending(db)

    assert_good_applied(fleet, good, good_id)
    assert [e.state for e in events(db, bad_ids)] == ["processed", "processed"]
    assert fleet.contact(phone).name == "Bia"
    row = fleet.row(failed["id"])
    assert (row.status, row.error_code, row.error_message) == ("failed", 131026, "Message undeliverable - nul")


def test_a_lone_surrogate_in_a_name_is_replaced(db, fleet):
    good, phone = fleet.recipient(), "+5511977771002"
    bad_id, good_id = queue(
        db, _inbound(fleet, phone, {}, name="Bia\ud800"), meta_change(fleet.pnid, statuses=[status(good)])
    )

    ingest_pending(db)

    assert_good_applied(fleet, good, good_id)
    assert events(db, [bad_id])[0].state == "processed"
    assert fleet.contact(phone).name.startswith("Bia")


def test_a_status_that_moves_a_known_wamid_to_another_row_is_quarantined_and_the_round_goes_on(db, fleet):
    """ux_recipients_wamid refuses it in the bulk update: only that event is set aside, with its error."""
    owner, target = fleet.recipient(), fleet.recipient(status="sending", wamid=False)
    before, after = fleet.recipient(), fleet.recipient()
    thief = meta_change(fleet.pnid, statuses=[status(target) | {"id": owner["wamid"]}])
    ids = queue(
        db,
        meta_change(fleet.pnid, statuses=[status(before, "read")]),
        thief,
        meta_change(fleet.pnid, statuses=[status(after)]),
        _inbound(fleet, "+5511977771003", {"text": {"body": "PARAR"}}),
    )

    result = ingest_pending(db)

    states = events(db, ids)
    assert [e.state for e in states] == ["processed", "quarantined", "processed", "processed"]
    assert "ux_recipients_wamid" in states[1].error
    assert result.quarantined == 1
    assert fleet.row(before["id"]).status == "read" and fleet.row(after["id"]).status == "delivered"
    assert fleet.contact("+5511977771003").opted_out_at is not None  # the opt-out in the same round holds
    assert (fleet.row(target["id"]).status, fleet.row(target["id"]).wamid) == ("sending", None)
    assert fleet.row(owner["id"]).wamid == owner["wamid"]

    ingest_pending(db)  # never picked again
    assert events(db, ids)[1] == states[1]


def test_a_round_is_bounded_by_bytes_and_the_drain_still_takes_everything(db, fleet):
    ingest_pending(db)  # what earlier tests left
    rows = [fleet.recipient() for _ in range(5)]
    padded = [meta_change(fleet.pnid, statuses=[status(r)], pad="x" * 1000) for r in rows]
    size = len(body(padded[0]))
    ids = queue(db, *padded)

    with db.begin() as conn:
        first = ingest_once(conn, limit=100, max_bytes=2 * size + 10)
    assert first.events == 2 and first.full
    assert [e.state for e in events(db, ids)] == ["processed"] * 2 + ["pending"] * 3
    with db.begin() as conn:  # an event larger than the bound is still taken, alone
        assert ingest_once(conn, limit=100, max_bytes=10).events == 1

    ingest_pending(db, max_bytes=size + 10)
    assert [e.state for e in events(db, ids)] == ["processed"] * 5
    assert {fleet.row(r["id"]).status for r in rows} == {"delivered"}


def test_a_transient_database_error_quarantines_nothing(db, fleet):
    """A lock timeout says nothing about the events: the round rolls back and they stay pending."""
    row = fleet.recipient()
    (event_id,) = queue(db, meta_change(fleet.pnid, statuses=[status(row)]))
    with db.connect() as holder:
        holder.execute(sa.text("select 1 from campaign_recipients where id = :i for update"), {"i": row["id"]})
        with pytest.raises(sa.exc.OperationalError), db.begin() as conn:
            conn.execute(sa.text("set local lock_timeout = '200ms'"))
            ingest_once(conn)
        holder.rollback()
    assert events(db, [event_id])[0].state == "pending"
    ingest_pending(db)
    assert_good_applied(fleet, row, event_id)
