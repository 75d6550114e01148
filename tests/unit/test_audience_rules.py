"""Who gets a pending row and who is skipped, and why (campaigns/audience/build.py classify): pure Polars,
a frame of contacts in, each one's status and skip reason out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from campaigns.audience.build import AudienceRules, classify, contacts_query, counts

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def frame(rows: list[dict]) -> pl.DataFrame:
    base = {
        "contact_id": "x",
        "phone": "+5511900000000",
        "opted_out": False,
        "in_conversation": False,
        "last_inbound_at": None,
    }
    data = [{**base, "contact_id": f"c{i}", **r} for i, r in enumerate(rows)]
    return pl.DataFrame(
        data,
        schema={
            "contact_id": pl.Utf8,
            "phone": pl.Utf8,
            "opted_out": pl.Boolean,
            "in_conversation": pl.Boolean,
            "last_inbound_at": pl.Datetime("us", "UTC"),
        },
    )


def reasons(out: pl.DataFrame) -> list[str | None]:
    return out["skip_reason"].to_list()


def test_each_skip_reason():
    out = classify(
        frame(
            [
                {"phone": "+5511911111111"},
                {"phone": "12345"},
                {"phone": None},
                {"phone": "+5511922222222", "opted_out": True},
                {"phone": "+5511933333333", "in_conversation": True},
                {"phone": "+5511911111111"},
            ]
        ),
        AudienceRules(respect_opt_out=True, skip_active_conversations=True),
        NOW,
    )
    assert reasons(out) == [None, "invalid_number", "invalid_number", "opt_out", "active_conversation", "duplicate"]
    assert out["status"].to_list() == ["pending", "skipped", "skipped", "skipped", "skipped", "skipped"]


def test_rules_that_are_off_skip_nobody():
    out = classify(
        frame([{"opted_out": True, "phone": "+5511911111111"}, {"in_conversation": True, "phone": "+5511922222222"}]),
        AudienceRules(respect_opt_out=False, skip_active_conversations=False),
        NOW,
    )
    assert reasons(out) == [None, None]


def test_opt_out_belongs_to_the_phone_not_the_row():
    out = classify(
        frame([{"phone": "+5511911111111"}, {"phone": "+5511911111111", "opted_out": True}]), AudienceRules(), NOW
    )
    assert reasons(out) == ["opt_out", "opt_out"]


def test_free_form_text_needs_an_open_24h_window():
    out = classify(
        frame(
            [
                {"phone": "+5511911111111", "last_inbound_at": NOW - timedelta(hours=2)},
                {"phone": "+5511922222222", "last_inbound_at": NOW - timedelta(hours=25)},
                {"phone": "+5511933333333"},
            ]
        ),
        AudienceRules(require_window=True),
        NOW,
    )
    assert reasons(out) == [None, "outside_window", "outside_window"]


ALL_RULES = AudienceRules(respect_opt_out=True, skip_active_conversations=True, require_window=True)


@pytest.mark.parametrize(
    ("contact", "reason"),
    [
        ({"phone": "12345", "opted_out": True, "in_conversation": True}, "invalid_number"),  # first: no phone at all
        ({"opted_out": True, "in_conversation": True}, "opt_out"),  # then the person's own choice
        ({"in_conversation": True}, "active_conversation"),
        ({}, "outside_window"),
        ({"last_inbound_at": NOW - timedelta(hours=1)}, None),
    ],
)
def test_a_contact_skipped_for_several_reasons_is_skipped_for_the_first_that_applies(contact, reason):
    assert reasons(classify(frame([contact]), ALL_RULES, NOW)) == [reason]


@pytest.mark.parametrize(
    ("hours_ago", "reason"),
    [
        (0, None),
        (23.99, None),
        (24, None),
        (24.01, "outside_window"),
        (None, "outside_window"),
    ],
)
def test_the_24h_window_is_counted_from_the_contacts_last_message(hours_ago, reason):
    inbound = None if hours_ago is None else NOW - timedelta(hours=hours_ago)
    out = classify(
        frame([{"phone": "+5511911111111", "last_inbound_at": inbound}]), AudienceRules(require_window=True), NOW
    )
    assert reasons(out) == [reason]


def test_only_an_eligible_contact_makes_a_later_one_with_its_phone_a_duplicate():
    out = classify(
        frame(
            [
                {"phone": "+5511911111111", "in_conversation": True},  # skipped for its own reason...
                {"phone": "+5511911111111"},  # ...so this one is the first eligible: it gets the message
                {"phone": "+5511911111111"},
                {"phone": "+5511922222222"},
            ]
        ),
        AudienceRules(skip_active_conversations=True),
        NOW,
    )
    assert reasons(out) == ["active_conversation", None, "duplicate", None]


def test_an_empty_audience_classifies_to_an_empty_frame():
    out = classify(frame([]), ALL_RULES, NOW)
    assert out.height == 0 and {"status", "skip_reason"} <= set(out.columns)


def test_the_counts_name_pending_and_each_skip_reason():
    out = classify(
        frame([{"phone": "+5511911111111"}, {"phone": "+5511911111111"}, {"phone": "x"}, {"phone": "+5511922222222"}]),
        AudienceRules(),
        NOW,
    )
    assert counts(out) == {"pending": 2, "duplicate": 1, "invalid_number": 1}


@pytest.mark.parametrize(
    ("audience_type", "audience_filter", "where", "params"),
    [
        ("all_contacts", {}, "", {}),
        ("tags", {"tags": ["vip", "sp"]}, " and tags && %(tags)s::text[]", {"tags": ["vip", "sp"]}),  # any
        ("tags", {"tags": ["vip"], "match": "all"}, " and tags @> %(tags)s::text[]", {"tags": ["vip"]}),
        (
            "contacts",
            {"contact_ids": ["00000000-0000-0000-0000-000000000001"]},
            " and id = any(%(ids)s::uuid[])",
            {"ids": ["00000000-0000-0000-0000-000000000001"]},
        ),
    ],
)
def test_each_audience_type_narrows_the_contacts_with_bound_parameters(audience_type, audience_filter, where, params):
    assert contacts_query(audience_type, audience_filter) == (where, params)


def test_an_unknown_audience_type_is_refused_naming_it():
    with pytest.raises(ValueError, match="audience_type: unknown audience type 'everyone'"):
        contacts_query("everyone", {})
