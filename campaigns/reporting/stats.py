"""Statistics and progress in the seed's shapes, always derived from recipient rows (nothing to drift)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from campaigns.sending.ratelimit import campaign_limit, number_caps, number_limit
from campaigns.store.db import iso_z


def _pct(num: int, den: int) -> float:
    return round(100.0 * num / den, 1) if den else 0.0


def counts_by_status(conn: sa.Connection, campaign_id: uuid.UUID) -> dict[str, int]:
    rows = conn.execute(
        sa.text("select status, count(*) from campaign_recipients where campaign_id = :c group by status"),
        {"c": campaign_id},
    )
    return {r[0]: r[1] for r in rows}


def failures_by_code(conn: sa.Connection, campaign_id: uuid.UUID) -> dict[str, int]:
    """Failed recipients by error code, most frequent first ("none" when the failure had no code)."""
    return dict(
        conn.execute(
            sa.text(
                "select coalesce(error_code::text, 'none'), count(*) from campaign_recipients "
                "where campaign_id = :c and status = 'failed' group by 1 order by 2 desc"
            ),
            {"c": campaign_id},
        ).all()
    )


def stats(conn: sa.Connection, campaign: dict[str, Any]) -> dict[str, Any]:
    cid = campaign["id"]
    by = counts_by_status(conn, cid)
    replied = conn.execute(
        sa.text("select count(*) from campaign_recipients where campaign_id = :c and replied_at is not null"),
        {"c": cid},
    ).scalar_one()
    skipped = conn.execute(
        sa.text(
            "select skip_reason, count(*) from campaign_recipients where campaign_id = :c and status = 'skipped' "
            "group by skip_reason"
        ),
        {"c": cid},
    ).all()
    failures = failures_by_code(conn, cid)
    sent = by.get("sent", 0) + by.get("delivered", 0) + by.get("read", 0)
    delivered = by.get("delivered", 0) + by.get("read", 0)
    read = by.get("read", 0)
    return {
        "total_recipients": sum(by.values()),
        "messages_sent": sent,
        "messages_delivered": delivered,
        "messages_read": read,
        "messages_failed": by.get("failed", 0),
        "messages_pending": by.get("pending", 0) + by.get("sending", 0),
        "delivery_rate": _pct(delivered, sent),
        "read_rate": _pct(read, delivered),
        "reply_rate": _pct(replied, sent),
        "error_count": campaign["error_count"],
        "last_error_message": campaign["last_error_message"],
        "messages_skipped": by.get("skipped", 0),
        "messages_cancelled": by.get("cancelled", 0),
        "skipped_by_reason": dict(skipped),
        "failures_by_code": failures,
        "awaiting_status": by.get("sent", 0),
        "in_flight": by.get("sending", 0),
    }


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def limit_rate(campaign: dict[str, Any], number: dict[str, Any], headroom: float) -> float:
    """Messages per second the limits in force allow over a long run: the number's rate, its caps per
    minute, hour and day, and the campaign's own pace, whichever is slowest."""
    limits = [number_limit("n", number["mps"], headroom, number.get("provider", "meta_cloud"))]
    own = campaign_limit("c", campaign["messages_per_hour"], campaign["delay_between_messages_seconds"])
    if own:
        limits.append(own)
    rate = 1_000_000 / max(limit.interval_us for limit in limits)
    caps = number_caps(
        "n",
        number.get("provider", "meta_cloud"),
        number.get("per_minute"),
        number.get("per_hour"),
        number.get("per_day"),
    )
    return min([rate, *(cap.limit / cap.window_s for cap in caps)])


def progress(conn: sa.Connection, campaign: dict[str, Any], number: dict[str, Any], headroom: float) -> dict[str, Any]:
    cid = campaign["id"]
    by = counts_by_status(conn, cid)
    total = sum(by.values())
    pending = by.get("pending", 0) + by.get("sending", 0)
    processed = total - pending
    recent = conn.execute(
        sa.text(
            "select count(*) from campaign_recipients where campaign_id = :c and status <> 'skipped' "
            "and coalesce(sent_at, failed_at) > now() - interval '30 seconds'"
        ),
        {"c": cid},
    ).scalar_one()
    allowed = limit_rate(campaign, number, headroom)
    # Over the last 30 s, or since the start when it began less than 30 s ago (else the first seconds
    # would read as a tenth of the real rate and the ETA would jump to ten times the truth).
    started = campaign.get("started_at")
    running_for = (datetime.now(UTC) - started).total_seconds() if started else 30.0
    observed = recent / min(30.0, max(running_for, 1.0))
    rate = min(observed, allowed) if observed > 0 else allowed
    eta = pending / rate if pending and campaign["status"] in ("running", "scheduled", "draft") else 0.0
    return {
        "campaign_id": str(cid),
        "progress_percentage": _pct(processed, total),
        "messages_processed": processed,
        "messages_pending": pending,
        "estimated_remaining_time": _hms(eta),
        "current_status": campaign["status"],
        "last_update": iso_z(datetime.now(UTC)),
    }


def progress_line(p: dict[str, Any], width: int = 40) -> str:
    """One terminal line for a `progress` body (used by `start --wait` and the demo)."""
    filled = int(width * p["progress_percentage"] / 100)
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {p['progress_percentage']:5.1f}%  "
        f"{p['messages_processed']} processed, {p['messages_pending']} pending, "
        f"ETA {p['estimated_remaining_time']} ({p['current_status']})   "
    )
