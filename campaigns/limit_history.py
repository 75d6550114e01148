"""What the number caps and the portfolio window have used, rebuilt from Postgres.

The limiter's counters live in Redis (campaigns.ratelimit); Redis restarted without its data (the embedded
one keeps none) or flushed would let a number start its hour, day or portfolio window again from zero and
exceed its tier. The recipients' rows are the durable truth: a message reached the provider when it has a
sent_at or failed_at. So when the limiter finds a window's counter missing, it is seeded from them. Rows in
`sending` are not counted: most are the claims about to be sent; the few whose request was in flight when
Redis went away (at most the batches then in flight) are the margin this leaves.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from campaigns.db import get_engine

# Both use ix_recipients_campaign_recent (campaign_id, coalesce(sent_at, failed_at)) per campaign of the number.
CAP_USED = sa.text("""
    select count(*) from campaign_recipients r
    join campaigns c on c.id = r.campaign_id
    join whatsapp_numbers n on n.id = c.whatsapp_number_id
    where n.provider = :provider and n.phone_number_id = :pnid
      and coalesce(r.sent_at, r.failed_at) >= :since
""")

PORTFOLIO_USED = sa.text("""
    select r.phone, extract(epoch from max(coalesce(r.sent_at, r.failed_at)))
    from campaign_recipients r
    join campaigns c on c.id = r.campaign_id
    join whatsapp_numbers n on n.id = c.whatsapp_number_id
    where n.portfolio_id = :pf
      and coalesce(r.sent_at, r.failed_at) >= :since
    group by r.phone
""")


class LimitHistory:
    """Reads what a window used from the recipients' rows (sync: the limiter calls it off its loop)."""

    def __init__(self, db: sa.Engine | None = None) -> None:
        self._db = db

    @property
    def db(self) -> sa.Engine:
        return self._db or get_engine()

    def cap_used(self, number_key: str, since: float) -> int:
        """Messages of the physical number (`provider:phone_number_id`) sent since `since` (Unix s)."""
        provider, pnid = number_key.split(":", 1)
        with self.db.connect() as conn:
            return int(conn.execute(CAP_USED, {"provider": provider, "pnid": pnid,
                                               "since": datetime.fromtimestamp(since, UTC)}).scalar_one())

    def portfolio_used(self, portfolio_id: str, since: float) -> dict[str, float]:
        """Each recipient of the portfolio's numbers since `since`, with the time of its last message."""
        with self.db.connect() as conn:
            rows = conn.execute(PORTFOLIO_USED, {"pf": uuid.UUID(portfolio_id),
                                                 "since": datetime.fromtimestamp(since, UTC)}).all()
        return {phone: float(at) for phone, at in rows if at is not None}
