"""Start refuses with every failed check of the seed's checklist, not just the first."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from campaigns import lifecycle
from campaigns.services import start_campaign
from tests.helpers import add_contacts, add_sandbox_number, campaign_row, create_campaign


def test_every_failed_check_is_listed_and_nothing_starts(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    cid = create_campaign(db, org, number, audience_type="tags", audience_filter={"tags": ["nobody"]})
    with db.begin() as conn:
        conn.execute(sa.text("update whatsapp_numbers set active = false where id = :n"), {"n": number})

    with pytest.raises(lifecycle.Invalid) as exc:
        start_campaign(db, org, cid)

    details = " | ".join(exc.value.details)
    assert "audience: the audience has no contacts" in details
    assert "whatsapp number active: the WhatsApp number is inactive" in details
    assert campaign_row(db, cid)["status"] == "draft"


def test_a_ready_campaign_starts_with_the_seed_response(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    add_contacts(db, org, [{"phone": "+5511900000001", "name": "Ana"}, {"phone": "+5511900000002", "name": "Bia"}])
    cid = create_campaign(db, org, number)
    body = start_campaign(db, org, cid)
    assert body["status"] == "running" and body["total_recipients"] == 2 and body["started_at"]
    with db.begin() as conn, pytest.raises(lifecycle.Conflict, match="Cannot start a running campaign"):
        lifecycle.mark_running(conn, org, cid)
    with db.begin() as conn, pytest.raises(lifecycle.Conflict, match="Cannot edit running campaign"):
        lifecycle.update(conn, org, cid, {"name": "changed"})


def test_another_organization_sees_campaign_not_found(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    cid = create_campaign(db, org, number)
    with db.begin() as conn:
        other = lifecycle.add_org(conn, "other-" + str(cid)[:8])
    with db.begin() as conn, pytest.raises(lifecycle.NotFound, match="Campaign not found"):
        lifecycle.pause(conn, other, cid)
    with pytest.raises(lifecycle.NotFound):
        start_campaign(db, other, cid)
