"""Evolution end to end: sendText through the sandbox's Evolution emulation, its unsigned webhooks checked
with the instance's api key, statuses, replies and keyword opt-outs ingested, stats equal to the truth."""

from __future__ import annotations

import os

import httpx
import pytest
import sqlalchemy as sa

from blocks.numbers import add_number
from campaigns.reporting.stats import stats
from campaigns.webhooks.ingest import ingest_pending
from campaigns.webhooks.receiver import KnownSecrets
from tests.helpers import (
    add_contacts,
    campaign_row,
    create_campaign,
    phones,
    recipients,
    run_campaign,
    webhook_receiver,
)

pytestmark = pytest.mark.flow  # every test runs a campaign through the send-campaign flow

KEY = "evo-instance-key"


def test_an_evolution_campaign_is_counted_exactly(db, org, sandbox):
    instance = "loja-" + os.urandom(3).hex()
    with webhook_receiver(KnownSecrets(evolution_keys={instance: [KEY]})) as url:
        base = url + "/webhooks/evolution"
        assert (
            httpx.post(f"{base}/{instance}", json={"event": "messages.update"}, headers={"apikey": "wrong"}).status_code
            == 401
        )
        sandbox.configure(
            evolution_keys={instance: KEY},
            evolution_webhook_url=base,
            read_rate=0.5,
            delivered_rate=0.9,
            reply_rate=0.3,
            reply_text="sair",
            duplicate_rate=0.3,
            shuffle=True,
            rules=[{"match": "7$", "code": 131026, "where": "webhook"}],
        )
        with db.begin() as conn:
            number = add_number(
                conn,
                org,
                provider="evolution",
                phone_number_id=instance,
                token=KEY,
                app_secret="",
                verify_token="",
                api_base=sandbox.url,
                mps=200,
            )
        add_contacts(db, org, [{"phone": p, "name": "Ana"} for p in phones(24, start=7000)])
        cid = create_campaign(
            db, org, number, message_type="text", message_content={"text": "Oi {{contact.name}}"}, template_variables={}
        )
        assert run_campaign(cid)["status"] == "completed"
        assert sandbox.drain_webhooks(timeout=30)
        ingest_pending(db)

    truth = {m["wamid"]: m for m in sandbox.messages() if m.get("instance") == instance}
    rows = recipients(db, cid)
    assert len(truth) == len(rows) == 24
    assert {r["wamid"]: r["status"] for r in rows} == {w: m["final_status"] for w, m in truth.items()}
    replied = {w for w, m in truth.items() if m["replied"]}
    assert {r["wamid"] for r in rows if r["replied_at"] is not None} == replied
    with db.connect() as conn:
        s = stats(conn, campaign_row(db, cid))
        opted = conn.execute(
            sa.text("select count(*) from contacts where organization_id = :o and opt_out_source = 'keyword'"),
            {"o": org},
        ).scalar_one()
    assert s["messages_failed"] == sum(m["final_status"] == "failed" for m in truth.values()) > 0
    assert s["messages_read"] == sum(m["final_status"] == "read" for m in truth.values())
    assert opted == len(replied) > 0  # "sair" is an opt-out keyword
    accepted = sorted(m["accepted_at"] for m in truth.values())
    assert min(b - a for a, b in zip(accepted, accepted[1:], strict=False)) >= 0.45  # one every 500 ms
