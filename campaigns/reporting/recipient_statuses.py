"""Per-contact statuses in the seed's "Message Status per Contact" shape: a page at a time, or all as CSV.

Pages are keyset-paginated on the recipient id, not by offset: a status that changes while an operator
pages (sent → delivered) cannot move a row onto another page, and page 10,000 of a 1,000,000-row campaign
costs what page 1 does. Each page walks the (campaign_id, status, id) index once per status and merges;
"replied" walks the partial (campaign_id, id) index of replied rows (migration 0008). The CSV export
is one Postgres COPY streamed straight to the output file.

Every query is scoped by organization AND campaign: another organization's id sees nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Protocol

import sqlalchemy as sa

from campaigns.errors import Invalid
from campaigns.store.db import psycopg_of
from campaigns.store.schema import INT8_MAX, RECIPIENT_STATUSES

# "replied" is not a recipient status but what operators ask for next to "failed": replied_at is set.
STATUS_FILTERS = (*RECIPIENT_STATUSES, "replied")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

CSV_COLUMNS = (
    "contact_id",
    "contact_name",
    "contact_phone",
    "status",
    "skip_reason",
    "error_code",
    "error_message",
    "message_id",
    "attempts",
    "sent_at",
    "delivered_at",
    "read_at",
    "failed_at",
    "replied_at",
)
TIMESTAMPS = ("sent_at", "delivered_at", "read_at", "failed_at", "replied_at")


class ByteSink(Protocol):
    """Where an export's CSV goes: a file, or the API's bounded pipe to a streamed response."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


def _ts(expr: str) -> str:
    """The seed's timestamp form, 2024-12-14T10:00:00Z, made in SQL so pages and CSV agree."""
    return f"""to_char(({expr}) at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""


# The seed's attempts items from attempt_log entries ({attempt, success, timestamp, error_code?,
# error_message?}); extra keys are kept, notes (an operator's retry, a resend after an unknown outcome) are
# not attempts and stay out. The engine counts attempts from 1, the seed from 0; a try that did not count
# (rate limit, campaign pause) keeps the number of the attempt it did not use.
_ATTEMPTS = f"""(
    select coalesce(jsonb_agg(e || jsonb_build_object(
               'attempt', greatest(coalesce((e ->> 'attempt')::int, 1) - 1, 0),
               'timestamp', {_ts("(e ->> 'timestamp')::timestamptz")}) order by n), '[]'::jsonb)
    from jsonb_array_elements(r.attempt_log) with ordinality as a(e, n) where e ? 'success')"""


def _columns(text: Callable[[str], str] = str) -> str:
    """One select list for pages and CSV, in CSV_COLUMNS order; `text` wraps the free-text columns.

    Phones as the seed (and Meta's wa_id) write them: digits, no "+".
    """
    return f"""r.contact_id, {text("ct.name")} as contact_name, ltrim(r.phone, '+') as contact_phone, r.status,
    r.skip_reason, r.error_code, {text("r.error_message")} as error_message, r.wamid as message_id,
    {_ATTEMPTS} as attempts, {", ".join(f"{_ts('r.' + c)} as {c}" for c in TIMESTAMPS)}"""


_CONTACT = "left join contacts ct on ct.id = r.contact_id and ct.organization_id = r.organization_id"
_REPLIED = " and r.replied_at is not null"
_OWNED = "exists (select 1 from campaigns c where c.id = %(c)s and c.organization_id = %(o)s)"


def _check(status: str | None, page_size: int = DEFAULT_PAGE_SIZE, after: int | str | None = None) -> int:
    """Refuse a bad filter or cursor with the field's name (the API answers 422); returns the cursor."""
    if status is not None and status not in STATUS_FILTERS:
        raise Invalid(f"status must be one of: {', '.join(STATUS_FILTERS)} (got {status!r})")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise Invalid(f"page_size must be between 1 and {MAX_PAGE_SIZE} (got {page_size})")
    try:
        cursor = int(after) if after not in (None, "") else 0
    except (TypeError, ValueError):
        raise Invalid(f"after must be a cursor returned as next_cursor (got {after!r})") from None
    if not 0 <= cursor <= INT8_MAX:  # a bigint id; past it Postgres would refuse the query
        raise Invalid(f"after must be a cursor returned as next_cursor (got {after!r})")
    return cursor


def _filter(status: str | None) -> tuple[list[str], str]:
    """The statuses to walk, and the condition on r for a count or an export (index-only when it can)."""
    if status is None:
        return list(RECIPIENT_STATUSES), ""
    if status == "replied":
        return list(RECIPIENT_STATUSES), _REPLIED
    return [status], " and r.status = %(status)s"


def page(
    conn: sa.Connection,
    organization_id: uuid.UUID,
    campaign_id: uuid.UUID,
    status: str | None = None,
    after: int | str | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> dict[str, Any]:
    """One page of recipients after the cursor, oldest first, as {"recipients": {contact_id: seed shape}}.

    `total` counts every matching recipient (not just this page); `next_cursor` is None on the last page.
    """
    cursor = _check(status, page_size, after)
    statuses, extra = _filter(status)
    params = {
        "c": campaign_id,
        "o": organization_id,
        "s": statuses,
        "status": status,
        "after": cursor,
        "n": page_size + 1,
    }
    if status == "replied":
        picked = f"""select r.id from campaign_recipients r
            where r.campaign_id = %(c)s and r.id > %(after)s{_REPLIED} and {_OWNED}
            order by r.id limit %(n)s"""
    else:
        # Per status: an index range scan of (campaign_id, status, id) from the cursor, at most n rows
        # each; the merge keeps the n lowest ids. Unfiltered that is 8 short scans, not a sort of the campaign.
        picked = f"""select p.id from unnest(%(s)s::text[]) as s(status)
            cross join lateral (
                select r.id from campaign_recipients r
                where r.campaign_id = %(c)s and r.status = s.status and r.id > %(after)s
                order by r.id limit %(n)s) p
            where {_OWNED}
            order by p.id limit %(n)s"""
    rows = (
        conn.exec_driver_sql(
            f"""
        with picked as ({picked})
        select r.id, {_columns()}
        from picked join campaign_recipients r on r.id = picked.id {_CONTACT}
        where r.campaign_id = %(c)s and r.organization_id = %(o)s
        order by r.id
    """,
            params,
        )
        .mappings()
        .all()
    )
    more = len(rows) > page_size
    rows = rows[:page_size]
    total = conn.exec_driver_sql(
        f"""
        select count(*) from campaign_recipients r
        where r.campaign_id = %(c)s{extra} and {_OWNED}
    """,
        params,
    ).scalar_one()
    recipients = {}
    for row in rows:
        body = {k: row[k] for k in CSV_COLUMNS if k != "contact_id"}
        recipients[str(row["contact_id"])] = body
    return {
        "campaign_id": str(campaign_id),
        "status": status,
        "total": total,
        "page_size": page_size,
        "next_cursor": str(rows[-1]["id"]) if more else None,
        "recipients": recipients,
    }


def _csv_safe(expr: str) -> str:
    """Names and provider messages are outside text: a leading = + - @ would run as a spreadsheet formula."""
    return f"case when {expr} ~ '^[=+@\\t\\r-]' then '''' || {expr} else {expr} end"


def export_csv(
    conn: sa.Connection,
    organization_id: uuid.UUID,
    campaign_id: uuid.UUID,
    status: str | None,
    out: ByteSink,
) -> int:
    """Write every matching recipient as CSV (header first, CSV_COLUMNS) to `out`; returns the row count.

    One COPY ... TO STDOUT streamed chunk by chunk: a 1,000,000-row campaign never sits in memory here.
    """
    _check(status)
    _, extra = _filter(status)
    sql = f"""copy (
        select {_columns(_csv_safe)} from campaign_recipients r {_CONTACT}
        where r.campaign_id = %(c)s and r.organization_id = %(o)s{extra} and {_OWNED}
        order by r.id
    ) to stdout (format csv, header)"""
    params = {"c": campaign_id, "o": organization_id, "status": status}
    raw = psycopg_of(conn)
    # COPY takes no server-side parameters: psycopg merges them client-side, safely quoted.
    with raw.cursor() as cur, cur.copy(sql, params) as copy:
        for chunk in copy:
            out.write(bytes(chunk))
        written = max(cur.rowcount, 0)  # from the COPY's "COPY n" once drained (closing the cursor resets it)
    out.flush()
    return written
