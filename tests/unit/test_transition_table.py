"""The recipient transition table on its own (campaigns/store/recipients.py): a total order, forward-only
webhooks, terminal states, and the SQL generated from it equal to what the writers used to spell out by
hand. tests/test_transitions.py runs each writer on Postgres against the same table."""

from __future__ import annotations

import pytest

from campaigns.store import recipients as r
from campaigns.store.schema import RECIPIENT_STATUSES
from campaigns.webhooks import parse

# The table written out once more, move by move, as the code behaved before it had a table: a change to
# WRITERS must be a change here too, on purpose.
EXPECTED = {
    "audience": {(None, "pending"), (None, "skipped")},
    "claim": {("pending", "sending")},
    "record": {("sending", s) for s in ("sending", "sent", "failed", "pending", "skipped", "cancelled")},
    "cancel": {("pending", "cancelled")},
    "reconcile": {("sending", "pending"), ("sending", "failed"), ("sending", "cancelled")},
    "ingest": {
        *{(s, t) for s in ("pending", "sending") for t in ("sent", "delivered", "read", "failed")},
        *{("sent", t) for t in ("sent", "delivered", "read", "failed")},
        *{("delivered", t) for t in ("delivered", "read", "failed")},
        ("read", "read"),
        ("read", "failed"),
        ("failed", "failed"),
    },
    "retry_failed": {("failed", "pending")},
}


def test_the_table_is_the_one_written_out_above():
    assert {name: set(w.moves) for name, w in r.WRITERS.items()} == EXPECTED


def test_the_statuses_are_the_schemas():
    assert r.STATUSES == RECIPIENT_STATUSES


def test_rank_is_a_total_order_from_pending_to_failed():
    ranked = sorted(r.RANK, key=r.RANK.__getitem__)
    assert ranked == ["pending", "sending", "sent", "delivered", "read", "failed"]
    assert len(set(r.RANK.values())) == len(r.RANK)  # no two statuses share a rank
    assert set(r.STATUSES) - set(r.RANK) == {"skipped", "cancelled"}  # outside the order


def test_every_move_is_between_known_statuses():
    for w in r.WRITERS.values():
        for source, target in w.moves:
            assert source is None or source in r.STATUSES, (w.name, source)
            assert target in r.STATUSES, (w.name, target)


def test_status_webhooks_never_move_a_row_backwards():
    for source, target in r.INGEST.moves:
        assert r.RANK[target] >= r.RANK[source], (source, target)
    # ...and never touch a row outside the order
    assert not {s for s, _ in r.INGEST.moves} & {"skipped", "cancelled"}


def test_webhooks_write_only_what_a_webhook_can_say():
    assert set(r.INGEST.targets()) == set(r.WEBHOOK_STATUSES) == {"sent", "delivered", "read", "failed"}
    assert set(r.WEBHOOK_RANK) == {"sent", "delivered", "read", "played", "failed"}
    assert r.WEBHOOK_RANK["played"] == r.RANK["read"]


def test_terminal_states():
    left = {source for w in r.WRITERS.values() for source, target in w.moves if source != target}
    assert set(r.STATUSES) - left == {"skipped", "cancelled"}  # nothing moves a row out of these
    # failed is final but for the operator's retry; read moves only to failed (a failure reported late)
    assert {w.name for w in r.WRITERS.values() if any(s == "failed" != t for s, t in w.moves)} == {"retry_failed"}
    assert {t for w in r.WRITERS.values() for s, t in w.moves if s == "read" != t} == {"failed"}


def test_only_a_claimed_row_is_recorded_or_reconciled_and_only_a_batch_sends():
    assert r.RECORD.sources() == r.RECONCILE.sources() == ("sending",)
    assert {w.name for w in r.WRITERS.values() if "sending" in w.targets()} == {"claim", "record"}


def test_every_status_is_reachable_from_the_audience():
    reached, frontier = set(), {t for _, t in r.AUDIENCE.moves}
    while frontier:
        reached |= frontier
        frontier = {t for w in r.WRITERS.values() for s, t in w.moves if s in reached} - reached
    assert reached == set(r.STATUSES)


def test_the_parser_ranks_with_the_table():
    assert parse.RANK is r.WEBHOOK_RANK
    assert parse.RANK == {"sent": 2, "delivered": 3, "read": 4, "played": 4, "failed": 5}  # as before the table


def _flat(sql: str) -> str:
    return " ".join(sql.split())


def test_the_generated_sql_is_what_the_writers_spelled_out_before():
    assert r.may_move(r.CLAIM, "r.status") == "r.status = 'pending'"
    assert r.target(r.CLAIM) == "'sending'"
    assert r.may_move(r.RECORD, "r.status") == "r.status = 'sending'"
    assert r.may_move(r.CANCEL) == "status = 'pending'" and r.target(r.CANCEL) == "'cancelled'"
    assert r.may_move(r.RETRY_FAILED) == "status = 'failed'" and r.target(r.RETRY_FAILED) == "'pending'"
    assert (
        r.may_move(r.INGEST, "r.status") == "r.status in ('pending', 'sending', 'sent', 'delivered', 'read', 'failed')"
    )
    assert r.WEBHOOK_RANK_CASE == (
        "case v.status when 'sent' then 2 when 'delivered' then 3 when 'read' then 4 when 'played' then 4"
        " when 'failed' then 5 end"
    )
    assert r.ROW_RANK_CASE == (
        "case r.status when 'sent' then 2 when 'delivered' then 3 when 'read' then 4 when 'failed' then 5 else 1 end"
    )
    assert r.INGEST_STATUS_BY_RANK == "(array['sending', 'sent', 'delivered', 'read', 'failed'])"
    assert "case when v.cancelled then 'cancelled' when v.exhausted then 'failed' else 'pending' end" in _flat(
        r.REQUEUE_SQL.text
    )
    assert "min(v.at) filter (where v.status in ('read', 'played')) as read_at" in _flat(r.APPLY_SQL.text)


def test_a_writer_cannot_be_given_a_status_the_table_refuses():
    with pytest.raises(AssertionError, match="reconcile may not write sent"):
        r.case_target(r.RECONCILE, [("true", "sent")], "pending")
    with pytest.raises(ValueError, match="sent"):
        r.check_audience_statuses(["pending", "sent"])
    r.check_audience_statuses(["pending", "skipped"])
