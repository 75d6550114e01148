"""Settling sends whose outcome is unknown, before anything is resent.

A row is left in `sending` when its worker died mid-batch (kill -9, OOM, lost machine) or when the
provider timed out after the request left. The provider may or may not have accepted it. Meta (and the
sandbox) echo our recipient id in `biz_opaque_callback_data` on every status webhook, so:

1. Ingest every stored webhook event: a row with a status webhook becomes sent/delivered/read/failed.
2. A row in `sending` never marked in flight (`in_flight_at`, committed by the send engine before a
   request can leave: sending.claim.InFlightMarks) was claimed and never sent: it goes back to `pending` at once,
   and the claim does not count as an attempt. A worker killed with hundreds of rows claimed ahead of its
   pace leaves only its last chunks to wait.
3. A marked row with no status webhook for `grace_seconds` since its request left (or since its batch
   recorded it unknown) was almost surely never accepted, and goes back to `pending` to be sent again;
   that try counted as an attempt, so a row that keeps ending unknown (131000 every time) fails with
   "retries exhausted" once it has used its retries, instead of being resent forever.
4. A younger one waits (the flow sends everything else meanwhile and checks again at the end).

The policy for an outcome that stays unknown is therefore "resend after the grace period"
(`RECONCILE_GRACE_SECONDS`, default 120 s; Meta's `sent` webhook normally arrives within seconds). A
duplicate can only happen if a status webhook is delayed by more than the grace period; raise it for
more safety, lower it for faster recovery. Only the one runner of a campaign reconciles it, with no
batch in flight, or someone who found no runner alive (runlock.runner_alive), so rows that are really
being sent are never touched. Should a runner that lost its lock still have a batch in flight, the claim's
token keeps it from sending or recording the rows requeued under it (sending.claim.MARK_IN_FLIGHT,
store.recipients.record). The moves themselves (sending → pending, failed, cancelled) are store.recipients'.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from campaigns.store import recipients
from campaigns.webhooks.ingest import ingest_pending


@dataclass
class ReconcileResult:
    settled: int  # unknown rows that a status webhook settled
    requeued: int  # unknown rows with no evidence past the grace period: back to pending
    waiting: int  # unknown rows still inside the grace period
    next_check_in: float  # seconds until the oldest waiting row passes the grace period


def unknown_count(conn: sa.Connection, campaign_id: uuid.UUID) -> int:
    return conn.execute(
        sa.text("select count(*) from campaign_recipients where campaign_id = :c and status = 'sending'"),
        {"c": campaign_id},
    ).scalar_one()


def reconcile(db: sa.Engine, campaign_id: uuid.UUID, grace_seconds: float) -> ReconcileResult:
    """Settle the campaign's rows in `sending`; the caller is its runner between waves, or found no runner."""
    with db.connect() as conn:
        before = unknown_count(conn, campaign_id)
    if before == 0:
        return ReconcileResult(0, 0, 0, 0.0)
    ingest_pending(db)
    with db.begin() as conn:
        _lock_campaign(conn, campaign_id)
        after_ingest = unknown_count(conn, campaign_id)
        requeued = recipients.requeue_unknown(conn, campaign_id, grace_seconds)
        oldest = conn.execute(
            sa.text("""
            select extract(epoch from (min(greatest(claimed_at, in_flight_at)) + make_interval(secs => :g) - now()))
            from campaign_recipients where campaign_id = :c and status = 'sending'
        """),
            {"c": campaign_id, "g": grace_seconds},
        ).scalar()
    waiting = after_ingest - requeued
    return ReconcileResult(before - after_ingest, requeued, waiting, max(float(oldest or 0.0), 0.0))


def _lock_campaign(conn: sa.Connection, campaign_id: uuid.UUID) -> None:
    """Hold the campaign's row against a concurrent cancel until commit: the cancel's sweep of pending rows
    would miss rows requeued by a transaction it cannot see yet, leaving a cancelled campaign pending rows."""
    conn.execute(sa.text("select 1 from campaigns where id = :c for share"), {"c": campaign_id})


def cancelled_with_unknown(conn: sa.Connection, grace_seconds: float) -> list[uuid.UUID]:
    """Cancelled campaigns still holding rows in `sending` never sent, or of unknown outcome past the grace."""
    return list(
        conn.execute(
            sa.text(f"""
        select distinct r.campaign_id from campaigns c join campaign_recipients r on r.campaign_id = c.id
        where c.status = 'cancelled' and {recipients.SETTLE_NOW}
    """),
            {"g": grace_seconds},
        ).scalars()
    )


def settle_cancelled(db: sa.Engine, campaign_id: uuid.UUID, grace_seconds: float) -> int:
    """A cancelled campaign's runner stops with the cancel, so nobody reconciles the rows it left in flight:
    those never sent, and those with no status webhook within the grace period, are cancelled, as its runner
    would have done. The caller found no runner alive, and has ingested the stored webhooks first (once for
    all the campaigns it settles: a status that arrived settles its row as sent, not cancelled)."""
    with db.begin() as conn:
        _lock_campaign(conn, campaign_id)
        return recipients.requeue_unknown(conn, campaign_id, grace_seconds)
