"""The audience in Postgres: which contacts an audience type loads, and the rows it writes (who is skipped
and why, decided without a database: tests/unit/test_audience_rules.py)."""

from __future__ import annotations

from campaigns.audience.build import load_contacts
from campaigns.control import tenancy
from campaigns.sending.runner import build_audience_once
from tests.helpers import add_contacts, add_sandbox_number, create_campaign, recipients


def test_tags_any_all_and_explicit_lists_are_scoped_by_organization(db, org):

    ids = add_contacts(
        db,
        org,
        [
            {"phone": "+5511911111111", "tags": ["vip", "sp"]},
            {"phone": "+5511922222222", "tags": ["vip"]},
            {"phone": "+5511933333333", "tags": ["rj"]},
        ],
    )
    with db.begin() as conn:
        other = tenancy.add_org(conn, "another-tenant-" + str(org)[:8])
    foreign = add_contacts(db, other, [{"phone": "+5511944444444", "tags": ["vip"]}])
    with db.connect() as conn:
        assert load_contacts(conn, org, "tags", {"tags": ["vip"]}).height == 2
        assert load_contacts(conn, org, "tags", {"tags": ["vip", "sp"], "match": "all"}).height == 1
        assert load_contacts(conn, org, "tags", {"tags": ["sp", "rj"], "match": "any"}).height == 2
        picked = load_contacts(conn, org, "contacts", {"contact_ids": [str(ids[2]), str(foreign[0])]})
        assert picked["contact_id"].to_list() == [str(ids[2])]
        assert load_contacts(conn, org, "all_contacts", {}).height == 3


def test_every_contact_gets_a_row_written_once(db, org, sandbox):
    number = add_sandbox_number(db, org, sandbox)
    contacts = add_contacts(
        db,
        org,
        [
            {"phone": "+5511911111111", "name": "Ana"},
            {"phone": "not a phone"},
            {"phone": "+5511922222222", "opted_out": True},
            {"phone": "+5511911111111", "name": "Ana again"},
            {"phone": "+5511933333333", "in_conversation": True},
        ],
    )
    cid = create_campaign(db, org, number, skip_active_conversations=True)
    counts = build_audience_once(db, cid, "sandbox")
    again = build_audience_once(db, cid, "sandbox")
    assert counts == {"pending": 1, "invalid_number": 1, "opt_out": 1, "duplicate": 1, "active_conversation": 1}
    assert again == {}
    rows = recipients(db, cid)
    assert len(rows) == 5
    reason = {r["contact_id"]: r["skip_reason"] for r in rows}
    assert [reason[c] for c in contacts] == [None, "invalid_number", "opt_out", "duplicate", "active_conversation"]
    assert [r["contact_id"] for r in rows] == contacts  # small audiences are sent in contact order
