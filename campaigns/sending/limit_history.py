"""What the number caps and the portfolio window have used, rebuilt from Postgres.

The limiter's counters live in Redis (campaigns.sending.ratelimit); Redis restarted without its data (the embedded
one keeps none) or flushed would let a number start its hour, day or portfolio window again from zero and
exceed its tier. The recipients' rows are the durable truth: a message reached the provider when it has a
sent_at or failed_at, and may have when it is in `sending` and marked in flight (`in_flight_at`, written
before its request can leave): those count from their mark. So when the limiter finds a window's counter
missing, it is seeded from them. Rows in `sending` not marked were claimed and never sent: not counted.
A chunk takes from the caps just before it marks its rows (sending.deliver), so every message the lost
counter held is in these rows, but for the milliseconds of a mark's commit.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from campaigns.store.db import get_engine

# Per campaign of the number: answered sends through ix_recipients_campaign_recent (campaign_id,
# coalesce(sent_at, failed_at)); sends in flight through ix_recipients_campaign_status_id (few rows).
_SENDS = """
    select r.phone, coalesce(r.sent_at, r.failed_at) as at from campaign_recipients r
    join campaigns c on c.id = r.campaign_id join whatsapp_numbers n on n.id = c.whatsapp_number_id
    where {number} and coalesce(r.sent_at, r.failed_at) >= :since
    union all
    select r.phone, r.in_flight_at from campaign_recipients r
    join campaigns c on c.id = r.campaign_id join whatsapp_numbers n on n.id = c.whatsapp_number_id
    where {number} and r.status = 'sending' and r.in_flight_at >= :since
"""

# Counted for several windows at once (a number's minute, hour and day), each from its start.
CAPS_USED = sa.text(
    """
    select count(s.at) from unnest(cast(:starts as timestamptz[])) with ordinality as w(since, i)
    left join ("""
    + _SENDS.format(number="n.provider = :provider and n.phone_number_id = :pnid")
    + """) s
    on s.at >= w.since group by w.i order by w.i
"""
)

PORTFOLIO_USED = sa.text(
    "select s.phone, extract(epoch from max(s.at)) from ("
    + _SENDS.format(number="n.portfolio_id = :pf")
    + ") s group by s.phone"
)


class LimitHistory:
    """Reads what a window used from the recipients' rows (sync: the limiter calls it off its loop)."""

    def __init__(self, db: sa.Engine | None = None) -> None:
        self._db = db

    @property
    def db(self) -> sa.Engine:
        return self._db or get_engine()

    def caps_used(self, number_key: str, since: list[float]) -> list[int]:
        """Messages of the physical number (`provider:phone_number_id`) sent since each of `since` (Unix s)."""
        provider, pnid = number_key.split(":", 1)
        starts = [datetime.fromtimestamp(s, UTC) for s in since]
        params = {"provider": provider, "pnid": pnid, "starts": starts, "since": min(starts)}
        with self.db.connect() as conn:
            return [int(count) for count in conn.execute(CAPS_USED, params).scalars()]

    def portfolio_used(self, portfolio_id: str, since: float) -> dict[str, float]:
        """Each recipient of the portfolio's numbers since `since`, with the time of its last message."""
        with self.db.connect() as conn:
            rows = conn.execute(
                PORTFOLIO_USED, {"pf": uuid.UUID(portfolio_id), "since": datetime.fromtimestamp(since, UTC)}
            ).all()
        return {phone: float(at) for phone, at in rows if at is not None}
