"""Bulk contact import from CSV: `phone,name,tags,opted_out,last_inbound_at` plus any attribute columns.

Good rows are kept, bad rows are reported with their line numbers (the header is line 1). Writes are
set-based: one COPY into a temporary table, then one UPDATE of known phones and one INSERT of new ones.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from campaigns.phones import is_valid_expr, normalise_expr

KNOWN = ("phone", "name", "tags", "opted_out", "last_inbound_at")
TRUE = {"1", "true", "t", "yes", "y", "sim", "s"}
FALSE = {"", "0", "false", "f", "no", "n", "nao", "não"}


@dataclass
class ImportReport:
    inserted: int = 0
    updated: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return self.inserted + self.updated


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (no phone column, not CSV)."""


def parse_contacts_csv(source: Path | bytes, default_country_code: str) -> tuple[pl.DataFrame, list[tuple[int, str]]]:
    """Validate and normalise; returns the good rows and (line, reason) for each bad one."""
    data = source.read_bytes() if isinstance(source, Path) else source
    try:
        frame = pl.read_csv(io.BytesIO(data), infer_schema=False).fill_null("")
    except pl.exceptions.PolarsError as exc:
        raise ImportFileError(f"not a readable CSV file: {exc}") from exc
    frame = frame.rename({c: c.strip().lower() for c in frame.columns})
    if "phone" not in frame.columns:
        raise ImportFileError("missing column 'phone' (columns found: " + ", ".join(frame.columns) + ")")
    for col in KNOWN:
        if col not in frame.columns:
            frame = frame.with_columns(pl.lit("").alias(col))
    attribute_cols = [c for c in frame.columns if c not in KNOWN]
    opted = frame["opted_out"].str.strip_chars().str.to_lowercase()
    frame = frame.with_columns(
        line=pl.int_range(2, frame.height + 2),
        phone_e164=normalise_expr(pl.col("phone"), default_country_code),
        opted_flag=pl.when(opted.is_in(list(TRUE))).then(True).when(opted.is_in(list(FALSE))).then(False),
        inbound=pl.col("last_inbound_at").str.strip_chars().replace("", None)
        .str.to_datetime(time_zone="UTC", strict=False),
    )
    problems = pl.concat_str(
        [
            pl.when(~is_valid_expr(pl.col("phone_e164"))).then(pl.lit("invalid phone '") + pl.col("phone") + "'"),
            pl.when(pl.col("opted_flag").is_null()).then(
                pl.lit("opted_out must be true/false, got '") + pl.col("opted_out") + "'"
            ),
            pl.when(pl.col("inbound").is_null() & (pl.col("last_inbound_at").str.strip_chars() != "")).then(
                pl.lit("last_inbound_at is not a date/time: '") + pl.col("last_inbound_at") + "'"
            ),
        ],
        separator="; ",
        ignore_nulls=True,
    )
    frame = frame.with_columns(problem=pl.when(problems != "").then(problems))
    first_line = frame.filter(pl.col("problem").is_null()).group_by("phone_e164").agg(first=pl.col("line").min())
    frame = frame.join(first_line, on="phone_e164", how="left").with_columns(
        problem=pl.when(pl.col("problem").is_null() & (pl.col("line") != pl.col("first")))
        .then(pl.lit("duplicate phone (first seen on line ") + pl.col("first").cast(pl.Utf8) + ")")
        .otherwise(pl.col("problem"))
    )
    bad = frame.filter(pl.col("problem").is_not_null()).sort("line")
    errors = list(zip(bad["line"].to_list(), bad["problem"].to_list(), strict=True))
    good = frame.filter(pl.col("problem").is_null())
    attrs = (
        pl.struct(attribute_cols).struct.json_encode() if attribute_cols else pl.lit("{}")
    )
    tags = pl.col("tags").str.split(by="|").list.eval(pl.element().str.strip_chars()).list.eval(
        pl.element().filter(pl.element() != "")
    )
    good = good.select(
        phone=pl.col("phone_e164"),
        name=pl.col("name").str.strip_chars().replace("", None),
        tags=pl.lit("{") + tags.list.eval(pl.lit('"') + pl.element().str.replace_all('"', "") + '"').list.join(",")
        + "}",
        attributes=attrs,
        opted_out=pl.col("opted_flag"),
        last_inbound_at=pl.col("inbound"),
    )
    return good, errors


def import_contacts(conn: sa.Connection, organization_id: uuid.UUID, good: pl.DataFrame) -> tuple[int, int]:
    """Upsert by (organization, phone). Returns (inserted, updated)."""
    if good.is_empty():
        return 0, 0
    conn.execute(sa.text("drop table if exists _import"))
    conn.execute(sa.text(
        "create temp table _import (phone text, name text, tags text[], attributes jsonb, opted_out bool, "
        "last_inbound_at timestamptz) on commit drop"
    ))
    buf = io.BytesIO()
    good.write_csv(buf, include_header=False, datetime_format="%Y-%m-%dT%H:%M:%S%.f%z")
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy("copy _import from stdin (format csv)") as copy:
        copy.write(buf.getvalue())
    params = {"org": organization_id}
    updated = conn.execute(sa.text("""
        update contacts c set name = coalesce(i.name, c.name), tags = i.tags,
               attributes = c.attributes || i.attributes,
               opted_out_at = case when i.opted_out then coalesce(c.opted_out_at, now())
                                   when coalesce(c.opt_out_source, 'import') = 'import' then null
                                   else c.opted_out_at end,  -- a user's own opt-out outlives any import
               opt_out_source = case when i.opted_out then coalesce(c.opt_out_source, 'import')
                                     when coalesce(c.opt_out_source, 'import') = 'import' then null
                                     else c.opt_out_source end,
               last_inbound_at = greatest(c.last_inbound_at, i.last_inbound_at), updated_at = now()
        from _import i where c.organization_id = :org and c.phone = i.phone
    """), params).rowcount
    inserted = conn.execute(sa.text("""
        insert into contacts (organization_id, phone, name, tags, attributes, opted_out_at, opt_out_source,
                              last_inbound_at)
        select :org, i.phone, i.name, i.tags, i.attributes, case when i.opted_out then now() end,
               case when i.opted_out then 'import' end, i.last_inbound_at
        from _import i
        where not exists (select 1 from contacts c where c.organization_id = :org and c.phone = i.phone)
    """), params).rowcount
    return inserted, updated


def import_csv(
    conn: sa.Connection, organization_id: uuid.UUID, source: Path | bytes, default_country_code: str = "55"
) -> ImportReport:
    good, errors = parse_contacts_csv(source, default_country_code)
    inserted, updated = import_contacts(conn, organization_id, good)
    return ImportReport(inserted=inserted, updated=updated, errors=errors)
