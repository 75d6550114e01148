"""Operations shared by the CLI and the HTTP API: each scoped by organization."""

from __future__ import annotations

import uuid
from typing import IO, Any

import redis
import sqlalchemy as sa

from campaigns import lifecycle, recipient_statuses, retry_stats, stats
from campaigns.preflight import run_preflight
from campaigns.ratelimit import PortfolioLimit, portfolio_usage
from campaigns.settings import get_settings


def portfolio_usage_now(limit: PortfolioLimit) -> int:
    return portfolio_usage(redis.Redis.from_url(get_settings().redis_url or ""), limit)


def start_campaign(db: sa.Engine, org: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, Any]:
    """Preflight now (so the caller sees every failed check), then mark running; the flow does the rest."""
    from blocks.whatsapp import load_credentials

    settings = get_settings()
    with db.begin() as conn:
        campaign = lifecycle.get(conn, org, campaign_id, lock=True)
        number = lifecycle.get_number(conn, org, campaign["whatsapp_number_id"])
        pf = run_preflight(
            conn, campaign, number, lambda: load_credentials(number["block_name"], fresh=True),
            lambda: redis.Redis.from_url(settings.redis_url or "").ping(), portfolio_usage=portfolio_usage_now,
        )
        if not pf.ok:
            raise lifecycle.Invalid("Preflight failed", pf.failures())
        lifecycle.mark_running(conn, org, campaign_id)
        started = lifecycle.get(conn, org, campaign_id)
    return {
        "campaign_id": str(campaign_id),
        "status": started["status"],
        "started_at": started["started_at"],
        "total_recipients": pf.audience_size,
        "message": "Campaign started.",
        "warnings": pf.warnings(),
    }


def stats_of(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, Any]:
    return stats.stats(conn, lifecycle.get(conn, org, campaign_id))


def retry_stats_of(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, Any]:
    return retry_stats.retry_stats(conn, lifecycle.get(conn, org, campaign_id))


def progress_of(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, Any]:
    campaign = lifecycle.get(conn, org, campaign_id)
    number = lifecycle.get_number(conn, org, campaign["whatsapp_number_id"])
    return stats.progress(conn, campaign, number["mps"], get_settings().rate_headroom)


def recipients_of(
    conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID, status: str | None = None,
    after: int | str | None = None, page_size: int = recipient_statuses.DEFAULT_PAGE_SIZE,
) -> dict[str, Any]:
    """A page of per-contact statuses; "Campaign not found" for another organization's campaign."""
    lifecycle.get(conn, org, campaign_id)
    return recipient_statuses.page(conn, org, campaign_id, status, after=after, page_size=page_size)


def export_recipients(
    conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID, status: str | None, out: IO[bytes]
) -> int:
    """Every matching recipient as CSV to `out` (streamed); returns how many rows were written."""
    lifecycle.get(conn, org, campaign_id)
    return recipient_statuses.export_csv(conn, org, campaign_id, status, out)
