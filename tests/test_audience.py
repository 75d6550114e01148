"""The audience step: who gets a pending row, who is skipped and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from campaigns.audience.build import AudienceRules, classify, load_contacts
from campaigns.control import tenancy
from campaigns.sending.runner import build_audience_once
from tests.helpers import add_contacts, add_sandbox_number, create_campaign, recipients

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def frame(rows: list[dict]) -> pl.DataFrame:
    base = {"contact_id": "x", "phone": "+5511900000000", "opted_out": False, "in_conversation": False,
            "last_inbound_at": None}
    data = [{**base, "contact_id": f"c{i}", **r} for i, r in enumerate(rows)]
    return pl.DataFrame(data, schema={"contact_id": pl.Utf8, "phone": pl.Utf8, "opted_out": pl.Boolean,
                                      "in_conversation": pl.Boolean, "last_inbound_at": pl.Datetime("us", "UTC")})


def reasons(out: pl.DataFrame) -> list[str | None]:
    return out["skip_reason"].to_list()


def test_each_skip_reason():
    out = classify(frame([
        {"phone": "+5511911111111"},
        {"phone": "12345"},
        {"phone": None},
        {"phone": "+5511922222222", "opted_out": True},
        {"phone": "+5511933333333", "in_conversation": True},
        {"phone": "+5511911111111"},
    ]), AudienceRules(respect_opt_out=True, skip_active_conversations=True), NOW)
    assert reasons(out) == [None, "invalid_number", "invalid_number", "opt_out", "active_conversation", "duplicate"]
    assert out["status"].to_list() == ["pending", "skipped", "skipped", "skipped", "skipped", "skipped"]


def test_rules_that_are_off_skip_nobody():
    out = classify(frame([{"opted_out": True, "phone": "+5511911111111"},
                          {"in_conversation": True, "phone": "+5511922222222"}]),
                   AudienceRules(respect_opt_out=False, skip_active_conversations=False), NOW)
    assert reasons(out) == [None, None]


def test_opt_out_belongs_to_the_phone_not_the_row():
    out = classify(frame([{"phone": "+5511911111111"}, {"phone": "+5511911111111", "opted_out": True}]),
                   AudienceRules(), NOW)
    assert reasons(out) == ["opt_out", "opt_out"]


def test_free_form_text_needs_an_open_24h_window():
    out = classify(frame([
        {"phone": "+5511911111111", "last_inbound_at": NOW - timedelta(hours=2)},
        {"phone": "+5511922222222", "last_inbound_at": NOW - timedelta(hours=25)},
        {"phone": "+5511933333333"},
    ]), AudienceRules(require_window=True), NOW)
    assert reasons(out) == [None, "outside_window", "outside_window"]


def test_tags_any_all_and_explicit_lists_are_scoped_by_organization(db, org):

    ids = add_contacts(db, org, [
        {"phone": "+5511911111111", "tags": ["vip", "sp"]},
        {"phone": "+5511922222222", "tags": ["vip"]},
        {"phone": "+5511933333333", "tags": ["rj"]},
    ])
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
    contacts = add_contacts(db, org, [
        {"phone": "+5511911111111", "name": "Ana"},
        {"phone": "not a phone"},
        {"phone": "+5511922222222", "opted_out": True},
        {"phone": "+5511911111111", "name": "Ana again"},
        {"phone": "+5511933333333", "in_conversation": True},
    ])
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
