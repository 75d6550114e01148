"""How long raw webhook events are kept once applied.

Every message brings about three status webhooks (sent, delivered, read), each stored raw in
`webhook_events` before it is answered: a platform's table would grow without end. Events applied
(`processed`) are deleted once older than `webhook_retention_days`; those an operator may still need
(unparseable, quarantined, orphaned, and any still pending) are kept. The statuses they carried live on
in `campaign_recipients`.

Deleted in batches of BATCH rows, each its own short transaction, found through a BRIN index on
`received_at` (events arrive in time order, so the index is a few pages): the receiver's inserts and
ingestion's updates never wait behind one long delete.
"""

from __future__ import annotations

import time
from datetime import timedelta

import sqlalchemy as sa

BATCH = 10_000  # rows a statement deletes: tens of milliseconds of locks, measured in bench/retention.py


def prune_processed_events(db: sa.Engine, older_than: timedelta, batch: int = BATCH) -> int:
    """Delete applied events received more than `older_than` ago, a batch at a time; how many were deleted."""
    cutoff_seconds = older_than.total_seconds()
    deleted = 0
    while True:
        with db.begin() as conn:
            n = conn.execute(
                sa.text("""
                delete from webhook_events where id in (
                    select id from webhook_events
                    where received_at < now() - make_interval(secs => :s) and state = 'processed'
                    limit :n
                )
            """),
                {"s": cutoff_seconds, "n": batch},
            ).rowcount
        deleted += n
        if n < batch:
            return deleted
        time.sleep(0)  # let other threads of this process in between batches


def prune_expired_events(db: sa.Engine) -> int:
    """prune_processed_events with the configured retention (WEBHOOK_RETENTION_DAYS; 0 keeps them all)."""
    from campaigns.settings import get_settings

    days = get_settings().webhook_retention_days
    return prune_processed_events(db, timedelta(days=days)) if days else 0
