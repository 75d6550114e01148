"""Operations shared by the CLI and the HTTP API: each scoped by organization."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import redis
import sqlalchemy as sa

from campaigns.control import lifecycle
from campaigns.control.preflight import run_preflight
from campaigns.control.runs import LoadCredentials, Runs
from campaigns.control.tenancy import get_number
from campaigns.errors import Conflict, Invalid
from campaigns.reporting import recipient_statuses, retry_stats, stats
from campaigns.sending.ratelimit import LimitUsage
from campaigns.settings import get_settings
from campaigns.store.db import iso_z
from campaigns.store.runlock import runner_alive
from campaigns.store.schema import CAMPAIGN_STATUSES, campaigns

log = logging.getLogger(__name__)
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]  # a run logger in flows, the module's elsewhere


def ping_redis() -> None:
    redis.Redis.from_url(get_settings().redis_url or "").ping()


def limit_usage() -> LimitUsage:
    return LimitUsage(redis.Redis.from_url(get_settings().redis_url or ""))


def start_campaign(
    db: sa.Engine,
    org: uuid.UUID,
    campaign_id: uuid.UUID,
    *,
    credentials: LoadCredentials,
    runs: Runs,
    on_started: Callable[[sa.Connection, int], None] | None = None,
) -> dict[str, Any]:
    """Preflight now (so the caller sees every failed check; `credentials` reads the number's, to ask its
    provider), then mark running; the flow does the rest. A scheduled campaign's waiting run is dropped
    from `runs`: it is not needed any more."""
    with db.begin() as conn:
        campaign = lifecycle.get(conn, org, campaign_id, lock=True)
        if campaign["status"] not in lifecycle.STARTABLE:  # a state conflict, not a failed check
            raise Conflict(f"Cannot start a {campaign['status']} campaign")
        number = get_number(conn, org, campaign["whatsapp_number_id"])
        pf = run_preflight(
            conn, campaign, number, lambda: credentials(number["block_name"]), ping_redis, usage=limit_usage()
        )
        if not pf.ok:
            raise Invalid("Preflight failed", pf.failures())
        lifecycle.mark_running(conn, org, campaign_id)
        if on_started is not None:  # in the same transaction (the API's audit row): both or neither
            on_started(conn, pf.audience_size)
        started = lifecycle.get(conn, org, campaign_id)
    if campaign["status"] == "scheduled":  # started now (by hand, or by campaign-scheduler at its time)
        _drop(
            runs, campaign["flow_run_id"], f"campaign {campaign_id} was started; its scheduled run is not needed", log
        )
    return {
        "campaign_id": str(campaign_id),
        "status": started["status"],
        "started_at": started["started_at"],
        "total_recipients": pf.audience_size,
        "message": "Campaign started.",
        "warnings": pf.warnings(),
    }


def preflight_of(
    conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID, credentials: LoadCredentials
) -> dict[str, Any]:
    """The checklist a start would run, run now, changing nothing: each item with its result."""
    campaign = lifecycle.get(conn, org, campaign_id)
    number = get_number(conn, org, campaign["whatsapp_number_id"])
    pf = run_preflight(
        conn, campaign, number, lambda: credentials(number["block_name"]), ping_redis, usage=limit_usage()
    )
    return {
        "campaign_id": campaign_id,
        "ok": pf.ok,
        "audience_size": pf.audience_size,
        "checks": [
            {"name": c.name, "ok": c.ok, "blocking": not c.warning, "detail": "" if c.ok else c.detail}
            for c in pf.checks
        ],
    }


def stats_of(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, Any]:
    return stats.stats(conn, lifecycle.get(conn, org, campaign_id))


def retry_stats_of(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, Any]:
    return retry_stats.retry_stats(conn, lifecycle.get(conn, org, campaign_id))


def progress_of(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, Any]:
    campaign = lifecycle.get(conn, org, campaign_id)
    number = get_number(conn, org, campaign["whatsapp_number_id"])
    return stats.progress(conn, campaign, number, get_settings().rate_headroom)


def recipients_of(
    conn: sa.Connection,
    org: uuid.UUID,
    campaign_id: uuid.UUID,
    status: str | None = None,
    after: int | str | None = None,
    page_size: int = recipient_statuses.DEFAULT_PAGE_SIZE,
) -> dict[str, Any]:
    """A page of per-contact statuses; "Campaign not found" for another organization's campaign."""
    lifecycle.get(conn, org, campaign_id)
    return recipient_statuses.page(conn, org, campaign_id, status, after=after, page_size=page_size)


def export_recipients(
    conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID, status: str | None, out: recipient_statuses.ByteSink
) -> int:
    """Every matching recipient as CSV to `out` (streamed); returns how many rows were written."""
    lifecycle.get(conn, org, campaign_id)
    return recipient_statuses.export_csv(conn, org, campaign_id, status, out)


MAX_LIST_LIMIT = 200
MAX_LIST_SKIP = 2**31 - 1  # far past any organization's campaigns; Postgres refuses an offset past bigint


def list_campaigns(
    conn: sa.Connection, org: uuid.UUID, status: str | None = None, skip: int = 0, limit: int = 50
) -> dict[str, Any]:
    """The organization's campaigns, newest first; offset paging (an organization has hundreds, not millions)."""
    if status is not None and status not in CAMPAIGN_STATUSES:
        raise Invalid(f"status must be one of: {', '.join(CAMPAIGN_STATUSES)} (got {status!r})")
    if not 0 <= skip <= MAX_LIST_SKIP:
        raise Invalid(f"skip must be between 0 and {MAX_LIST_SKIP} (got {skip})")
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIST_LIMIT} (got {limit})")
    where = [campaigns.c.organization_id == org]
    if status is not None:
        where.append(campaigns.c.status == status)
    total = conn.execute(sa.select(sa.func.count()).select_from(campaigns).where(*where)).scalar_one()
    rows = (
        conn.execute(
            sa.select(campaigns)
            .where(*where)
            .order_by(campaigns.c.created_at.desc(), campaigns.c.id)
            .offset(skip)
            .limit(limit)
        )
        .mappings()
        .all()
    )
    return {"total": total, "skip": skip, "limit": limit, "campaigns": [dict(r) for r in rows]}


def update_campaign(
    conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID, changes: dict[str, Any]
) -> dict[str, Any]:
    """Apply a PATCH (lifecycle.update checks the fields and the number) and return the campaign."""
    lifecycle.update(conn, org, campaign_id, changes)
    return lifecycle.get(conn, org, campaign_id)


def delete_campaign(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID) -> lifecycle.Transition:
    """Campaigns are never deleted (their recipients and statistics stay): deleting one that never started
    cancels it; a started one must be cancelled explicitly, so nobody stops a send by "deleting" it."""
    current = lifecycle.get(conn, org, campaign_id, lock=True)  # held until commit: no start in between
    if current["status"] not in lifecycle.STARTABLE:
        hint = (
            f"; cancel it with POST /api/v1/campaigns/{campaign_id}/cancel"
            if current["status"] in ("running", "paused")
            else "; it is kept with its statistics"
        )
        raise Conflict(f"Cannot delete a {current['status']} campaign{hint}")
    return lifecycle.cancel(conn, org, campaign_id)


def record_flow_run(conn: sa.Connection, org: uuid.UUID, campaign_id: uuid.UUID, flow_run_id: str) -> None:
    """The run just launched for the campaign, so an operator finds it in the Prefect UI and the scheduler
    knows it is on its way. Not while a runner is alive: the new run will find the campaign taken and end
    at once, and the id must stay the live runner's (the scheduler reads its state)."""
    if runner_alive(conn, campaign_id):
        return
    conn.execute(
        sa.update(campaigns)
        .where(campaigns.c.id == campaign_id, campaigns.c.organization_id == org)
        .values(flow_run_id=flow_run_id)
    )


# -- scheduled campaigns in Prefect: Upcoming shows one send-campaign run per scheduled campaign ------------


def schedule_run(db: sa.Engine, org: uuid.UUID, campaign_id: uuid.UUID, runs: Runs, logger: Logger = log) -> str | None:
    """Give a scheduled campaign its send-campaign run in Prefect, Scheduled at its scheduled_at (so it shows
    under Upcoming and starts then), recorded on the campaign; the run it had before (a reschedule) is
    cancelled if it is still waiting. When Prefect cannot take it, the campaign stays scheduled in the
    database and campaign-scheduler starts it at its time: a warning, not an error. Returns the run's id."""
    with db.connect() as conn:
        campaign = lifecycle.get(conn, org, campaign_id)
    if campaign["status"] != "scheduled":
        return None
    when = iso_z(campaign["scheduled_at"])
    _drop(runs, campaign["flow_run_id"], f"campaign {campaign_id} was rescheduled to {when}", logger)
    try:
        run_id = runs.schedule(campaign_id, campaign["scheduled_at"])
    except Exception as exc:  # Prefect down, or no send-campaign deployment: the database is the truth
        logger.warning(
            "campaign %s is scheduled for %s, but Prefect has no run for it (%s); campaign-scheduler "
            "starts it at its time",
            campaign_id,
            when,
            f"{type(exc).__name__}: {exc}"[:300],
        )
        return None
    with db.begin() as conn:
        record_flow_run(conn, org, campaign_id, run_id)
    return run_id


def drop_schedule(
    db: sa.Engine, org: uuid.UUID, campaign_id: uuid.UUID, why: str, runs: Runs, logger: Logger = log
) -> bool:
    """Cancel the campaign's scheduled send-campaign run if it is still waiting (it was paused or cancelled
    before its time), so Upcoming stays true. True when one was cancelled."""
    with db.connect() as conn:
        flow_run_id = lifecycle.get(conn, org, campaign_id)["flow_run_id"]
    return _drop(runs, flow_run_id, why, logger)


def follow_transition(
    db: sa.Engine, org: uuid.UUID, campaign_id: uuid.UUID, t: lifecycle.Transition, runs: Runs, logger: Logger = log
) -> str | None:
    """Keep Prefect in step after a lifecycle transition: a campaign that is now scheduled (schedule,
    reschedule, resumed before it ever started) gets its scheduled run under Upcoming; one that left
    `scheduled` (paused, cancelled) loses it; a cancelled one's suspended run ends. Returns the new
    scheduled run's id, if any."""
    if t.status == "scheduled":
        return schedule_run(db, org, campaign_id, runs, logger)
    if t.status == "cancelled":  # a run suspended by an earlier pause wakes, to end Cancelled too
        try:
            runs.wake_suspended(campaign_id)
        except Exception as exc:  # Prefect down: the campaign is cancelled all the same
            logger.warning("could not wake the suspended run of campaign %s: %s", campaign_id, exc)
    if t.previous == "scheduled":
        drop_schedule(db, org, campaign_id, f"campaign {campaign_id} was {t.status} before its time", runs, logger)
    return None


def _drop(runs: Runs, flow_run_id: str | None, why: str, logger: Logger) -> bool:
    try:
        return runs.drop_scheduled(flow_run_id, why)
    except Exception as exc:  # Prefect down: the run starts at its time, finds the campaign not due, does nothing
        logger.warning(
            "could not cancel the scheduled flow run %s (%s); if it starts it will do nothing",
            flow_run_id,
            f"{type(exc).__name__}: {exc}"[:300],
        )
        return False
