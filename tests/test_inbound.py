"""Inbound webhooks: replies, the 24 h window, every opt-out path, and one tenant never touching another."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from blocks.numbers import add_number
from campaigns.errors import Invalid
from campaigns.webhooks.ingest import ingest_pending
from campaigns.webhooks.receiver import KnownSecrets
from tests.helpers import (
    APP_SECRET,
    add_contacts,
    add_sandbox_number,
    create_campaign,
    meta_change,
    new_org,
    phone_number_id,
    post_signed,
    recipients,
    run_campaign,
    start_campaign,
    webhook_receiver,
)


def _text_from(pnid: str, phone: str, text: str, at: int, context: str | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "from": phone.lstrip("+"),
        "id": f"wamid.IN{at}{phone}",
        "timestamp": str(at),
        "type": "text",
        "text": {"body": text},
    }
    if context:
        msg["context"] = {"from": "15550000000", "id": context}
    return meta_change(pnid, contacts=[{"wa_id": phone.lstrip("+"), "profile": {"name": "Bia"}}], messages=[msg])


def _preference(pnid: str, phone: str, value: str, at: int) -> dict[str, Any]:
    return meta_change(
        pnid,
        "user_preferences",
        user_preferences=[
            {
                "wa_id": phone.lstrip("+"),
                "detail": "User requested to stop marketing messages",
                "category": "marketing_messages",
                "value": value,
                "timestamp": at,
            }
        ],
    )


def _contact(db, org, phone: str) -> Any:
    with db.connect() as conn:
        return conn.execute(
            sa.text(
                "select name, opted_out_at, opt_out_source, last_inbound_at from contacts "
                "where organization_id = :o and phone = :p"
            ),
            {"o": org, "p": phone},
        ).one_or_none()


@pytest.mark.flow
def test_keyword_replies_opt_out_and_mark_the_recipient_replied(db, org, sandbox):
    sandbox.configure(reply_rate=1.0, reply_text="  Parar! ", read_rate=0.0)
    number = add_sandbox_number(db, org, sandbox)
    phones = ["+5511900000101", "+5511900000102"]
    add_contacts(db, org, [{"phone": p, "name": "Ana", "inbound_hours_ago": 48} for p in phones])
    cid = create_campaign(db, org, number)
    assert run_campaign(cid)["status"] == "completed"
    assert sandbox.drain_webhooks(timeout=20)
    ingest_pending(db)

    assert all(r["replied_at"] is not None for r in recipients(db, cid))
    for phone in phones:
        contact = _contact(db, org, phone)
        assert contact.opted_out_at is not None and contact.opt_out_source == "keyword"
        assert contact.last_inbound_at > datetime.now(UTC) - timedelta(minutes=5)  # was 48 h ago: refreshed
    add_contacts(db, org, [{"phone": "+5511900000103", "name": "Bia"}])  # (an audience all opted out is refused)
    again = create_campaign(db, org, number)
    assert run_campaign(again)["status"] == "completed"
    outcome = {r["phone"]: (r["status"], r["skip_reason"]) for r in recipients(db, again)}
    assert outcome.pop("+5511900000103")[0] in ("sent", "delivered")
    assert outcome == dict.fromkeys(phones, ("skipped", "opt_out"))


def test_a_sentence_containing_a_keyword_is_not_an_opt_out_and_opt_in_keywords_resume(db, org, sandbox, receiver):
    number = add_sandbox_number(db, org, sandbox)
    pnid = phone_number_id(db, number)
    add_contacts(db, org, [{"phone": "+5511900000201", "name": "Ana", "opted_out": True}])
    sentence = _text_from(pnid, "+5511900000201", "não quero cancelar meu plano", 1_800_000_000)
    assert post_signed(receiver, sentence) == 200
    ingest_pending(db)
    assert _contact(db, org, "+5511900000201").opted_out_at is not None  # unchanged by a sentence
    assert post_signed(receiver, _text_from(pnid, "+5511900000201", "Voltar", 1_800_000_100)) == 200
    ingest_pending(db)
    assert _contact(db, org, "+5511900000201").opted_out_at is None


def test_user_preferences_latest_choice_wins_in_any_order(db, org, sandbox, receiver):
    number = add_sandbox_number(db, org, sandbox)
    pnid = phone_number_id(db, number)
    add_contacts(db, org, [{"phone": "+5511900000301", "name": "Ana"}])
    # resume (newer) arrives before stop (older): the user's latest choice is "resume"
    assert post_signed(receiver, _preference(pnid, "+5511900000301", "resume", 1_800_000_200)) == 200
    assert post_signed(receiver, _preference(pnid, "+5511900000301", "stop", 1_800_000_100)) == 200
    ingest_pending(db)
    assert _contact(db, org, "+5511900000301").opted_out_at is None
    assert post_signed(receiver, _preference(pnid, "+5511900000301", "stop", 1_800_000_300)) == 200
    ingest_pending(db)
    contact = _contact(db, org, "+5511900000301")
    assert contact.opted_out_at is not None and contact.opt_out_source == "user_preferences"
    # a phone we never imported: remembered, so a later import cannot message it
    assert post_signed(receiver, _preference(pnid, "+5511900000399", "stop", 1_800_000_300)) == 200
    ingest_pending(db)
    assert _contact(db, org, "+5511900000399").opted_out_at is not None


@pytest.mark.flow
def test_131050_opts_the_contact_out(db, org, sandbox):
    sandbox.configure(rules=[{"match": "1$", "code": 131050, "where": "webhook"}])
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": "+5511900000401", "name": "Ana"}, {"phone": "+5511900000402", "name": "Bo"}])
    cid = create_campaign(db, org, number)
    assert run_campaign(cid)["status"] == "completed"
    assert sandbox.drain_webhooks(timeout=20)
    ingest_pending(db)
    by_phone = {r["phone"]: r for r in recipients(db, cid)}
    assert (by_phone["+5511900000401"]["status"], by_phone["+5511900000401"]["error_code"]) == ("failed", 131050)
    assert _contact(db, org, "+5511900000401").opt_out_source == "131050"
    assert _contact(db, org, "+5511900000402").opted_out_at is None


@pytest.mark.flow
def test_an_inbound_message_opens_the_24h_window_for_free_form_text(db, org, sandbox, receiver):
    number = add_sandbox_number(db, org, sandbox)
    pnid = phone_number_id(db, number)
    add_contacts(
        db,
        org,
        [
            {"phone": "+5511900000501", "name": "Ana", "inbound_hours_ago": 30},
            {"phone": "+5511900000502", "name": "Bia", "inbound_hours_ago": 30},
            # wrote an hour ago, but to opt out: not someone free-form text may reach
            {"phone": "+5511900000503", "name": "Cida", "inbound_hours_ago": 1, "opted_out": True},
        ],
    )
    text = {"message_type": "text", "message_content": {"text": "Oi {{contact.name}}"}, "template_variables": {}}
    before = create_campaign(db, org, number, **text)
    with pytest.raises(Invalid) as refused:  # it would send nothing: the checklist says why
        start_campaign(db, org, before)
    assert refused.value.details == [
        "24 h window: free-form text reaches only contacts who wrote in the last 24 h, and none of the audience "
        'who may be sent to did: send an approved template (message_type "template")'
    ]

    assert post_signed(receiver, _text_from(pnid, "+5511900000501", "Oi, tudo bem?", int(time.time()))) == 200
    ingest_pending(db)
    after = create_campaign(db, org, number, **text)
    assert start_campaign(db, org, after)["warnings"] == [
        "24 h window: 1 of 3 contacts can get free-form text (they wrote in the last 24 h); the others are "
        "skipped: a template reaches everyone"
    ]
    run_campaign(after)
    outcome = {r["phone"]: (r["status"], r["skip_reason"]) for r in recipients(db, after)}
    assert outcome.pop("+5511900000502") == ("skipped", "outside_window")
    assert outcome.pop("+5511900000503") == ("skipped", "opt_out")
    assert outcome["+5511900000501"][0] in ("sent", "delivered", "read")


@pytest.mark.flow
def test_a_secret_vouches_only_for_its_own_numbers(db, org, sandbox):
    """Another organization bringing its own Meta app cannot forge statuses or opt-outs for ours."""
    number = add_sandbox_number(db, org, sandbox)
    pnid = phone_number_id(db, number)
    add_contacts(db, org, [{"phone": "+5511900000601", "name": "Ana"}])
    cid = create_campaign(db, org, number)
    run_campaign(cid)
    assert sandbox.drain_webhooks(timeout=20)
    ingest_pending(db)
    mine = recipients(db, cid)[0]
    assert mine["status"] in ("delivered", "read")

    other = new_org(db, "other-tenant")
    with db.begin() as conn:
        add_number(
            conn,
            other,
            provider="sandbox",
            phone_number_id="990" + os.urandom(4).hex(),
            token="t",
            app_secret="other-app-secret",
            verify_token="v",
            api_base=sandbox.url,
        )
    with webhook_receiver(KnownSecrets(app_secrets=[APP_SECRET.encode(), b"other-app-secret"])) as base:
        url = base + "/webhooks/whatsapp"
        forged = meta_change(
            pnid,
            statuses=[
                {
                    "id": mine["wamid"],
                    "status": "failed",
                    "timestamp": "1800000000",
                    "biz_opaque_callback_data": f"pytake:{mine['id']}",
                    "errors": [{"code": 131026, "title": "Message undeliverable"}],
                }
            ],
        )
        assert post_signed(url, forged, "other-app-secret") == 200  # stored: signed by a secret we know
        assert post_signed(url, _preference(pnid, "+5511900000601", "stop", 1_800_000_000), "other-app-secret") == 200
        result = ingest_pending(db)
    assert result.rejected == 1
    assert recipients(db, cid)[0]["status"] == mine["status"]
    assert _contact(db, org, "+5511900000601").opted_out_at is None
    with db.connect() as conn:
        note = conn.execute(sa.text("select state, error from webhook_events order by id desc limit 2")).all()
    assert any(state == "processed" and error and "rejected" in error for state, error in note)


def test_a_reimport_never_undoes_the_users_own_opt_out(db, org, sandbox, receiver):
    from campaigns.audience.contacts import import_csv

    number = add_sandbox_number(db, org, sandbox)
    with db.begin() as conn:
        import_csv(conn, org, b"phone,name,opted_out\n+5511900000701,Ana,false\n+5511900000702,Bo,true\n")
    stop = _preference(phone_number_id(db, number), "+5511900000701", "stop", 1_800_000_000)
    assert post_signed(receiver, stop) == 200
    ingest_pending(db)
    with db.begin() as conn:  # the operator re-imports an old list where both are subscribed
        import_csv(conn, org, b"phone,name,opted_out\n+5511900000701,Ana,false\n+5511900000702,Bo,false\n")
    assert _contact(db, org, "+5511900000701").opt_out_source == "user_preferences"
    assert _contact(db, org, "+5511900000702").opted_out_at is None  # the import's own opt-out is the import's
