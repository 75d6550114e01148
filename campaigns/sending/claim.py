"""A batch's claim on its rows, and the claim's token.

Exactly-once rests on Postgres, not on Prefect: a batch claims its rows in one statement (pending →
sending, FOR UPDATE SKIP LOCKED: campaigns.store.recipients.claim), so a retried task or a second flow run
cannot claim them again. The claim's time is its token: rows are marked in flight (`in_flight_at`, one
UPDATE, committed) before the first of them can leave, and the mark and the record touch only rows still
held by this claim, so a batch that lost its rows (another runner requeued them) neither sends nor records
them. A row in `sending` without the mark was certainly never sent (campaigns.sending.reconcile).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from campaigns.sending.providers import OutboundMessage
from campaigns.store import recipients
from campaigns.store.db import get_engine

log = logging.getLogger(__name__)

# Rows about to leave, marked before any of their requests can: only rows this claim still holds. (Not a
# status write: the row stays `sending`.)
MARK_IN_FLIGHT = sa.text(f"""
    update campaign_recipients set in_flight_at = now()
    where id = any(cast(:ids as bigint[])) and {recipients.status_in("status", (recipients.SENDING,))}
      and claimed_at = :claimed_at
    returning id
""")


@dataclass
class Claimed:
    id: int
    phone: str
    attempts: int
    name: str | None
    attributes: dict[str, Any]
    opted_out: bool
    contact_deleted: bool = False
    rate_tries: int = 0  # earlier tries refused for a rate limit (they do not spend attempts)
    claimed_at: datetime | None = None  # the claim's time, the same for the whole batch: its token


def claim(conn: sa.Connection, campaign_id: uuid.UUID, limit: int, probe: bool = False) -> list[Claimed]:
    """Claim up to `limit` due rows. While the campaign waits for its provider only a probe claims."""
    rows = recipients.claim(conn, campaign_id, limit, probe)
    return [
        Claimed(
            r.id,
            r.phone,
            r.attempts,
            r.name,
            r.attributes or {},
            r.opted_out_at is not None,
            contact_deleted=r.contact_exists is None,
            rate_tries=r.rate_tries,
            claimed_at=r.claimed_at,
        )
        for r in sorted(rows, key=lambda r: r.id)
    ]


def mark_in_flight(db: sa.Engine, ids: list[int], claimed_at: datetime) -> set[int]:
    """Mark rows in flight and commit, before any of their requests may leave. Returns those marked: a row
    missing from it is no longer this claim's (a runner that found this batch's runner gone requeued it)."""
    with db.begin() as conn:
        return set(conn.execute(MARK_IN_FLIGHT, {"ids": ids, "claimed_at": claimed_at}).scalars())


class InFlightMarks:
    """The batch's rows marked in flight. Nothing is sent before its mark has committed: a request written
    to the socket first would look never-sent to recovery, and be sent twice."""

    def __init__(self, claimed_at: datetime) -> None:
        self.claimed_at = claimed_at
        self.marked: set[int] = set()

    async def mark_next(self, queue: deque[OutboundMessage], n: int) -> bool:
        """Mark the next `n` messages of the queue; messages whose rows this claim lost leave the queue
        unsent. False when sending must stop (Postgres away)."""
        ids = [m.recipient_id for m in itertools.islice(queue, n) if m.recipient_id not in self.marked]
        if not ids:
            return True
        try:
            marked = await asyncio.to_thread(mark_in_flight, get_engine(), ids, self.claimed_at)
        except Exception:  # unmarked, they are certainly not sent: back to pending with the batch
            log.exception("could not mark %d messages in flight; they are not sent in this batch", len(ids))
            return False
        self.marked |= marked
        if lost := set(ids) - marked:
            log.warning("%d rows of this batch were requeued by another runner; not sent here", len(lost))
            kept = [m for m in queue if m.recipient_id not in lost]
            queue.clear()
            queue.extend(kept)
        return True

    def ready(self, msg: OutboundMessage) -> bool:
        return msg.recipient_id in self.marked
