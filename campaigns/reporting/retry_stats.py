"""retry-stats: how hard a campaign had to try. Attempts per recipient, who waits for a retry and until
when, every failed attempt by error code (not only the final failures), and retries exhausted."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from campaigns.reporting.stats import failures_by_code
from campaigns.store.db import iso_z


def retry_stats(conn: sa.Connection, campaign: dict[str, Any]) -> dict[str, Any]:
    cid, org = campaign["id"], campaign["organization_id"]
    scope = {"c": cid, "o": org}
    by_attempts = conn.execute(
        sa.text("""
        select attempts, count(*) from campaign_recipients
        where campaign_id = :c and organization_id = :o and attempts > 0 group by attempts order by attempts
    """),
        scope,
    ).all()
    waiting = conn.execute(
        sa.text("""
        select count(*), min(next_attempt_at), max(next_attempt_at) from campaign_recipients
        where campaign_id = :c and organization_id = :o and status = 'pending' and next_attempt_at > now()
    """),
        scope,
    ).one()
    # Every failed attempt, also those a later attempt made good. Only rows that ever failed are expanded.
    attempt_errors = conn.execute(
        sa.text("""
        select coalesce(e->>'error_code', 'none'), count(*)
        from campaign_recipients r, jsonb_array_elements(r.attempt_log) e
        where r.campaign_id = :c and r.organization_id = :o
          and (r.error_code is not null or jsonb_array_length(r.attempt_log) > 1)
          and (e->>'success')::boolean is false
        group by 1 order by 2 desc
    """),
        scope,
    ).all()
    exhausted = conn.execute(
        sa.text("""
        select count(*) from campaign_recipients where campaign_id = :c and organization_id = :o
        and status = 'failed' and error_message like 'retries exhausted%'
    """),
        scope,
    ).scalar_one()
    return {
        "campaign_id": str(cid),
        "retry_policy": {
            "retry_max_attempts": campaign["retry_max_attempts"],
            "retry_base_delay": campaign["retry_base_delay"],
            "retry_max_delay": campaign["retry_max_delay"],
        },
        "recipients_by_attempts": {str(n): count for n, count in by_attempts},
        "total_attempts": sum(n * count for n, count in by_attempts),
        "waiting_retry": {
            "recipients": waiting[0],
            "next_attempt_at": iso_z(waiting[1]),
            "last_attempt_at": iso_z(waiting[2]),
        },
        "failed_attempts_by_code": dict(attempt_errors),
        "failures_by_code": failures_by_code(conn, cid),
        "retries_exhausted": exhausted,
    }
