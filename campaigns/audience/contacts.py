"""Bulk contact import from CSV: `phone,name,tags,opted_out,last_inbound_at` plus any attribute columns.

Good rows are kept, bad rows are reported with their line numbers (the header is line 1). Writes are
set-based: one COPY into a temporary table, then one UPDATE of known phones and one INSERT of new ones.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa

from campaigns.audience.phones import is_valid_expr, normalise_expr
from campaigns.store.db import psycopg_of

KNOWN = ("phone", "name", "tags", "opted_out", "last_inbound_at")
TRUE = {"1", "true", "t", "yes", "y", "sim", "s"}
FALSE = {"", "0", "false", "f", "no", "n", "nao", "não"}
LINE = "\x00line"  # the line a row starts on; no header can name it (a NUL in the header is refused)


@dataclass
class ImportReport:
    inserted: int = 0
    updated: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    encoding: str = "utf-8"  # how the file was read (a file that is not UTF-8 was read as Windows-1252)

    @property
    def imported(self) -> int:
        return self.inserted + self.updated


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (no phone column, not CSV)."""


def decode(data: bytes) -> tuple[str, str]:
    """The file's text and the encoding it was read with. A byte order mark decides (UTF-8, UTF-16); otherwise
    UTF-8, and a file that is not UTF-8 is read as Windows-1252, which is what Excel writes for Latin-1 text
    in Brazil (Latin-1 for the five bytes Windows-1252 leaves undefined)."""
    boms = [(codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]
    for bom, encoding in boms:
        if data.startswith(bom):
            try:
                return data.decode(encoding), encoding
            except UnicodeDecodeError as exc:
                raise ImportFileError(f"not valid {encoding.upper()} (byte {exc.start}): {exc.reason}") from None
    head = data[:400]
    if len(head) >= 4 and max(head[0::2].count(0), head[1::2].count(0)) > len(head) // 4:
        raise ImportFileError(
            "the file looks like UTF-16 without a byte order mark: save it as UTF-8 "
            "(or UTF-16 with its byte order mark)"
        )
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "windows-1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"


def read_records(text: str) -> tuple[list[str], list[int], list[list[str]], list[tuple[int, str]]]:
    """The header, the line each record starts on, the records, and (line, reason) for each broken one.

    A quote never closed, or text after a closing quote, breaks only its own record: reading starts again
    on the next line, so the good rows after it are kept (a quoted line break in a good row stays one row).
    """
    lines = list(io.StringIO(text, newline=""))
    lines_at: list[int] = []  # the line each record starts on, apart: the hot loop appends two plain lists
    rows: list[list[str]] = []
    errors: list[tuple[int, str]] = []
    header: list[str] | None = None
    width = -1  # no record has this many fields: the first one read is the header
    pos = 0
    while pos < len(lines):
        reader = csv.reader(itertools.islice(lines, pos, None), strict=True)
        done = 0  # lines read by this reader up to the end of its last whole record
        try:
            for fields in reader:
                first, spans = pos + done, reader.line_num - done
                done = reader.line_num
                if len(fields) != width:
                    if len(fields) <= 1 and not (fields and fields[0].strip()):
                        continue  # a blank line
                    if header is None:
                        header, width = fields, len(fields)
                        continue
                    problem = _record_problem(fields, width)
                    if problem and spans > 1:  # most likely a stray quote that swallowed the lines after it
                        errors.append((first + 1, f"broken quoting: a quote opened here is not closed ({problem})"))
                        pos = first + 1
                        break
                    if problem:
                        errors.append((first + 1, problem))
                        continue
                    fields = (fields + [""] * width)[:width]
                lines_at.append(first + 1)
                rows.append(fields)
            else:
                pos = len(lines)
        except csv.Error as exc:
            first = pos + done
            if header is None:
                raise ImportFileError(f"the header on line {first + 1} is not readable CSV: {exc}") from None
            spans = reader.line_num - done
            where = "a quote opened on this line is not closed" if spans > 1 else "a stray quote"
            errors.append((first + 1, f'broken quoting: {where} ({exc}; a quote inside a field is written "")'))
            pos = first + 1
    if header is None:
        raise ImportFileError("the file is empty: a header line with a 'phone' column is needed")
    return header, lines_at, rows, errors


def _record_problem(fields: list[str], width: int) -> str | None:
    """A record with more fields than the header is refused, unless the extra ones are empty (trailing
    commas); one with fewer is padded with empty fields."""
    if any(f.strip() for f in fields[width:]):
        return f"{len(fields)} fields where the header has {width} (an unquoted comma?)"
    return None


def _frame(
    header: list[str], lines_at: list[int], rows: list[list[str]], has_nul: bool
) -> tuple[pl.DataFrame, list[tuple[int, str]]]:
    """The records as text columns named by the trimmed, lower-cased header (plus LINE); rows with a NUL
    character are left out and reported with the column that holds it."""
    names = [h.strip().lower() for h in header]
    if any("\x00" in n for n in names):
        raise ImportFileError("a NUL character in the header: save the file as UTF-8 text")
    seen: dict[str, str] = {}
    for original, name in zip(header, names, strict=True):
        if name and name in seen:
            raise ImportFileError(
                f"column {name!r} appears more than once once names are trimmed and lower-cased "
                f"({seen[name]!r} and {original!r})"
            )
        seen[name] = original
    errors: list[tuple[int, str]] = []
    if has_nul:  # rare: only then is each field looked at here
        kept_lines, kept = [], []
        for line, fields in zip(lines_at, rows, strict=True):
            nul = [names[i] or f"column {i + 1}" for i, f in enumerate(fields) if f and "\x00" in f]
            if nul:
                errors.append((line, f"a NUL character in {', '.join(repr(n) for n in nul)}"))
            else:
                kept_lines.append(line)
                kept.append(fields)
        lines_at, rows = kept_lines, kept
    frame = pl.DataFrame(rows, orient="row", schema={f"{i}:{n}": pl.Utf8 for i, n in enumerate(names)})
    frame = frame.select(pl.col(f"{i}:{n}").alias(n) for i, n in enumerate(names) if n)  # nameless: dropped
    return frame.with_columns(pl.Series(LINE, lines_at, dtype=pl.Int64)), errors


def parse_contacts_csv(source: Path | bytes, default_country_code: str) -> tuple[pl.DataFrame, list[tuple[int, str]]]:
    """Validate and normalise; returns the good rows and (line, reason) for each bad one."""
    good, errors, _ = _parse(source, default_country_code)
    return good, errors


def _parse(source: Path | bytes, default_country_code: str) -> tuple[pl.DataFrame, list[tuple[int, str]], str]:
    data = source.read_bytes() if isinstance(source, Path) else source
    text, encoding = decode(data)
    header, lines_at, rows, broken = read_records(text)
    frame, nul_rows = _frame(header, lines_at, rows, "\x00" in text)
    good, errors = _checked(frame, default_country_code, [*broken, *nul_rows])
    return good, errors, encoding


def _checked(
    frame: pl.DataFrame, default_country_code: str, errors: list[tuple[int, str]], at: str = "line {}"
) -> tuple[pl.DataFrame, list[tuple[int, str]]]:
    """The rows' checks and normalisation, whatever they came from (a CSV's lines, the API's records): the good
    rows ready for `import_contacts`, and (where, reason) for each bad one; `at` says a row's place."""
    before, after = at.split("{}")
    if "phone" not in frame.columns:
        found = ", ".join(c for c in frame.columns if c != LINE)
        raise ImportFileError(f"missing column 'phone' (columns found: {found})")
    for col in KNOWN:
        if col not in frame.columns:
            frame = frame.with_columns(pl.lit("").alias(col))
    attribute_cols = [c for c in frame.columns if c not in (*KNOWN, LINE)]
    opted = frame["opted_out"].str.strip_chars().str.to_lowercase()
    frame = frame.with_columns(
        phone_e164=normalise_expr(pl.col("phone"), default_country_code),
        opted_flag=pl.when(opted.is_in(list(TRUE))).then(True).when(opted.is_in(list(FALSE))).then(False),
        inbound=pl.col("last_inbound_at")
        .str.strip_chars()
        .replace("", None)
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
    first_line = frame.filter(pl.col("problem").is_null()).group_by("phone_e164").agg(first=pl.col(LINE).min())
    frame = frame.join(first_line, on="phone_e164", how="left").with_columns(
        problem=pl.when(pl.col("problem").is_null() & (pl.col(LINE) != pl.col("first")))
        .then(pl.lit(f"duplicate phone (first seen on {before}") + pl.col("first").cast(pl.Utf8) + f"{after})")
        .otherwise(pl.col("problem"))
    )
    bad = frame.filter(pl.col("problem").is_not_null()).sort(LINE)
    errors = sorted([*errors, *zip(bad[LINE].to_list(), bad["problem"].to_list(), strict=True)])
    good = frame.filter(pl.col("problem").is_null())
    attrs = pl.struct(attribute_cols).struct.json_encode() if attribute_cols else pl.lit("{}")
    tags = (
        pl.col("tags")
        .str.split(by="|")
        .list.eval(pl.element().str.strip_chars())
        .list.eval(pl.element().filter(pl.element() != ""))
    )
    good = good.select(
        phone=pl.col("phone_e164"),
        name=pl.col("name").str.strip_chars().replace("", None),
        # A Postgres array literal: each tag quoted, its backslashes and quotes escaped, so a tag is kept as written.
        tags=pl.lit("{")
        + tags.list.eval(
            pl.lit('"')
            + pl.element().str.replace_all("\\", "\\\\", literal=True).str.replace_all('"', '\\"', literal=True)
            + '"'
        ).list.join(",")
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
    conn.execute(
        sa.text(
            "create temp table _import (phone text, name text, tags text[], attributes jsonb, opted_out bool, "
            "last_inbound_at timestamptz) on commit drop"
        )
    )
    buf = io.BytesIO()
    good.write_csv(buf, include_header=False, datetime_format="%Y-%m-%dT%H:%M:%S%.f%z")
    raw = psycopg_of(conn)
    with raw.cursor() as cur, cur.copy("copy _import from stdin (format csv)") as copy:
        copy.write(buf.getvalue())
    params = {"org": organization_id}
    updated = conn.execute(
        sa.text("""
        update contacts c set name = coalesce(i.name, c.name), tags = i.tags,
               attributes = c.attributes || jsonb_strip_nulls(i.attributes),  -- null: an attribute not given
               opted_out_at = case when i.opted_out then coalesce(c.opted_out_at, now())
                                   when coalesce(c.opt_out_source, 'import') = 'import' then null
                                   else c.opted_out_at end,  -- a user's own opt-out outlives any import
               opt_out_source = case when i.opted_out then coalesce(c.opt_out_source, 'import')
                                     when coalesce(c.opt_out_source, 'import') = 'import' then null
                                     else c.opt_out_source end,
               last_inbound_at = greatest(c.last_inbound_at, i.last_inbound_at), updated_at = now()
        from _import i where c.organization_id = :org and c.phone = i.phone
    """),
        params,
    ).rowcount
    inserted = conn.execute(
        sa.text("""
        insert into contacts (organization_id, phone, name, tags, attributes, opted_out_at, opt_out_source,
                              last_inbound_at)
        select :org, i.phone, i.name, i.tags, jsonb_strip_nulls(i.attributes), case when i.opted_out then now() end,
               case when i.opted_out then 'import' end, i.last_inbound_at
        from _import i
        where not exists (select 1 from contacts c where c.organization_id = :org and c.phone = i.phone)
    """),
        params,
    ).rowcount
    return inserted, updated


def import_csv(
    conn: sa.Connection, organization_id: uuid.UUID, source: Path | bytes, default_country_code: str = "55"
) -> ImportReport:
    good, errors, encoding = _parse(source, default_country_code)
    inserted, updated = import_contacts(conn, organization_id, good)
    return ImportReport(inserted=inserted, updated=updated, errors=errors, encoding=encoding)


def import_records(
    conn: sa.Connection, organization_id: uuid.UUID, records: list[dict[str, Any]], default_country_code: str = "55"
) -> ImportReport:
    """Contacts given as records (the API's JSON: phone, name, tags, opted_out, last_inbound_at, attributes)
    through the CSV import's own checks, so both refuse the same rows for the same reasons; each refused row
    is named by its index in `records`. An attribute a record leaves out (or sends as null) is left as it is,
    not emptied: only a CSV's empty cell empties one."""
    names = sorted({name for r in records for name in (r.get("attributes") or {})})
    rows = []
    for r in records:
        attributes = r.get("attributes") or {}
        inbound = r.get("last_inbound_at")
        rows.append(
            [
                r["phone"],
                r.get("name") or "",
                "|".join(r.get("tags") or ()),
                "true" if r.get("opted_out") else "false",
                inbound.isoformat() if inbound else "",
                *(_cell(attributes.get(name)) for name in names),
            ]
        )
    has_nul = any(cell and "\x00" in cell for row in rows for cell in row)
    frame, nul_rows = _frame([*KNOWN, *names], list(range(len(records))), rows, has_nul)
    good, errors = _checked(frame, default_country_code, nul_rows, "contacts[{}]")
    inserted, updated = import_contacts(conn, organization_id, good)
    return ImportReport(inserted=inserted, updated=updated, errors=errors)


def _cell(value: Any) -> str | None:
    if value is None:
        return None  # left as it is
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
