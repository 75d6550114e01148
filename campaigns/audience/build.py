"""The audience, once per campaign: contacts → one recipient row each, pending or skipped with a reason.

SQL narrows by audience type (tags use the GIN index, explicit lists the primary key); Polars decides
each contact's fate; one COPY writes every row. Skip reasons: invalid_number, opt_out,
active_conversation, outside_window (free-form text on Meta needs an open 24 h window), duplicate
(the same phone twice: the first contact is kept).
"""

from __future__ import annotations

import io
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import sqlalchemy as sa

from campaigns.audience.phones import is_valid_expr
from campaigns.store import recipients
from campaigns.store.db import psycopg_of

WINDOW = timedelta(hours=24)
AUDIENCE_TYPES = ("all_contacts", "tags", "contacts")
PARALLEL_COPY_MIN_ROWS = 100_000


@dataclass(frozen=True)
class AudienceRules:
    respect_opt_out: bool = True
    skip_active_conversations: bool = False
    require_window: bool = False  # free-form text through Meta


def contacts_query(audience_type: str, audience_filter: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The WHERE clause (beyond organization) for an audience type, with its parameters."""
    if audience_type == "all_contacts":
        return "", {}
    if audience_type == "tags":
        tags = list(audience_filter.get("tags") or [])
        op = "@>" if audience_filter.get("match", "any") == "all" else "&&"
        return f" and tags {op} %(tags)s::text[]", {"tags": tags}
    if audience_type == "contacts":
        ids = [str(uuid.UUID(str(i))) for i in audience_filter.get("contact_ids") or []]
        return " and id = any(%(ids)s::uuid[])", {"ids": ids}
    raise ValueError(f"audience_type: unknown audience type {audience_type!r}")


def load_contacts(
    conn: sa.Connection, organization_id: uuid.UUID, audience_type: str, audience_filter: dict[str, Any]
) -> pl.DataFrame:
    """COPY the audience's contacts out of Postgres straight into Polars (no Python row objects)."""
    where, params = contacts_query(audience_type, audience_filter)
    params["org"] = str(organization_id)
    sql = (
        "copy (select id, phone, opted_out_at is not null, in_conversation, last_inbound_at from contacts "
        f"where organization_id = %(org)s{where} order by created_at, id) to stdout (format csv)"
    )
    buf = io.BytesIO()
    raw = psycopg_of(conn)
    # COPY takes no server-side parameters: psycopg merges them client-side, safely quoted.
    with raw.cursor() as cur, cur.copy(sql, params) as copy:
        for chunk in copy:
            buf.write(chunk)
    schema = {
        "contact_id": pl.Utf8,
        "phone": pl.Utf8,
        "opted_out": pl.Utf8,
        "in_conversation": pl.Utf8,
        "last_inbound_at": pl.Utf8,
    }
    if buf.tell() == 0:
        return pl.DataFrame(schema=schema).with_columns(
            pl.col("opted_out").cast(pl.Boolean),
            pl.col("in_conversation").cast(pl.Boolean),
            pl.col("last_inbound_at").cast(pl.Datetime("us", "UTC")),
        )
    frame = pl.read_csv(buf.getvalue(), has_header=False, new_columns=list(schema), schema=schema)
    return frame.with_columns(
        opted_out=pl.col("opted_out") == "t",
        in_conversation=pl.col("in_conversation") == "t",
        last_inbound_at=pl.col("last_inbound_at").str.to_datetime(time_zone="UTC", strict=False),
    )


def classify(frame: pl.DataFrame, rules: AudienceRules, now: datetime | None = None) -> pl.DataFrame:
    """Adds `status` (pending|skipped) and `skip_reason`. Pure: tested without a database."""
    now = now or datetime.now(UTC)
    valid = is_valid_expr(pl.col("phone"))
    # Opt-out belongs to the person: any contact of that phone opted out means all of them did.
    opted = pl.col("opted_out").any().over("phone")
    in_window = pl.col("last_inbound_at").is_not_null() & (pl.col("last_inbound_at") >= pl.lit(now - WINDOW))
    reason = (
        pl.when(~valid)
        .then(pl.lit("invalid_number"))
        .when(pl.lit(rules.respect_opt_out) & opted)
        .then(pl.lit("opt_out"))
        .when(pl.lit(rules.skip_active_conversations) & pl.col("in_conversation"))
        .then(pl.lit("active_conversation"))
        .when(pl.lit(rules.require_window) & ~in_window)
        .then(pl.lit("outside_window"))
    )
    out = frame.with_columns(skip_reason=reason)
    # Duplicates: among contacts not skipped for another reason, the first of each phone is kept (rows come
    # in creation order). Skipped rows get a null key, which never marks an eligible row as a duplicate.
    key = pl.when(pl.col("skip_reason").is_null()).then(pl.col("phone"))
    duplicate = pl.col("skip_reason").is_null() & ~key.is_first_distinct()
    return out.with_columns(
        skip_reason=pl.when(duplicate).then(pl.lit("duplicate")).otherwise(pl.col("skip_reason"))
    ).with_columns(
        status=pl.when(pl.col("skip_reason").is_null())
        .then(pl.lit(recipients.PENDING))
        .otherwise(pl.lit(recipients.SKIPPED))
    )


def audience_rows(frame: pl.DataFrame, campaign_id: uuid.UUID, organization_id: uuid.UUID) -> pl.DataFrame:
    """The classified audience as the recipient rows COPY takes (recipients.AUDIENCE_COLUMNS).

    The rows to send first, in the contacts' order, then the skipped ones: the claim's index is (campaign,
    status, id), and with 'skipped' entries interleaved every 'pending' one lands mid-index (a descent from the
    root each); this way each COPY appends at the index's right edge. Skipped rows are never sent, so their
    ids (the send order) do not matter."""
    return frame.select(
        campaign_id=pl.lit(str(campaign_id)),
        organization_id=pl.lit(str(organization_id)),
        contact_id=pl.col("contact_id"),
        phone=pl.col("phone").fill_null(""),
        status=pl.col("status"),
        skip_reason=pl.col("skip_reason"),
    ).sort(pl.col("status") != recipients.PENDING, maintain_order=True)


def split(rows: pl.DataFrame, parallel: int) -> list[pl.DataFrame]:
    """The rows in `parallel` consecutive slices, one a COPY; one for a small audience, so that ids (the send
    order) follow the contacts' order."""
    if rows.height < PARALLEL_COPY_MIN_ROWS:
        parallel = 1
    size = -(-rows.height // max(parallel, 1))
    return [rows.slice(i, size) for i in range(0, rows.height, size)]


def as_csv(rows: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    rows.write_csv(buf, include_header=False)
    return buf.getvalue()


def write_recipients(
    db: sa.Engine, campaign_id: uuid.UUID, organization_id: uuid.UUID, frame: pl.DataFrame, parallel: int = 2
) -> int:
    """COPY every row of the audience, in `parallel` COPYs on their own connections.

    Postgres runs one COPY per backend on one core, so two halves in parallel take about half the time
    (1,000,000 rows: 4.7 s → 2.6 s here). The halves commit separately: the caller marks the audience
    frozen only after all of them, and a rebuild first deletes what a crashed build left.
    """
    rows = audience_rows(frame, campaign_id, organization_id)
    if rows.is_empty():
        return 0
    recipients.check_audience_statuses(rows.get_column("status").unique().to_list())
    chunks = split(rows, parallel)
    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        list(pool.map(lambda chunk: recipients.copy_audience(db, as_csv(chunk)), chunks))
    return rows.height


def counts(frame: pl.DataFrame) -> dict[str, int]:
    """pending plus one entry per skip reason."""
    grouped = frame.group_by(pl.col("skip_reason").fill_null("pending")).len()
    return dict(zip(grouped["skip_reason"].to_list(), grouped["len"].to_list(), strict=True))
