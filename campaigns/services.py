"""Operations shared by the CLI and the HTTP API: each scoped by organization."""

from __future__ import annotations

import uuid
from typing import IO, Any

import redis
import sqlalchemy as sa

from campaigns import lifecycle, recipient_statuses, retry_stats, stats
from campaigns.preflight import run_preflight
from campaigns.ratelimit import LimitUsage
from campaigns.runlock import runner_alive
from campaigns.schema import CAMPAIGN_STATUSES, campaigns
from campaigns.settings import get_settings


def ping_redis() -> None:
    redis.Redis.from_url(get_settings().redis_url or "").ping()


def limit_usage() -> LimitUsage:
    return LimitUsage(redis.Redis.from_url(get_settings().redis_url or ""))


def start_campaign(db: sa.Engine, org: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, Any]:
    """Preflight now (so the caller sees every failed check), then mark running; the flow does the rest."""
    from blocks.whatsapp import load_credentials

    with db.begin() as conn:
        campaign = lifecycle.get(conn, org, campaign_id, lock=True)
        if campaign["status"] not in lifecycle.STARTABLE:  # a state conflict, not a failed check
            raise lifecycle.Conflict(f"Cannot start a {campaign['status']} campaign")
        number = lifecycle.get_number(conn, org, campaign["whatsapp_number_id"])
        pf = run_preflight(
            conn, campaign, number, lambda: load_credentials(number["block_name"], fresh=True),
            ping_redis, usage=limit_usage(),
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
    return stats.progress(conn, campaign, number, get_settings().rate_headroom)


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


MAX_LIST_LIMIT = 200


def list_campaigns(conn: sa.Connection, org: uuid.UUID, status: str | None = None, skip: int = 0,
                   limit: int = 50) -> dict[str, Any]:
    """The organization's campaigns, newest first; offset paging (an organization has hundreds, not millions)."""
    if status is not None and status not in CAMPAIGN_STATUSES:
        raise lifecycle.Invalid(f"status must be one of: {', '.join(CAMPAIGN_STATUSES)} (got {status!r})")
    if skip < 0 or not 1 <= limit <= MAX_LIST_LIMIT:
        raise lifecycle.Invalid(f"skip must be 0 or more and limit between 1 and {MAX_LIST_LIMIT}")
    where = [campaigns.c.organization_id == org]
    if status is not None:
        where.append(campaigns.c.status == status)
    total = conn.execute(sa.select(sa.func.count()).select_from(campaigns).where(*where)).scalar_one()
    rows = conn.execute(sa.select(campaigns).where(*where).order_by(campaigns.c.created_at.desc(), campaigns.c.id)
                        .offset(skip).limit(limit)).mappings().all()
    return {"total": total, "skip": skip, "limit": limit, "campaigns": [dict(r) for r in rows]}


def update_campaign(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID,
                    changes: dict[str, Any]) -> dict[str, Any]:
    """Apply a PATCH (lifecycle.update checks the fields and the number) and return the campaign."""
    lifecycle.update(conn, org, campaign_id, changes)
    return lifecycle.get(conn, org, campaign_id)


def delete_campaign(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID) -> lifecycle.Transition:
    """Campaigns are never deleted (their recipients and statistics stay): deleting one that never started
    cancels it; a started one must be cancelled explicitly, so nobody stops a send by "deleting" it."""
    current = lifecycle.get(conn, org, campaign_id, lock=True)  # held until commit: no start in between
    if current["status"] not in lifecycle.STARTABLE:
        hint = (f"; cancel it with POST /api/v1/campaigns/{campaign_id}/cancel" if current["status"] in
                ("running", "paused") else "; it is kept with its statistics")
        raise lifecycle.Conflict(f"Cannot delete a {current['status']} campaign{hint}")
    return lifecycle.cancel(conn, org, campaign_id)


def record_flow_run(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID, flow_run_id: str) -> None:
    """The run just launched for the campaign, so an operator finds it in the Prefect UI and the scheduler
    knows it is on its way. Not while a runner is alive: the new run will find the campaign taken and end
    at once, and the id must stay the live runner's (the scheduler reads its state)."""
    if runner_alive(conn, campaign_id):
        return
    conn.execute(sa.update(campaigns).where(campaigns.c.id == campaign_id, campaigns.c.organization_id == org)
                 .values(flow_run_id=flow_run_id))
