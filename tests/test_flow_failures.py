"""Failures are recorded with their reason; transient ones are retried; none fails the batch."""

from __future__ import annotations

import sqlalchemy as sa

from campaigns.ingest import ingest_pending
from flows.send_campaign import send_campaign
from tests.helpers import (
    add_contacts,
    add_sandbox_number,
    campaign_row,
    create_campaign,
    recipients,
    sent_counts,
    shrink_retry_delay,
)


def by_phone(db, cid):
    return {r["phone"]: r for r in recipients(db, cid)}


def test_permanent_failures_are_recorded_with_code_and_reason(db, org, sandbox):
    sandbox.configure(rules=[
        {"match": "1$", "code": 100, "where": "sync", "message": "(#100) Invalid parameter: to"},
        {"match": "2$", "code": 131026, "where": "webhook"},
    ])
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": f"+551190000000{i}", "name": "Ana"} for i in range(5)])
    cid = create_campaign(db, org, number)

    assert send_campaign(cid)["status"] == "completed"
    sandbox.drain_webhooks(timeout=10)
    ingest_pending(db)

    rows = by_phone(db, cid)
    assert rows["+5511900000001"]["status"] == "failed"
    assert rows["+5511900000001"]["error_code"] == 100
    assert "Invalid parameter" in rows["+5511900000001"]["error_message"]
    assert rows["+5511900000001"]["attempts"] == 1
    # 131026 arrives as a failed status webhook after the send was accepted.
    assert rows["+5511900000002"]["status"] == "failed"
    assert rows["+5511900000002"]["error_code"] == 131026
    assert {rows[p]["status"] for p in ("+5511900000000", "+5511900000003", "+5511900000004")} <= {
        "sent", "delivered", "read"}
    campaign = campaign_row(db, cid)
    assert campaign["error_count"] >= 1 and campaign["last_error_message"]


def test_transient_failures_succeed_on_a_later_attempt(db, org, sandbox):
    sandbox.configure(rules=[{"match": "7$", "code": 133004, "times": 2}])
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": f"+551190000000{i}", "name": "Ana"} for i in range(5, 9)])
    cid = create_campaign(db, org, number, retry_max_attempts=3)
    shrink_retry_delay(db, cid)

    assert send_campaign(cid)["status"] == "completed"

    row = by_phone(db, cid)["+5511900000007"]
    assert row["status"] in ("sent", "delivered", "read")
    assert row["attempts"] == 3
    log = row["attempt_log"]
    assert [e["success"] for e in log] == [False, False, True]
    assert [e.get("error_code") for e in log] == [133004, 133004, None]
    assert sent_counts(sandbox)[f"pytake:{row['id']}"] == 1


def test_retries_exhausted_fail_the_recipient_with_the_last_reason(db, org, sandbox):
    sandbox.configure(rules=[{"match": "5$", "code": 131000}, {"match": "6$", "code": 2}])
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": "+5511900000006", "name": "Ana"}, {"phone": "+5511900000004", "name": "Bia"}])
    cid = create_campaign(db, org, number, retry_max_attempts=2)
    shrink_retry_delay(db, cid)

    assert send_campaign(cid)["status"] == "completed"

    row = by_phone(db, cid)["+5511900000006"]
    assert row["status"] == "failed" and row["error_code"] == 2
    assert row["error_message"].startswith("retries exhausted after 2 attempts")
    assert by_phone(db, cid)["+5511900000004"]["status"] in ("sent", "delivered", "read")


def test_a_missing_variable_fails_only_that_recipient(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": "+5511900000001", "name": "Ana", "attributes": {"coupon": "BF10"}},
                           {"phone": "+5511900000002", "name": "Bia"}])
    cid = create_campaign(db, org, number, template_variables={"body": ["{{contact.name}}", "{{contact.coupon}}"]})

    assert send_campaign(cid)["status"] == "completed"

    rows = by_phone(db, cid)
    assert rows["+5511900000002"]["status"] == "failed"
    assert rows["+5511900000002"]["error_message"] == "missing variable contact.coupon"
    assert rows["+5511900000001"]["status"] in ("sent", "delivered", "read")
    assert len(sandbox.messages()) == 1


def test_an_expired_token_pauses_the_campaign_and_nothing_pending_fails(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox, token="good")
    sandbox.set_token(sandbox_pnid(db, number), "rotated")  # the number's token no longer works
    add_contacts(db, org, [{"phone": f"+551190000001{i}", "name": "Ana"} for i in range(10)])
    cid = create_campaign(db, org, number)

    assert send_campaign(cid)["status"] == "paused"

    campaign = campaign_row(db, cid)
    assert campaign["paused_reason"] == "auth_error"
    assert "190" in campaign["last_error_message"]
    assert {r["status"] for r in recipients(db, cid)} == {"pending"}


def sandbox_pnid(db, number_id):
    with db.connect() as conn:
        return conn.execute(sa.text("select phone_number_id from whatsapp_numbers where id = :n"),
                            {"n": number_id}).scalar_one()


def test_a_contact_deleted_after_the_audience_froze_is_skipped_not_stuck(db, org, sandbox):
    from tasks.send import prepare_campaign

    number = add_sandbox_number(db, org, sandbox)
    ids = add_contacts(db, org, [{"phone": "+5511900000001", "name": "Ana"},
                                 {"phone": "+5511900000002", "name": "Bia"}])
    cid = create_campaign(db, org, number)
    prepare_campaign.fn(cid)
    with db.begin() as conn:
        conn.execute(sa.text("delete from contacts where id = :i"), {"i": ids[0]})

    assert send_campaign(cid)["status"] == "completed"

    rows = by_phone(db, cid)
    assert rows["+5511900000001"]["status"] == "skipped"
    assert rows["+5511900000001"]["skip_reason"] == "contact_deleted"
    assert rows["+5511900000002"]["status"] in ("sent", "delivered", "read")
