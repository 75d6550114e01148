"""The receiver answers as documented and loses nothing; ingestion is exact in any order."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa

from campaigns.reporting.stats import stats
from campaigns.webhooks.ingest import ingest_pending
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    campaign_row,
    create_campaign,
    meta_change,
    phones,
    post_signed,
    recipients,
    run_campaign,
    signed,
)


def _events_after(db, last_id):
    with db.connect() as conn:
        return conn.execute(
            sa.text("select id, body, state from webhook_events where id > :i order by id"), {"i": last_id}
        ).all()


def _last_id(db):
    with db.connect() as conn:
        return conn.execute(sa.text("select coalesce(max(id), 0) from webhook_events")).scalar_one()


def test_signature_bad_json_oversize_and_verification(db, receiver):
    start = _last_id(db)
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    assert httpx.post(receiver, content=body).status_code == 401
    bad = httpx.post(receiver, content=body, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert bad.status_code == 401
    assert _events_after(db, start) == []

    ok = httpx.post(receiver, content=body, headers=signed(body))
    assert ok.status_code == 200
    junk = b"{not json"
    stored = httpx.post(receiver, content=junk, headers=signed(junk))
    assert stored.status_code == 200  # answered so Meta stops retrying; kept for a human to see
    big = b"x" * (3 * 1024 * 1024 + 1)
    assert httpx.post(receiver, content=big, headers=signed(big)).status_code == 413
    events = _events_after(db, start)
    assert [bytes(e.body) for e in events] == [body, junk]

    ingest_pending(db)
    states = {bytes(e.body): e.state for e in _events_after(db, start)}
    assert states == {body: "processed", junk: "unparseable"}

    q = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": "verify-me"}
    assert httpx.get(receiver, params=q).text == "1158201444"
    assert httpx.get(receiver, params={**q, "hub.verify_token": "nope"}).status_code == 403


@pytest.mark.flow
def test_shuffled_duplicated_statuses_give_exact_stats(db, org, sandbox):
    sandbox.configure(duplicate_rate=0.5, shuffle=True, read_rate=0.5, delivered_rate=0.9, reply_rate=0.2)
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(300)])
    cid = create_campaign(db, org, number)
    assert run_campaign(cid)["status"] == "completed"
    assert sandbox.drain_webhooks(timeout=30)
    ingest_pending(db)

    truth = {m["biz_opaque_callback_data"]: m for m in sandbox.messages()}
    rows = recipients(db, cid)
    assert {f"pytake:{r['id']}": r["status"] for r in rows} == {k: m["final_status"] for k, m in truth.items()}
    replied = sum(m["replied"] for m in truth.values())
    assert sum(r["replied_at"] is not None for r in rows) == replied
    with db.connect() as conn:
        s = stats(conn, campaign_row(db, cid))
    delivered = sum(m["final_status"] in ("delivered", "read") for m in truth.values())
    read = sum(m["final_status"] == "read" for m in truth.values())
    assert (s["messages_sent"], s["messages_delivered"], s["messages_read"]) == (300, delivered, read)
    assert s["delivery_rate"] == round(100 * delivered / 300, 1)
    assert s["read_rate"] == round(100 * read / delivered, 1)
    assert s["reply_rate"] == round(100 * replied / 300, 1)
    assert sandbox.stats()["webhook_duplicates_scheduled"] > 0


@pytest.mark.flow
def test_a_signed_but_malformed_event_never_blocks_the_others(db, org, sandbox, receiver):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": "+5511900000001", "name": "Ana"}])
    cid = create_campaign(db, org, number)
    start = _last_id(db)
    odd = [
        b'{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"statuses":["x"]}}]}]}',
        b'{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"statuses":[{"id":"w",'
        b'"status":"failed","timestamp":"99999999999999999999","errors":[{"code":99999999999}]}]}}]}]}',
        b'{"entry": "not a list"}',
    ]
    for body in odd:
        assert httpx.post(receiver, content=body, headers=signed(body)).status_code == 200
    assert run_campaign(cid)["status"] == "completed"
    sandbox.drain_webhooks(timeout=10)
    ingest_pending(db)
    states = [e.state for e in _events_after(db, start)]
    assert states[0] == "unparseable" and states[2] == "unparseable"
    assert states[1] in ("pending", "orphaned")  # well-formed, for a message nobody knows: kept, retried
    assert all(s == "processed" for s in states[3:]) and len(states) > 3
    assert recipients(db, cid)[0]["status"] in ("delivered", "read")


@pytest.mark.flow
def test_a_status_before_its_send_is_recorded_waits_then_applies_and_the_unknown_is_orphaned(
    db, org, sandbox, receiver
):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": "+5511900000801", "name": "Ana"}])
    cid = create_campaign(db, org, number)
    assert run_campaign(cid)["status"] == "completed"
    sandbox.drain_webhooks(timeout=10)
    ingest_pending(db)
    row = recipients(db, cid)[0]
    with db.begin() as conn:  # as if the batch had not recorded its outcome yet: no wamid on the row
        conn.execute(
            sa.text(
                "update campaign_recipients set wamid = null, status = 'sending', "
                "delivered_at = null, read_at = null where id = :i"
            ),
            {"i": row["id"]},
        )
    start = _last_id(db)
    early = {"id": row["wamid"], "status": "delivered", "timestamp": "1800000000", "recipient_id": "5511900000801"}
    # no callback data: only the wamid can match
    assert post_signed(receiver, meta_change("1", statuses=[early])) == 200
    unknown = {"id": "wamid.NOBODY", "status": "read", "timestamp": "1800000000", "recipient_id": "1"}
    assert post_signed(receiver, meta_change("1", statuses=[unknown])) == 200
    field = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {
                        "field": "message_template_status_update",
                        "value": {"event": "APPROVED", "message_template_id": 1},
                    }
                ],
            }
        ],
    }
    assert post_signed(receiver, field) == 200  # a field we do not handle: stored, answered, processed

    assert ingest_pending(db).unmatched == 2
    assert [e.state for e in _events_after(db, start)] == ["pending", "pending", "processed"]
    with db.begin() as conn:  # the batch records its outcome; the backoff passes; the unknown one gives up
        conn.execute(
            sa.text("update campaign_recipients set wamid = :w, status = 'sent' where id = :i"),
            {"w": row["wamid"], "i": row["id"]},
        )
        conn.execute(sa.text("update webhook_events set retry_at = now() where id > :s"), {"s": start})
        conn.execute(sa.text("update webhook_events set attempts = 29 where id = :i"), {"i": start + 2})
    ingest_pending(db)
    assert [e.state for e in _events_after(db, start)] == ["processed", "orphaned", "processed"]
    assert recipients(db, cid)[0]["status"] == "delivered"
