"""Raw webhook events are deleted once applied and older than the retention; those an operator may still need
are kept, whatever their age (campaigns/webhooks/retention.py)."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from campaigns.webhooks.retention import prune_expired_events, prune_processed_events


def _event(db, state: str, age_days: float) -> int:
    with db.begin() as conn:
        return conn.execute(
            sa.text("""
            insert into webhook_events (provider, body, state, received_at)
            values ('meta', '{}', :state, now() - make_interval(secs => :s)) returning id
        """),
            {"state": state, "s": age_days * 86400},
        ).scalar_one()


def _left(db, ids: list[int]) -> set[int]:
    with db.connect() as conn:
        return set(conn.execute(sa.text("select id from webhook_events where id = any(:ids)"), {"ids": ids}).scalars())


def test_applied_events_past_the_retention_go_and_every_other_stays(db):
    old_applied = [_event(db, "processed", 8) for _ in range(25)]
    kept = [
        _event(db, "processed", 6),  # applied, within the week
        _event(db, "pending", 30),  # not applied yet: ingestion still owes it
        _event(db, "unparseable", 30),  # for an operator to read
        _event(db, "quarantined", 30),
        _event(db, "orphaned", 30),
    ]

    deleted = prune_processed_events(db, timedelta(days=7), batch=10)  # three batches, the last partial

    assert _left(db, old_applied + kept) == set(kept)
    assert deleted >= 25  # (events other tests left past the retention may go too)
    assert prune_processed_events(db, timedelta(days=7)) == 0


def test_a_retention_of_zero_keeps_every_event(db, monkeypatch):
    from campaigns.settings import get_settings

    old = _event(db, "processed", 400)
    monkeypatch.setenv("WEBHOOK_RETENTION_DAYS", "0")
    get_settings.cache_clear()
    try:
        assert prune_expired_events(db) == 0 and _left(db, [old]) == {old}
    finally:
        monkeypatch.delenv("WEBHOOK_RETENTION_DAYS")
        get_settings.cache_clear()
    assert prune_expired_events(db) >= 1 and _left(db, [old]) == set()
