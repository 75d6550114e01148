"""Audience of N contacts to recipient rows (target: 1,000,000 in under 5 s).

Measures the steps of `build_audience_once`: COPY contacts out of Postgres into Polars, classify every contact
(invalid, opt-out, duplicate...), COPY every recipient row in. Contacts are made set-based first. Absolute times
move with the machine, so the same run measures the floor, a bare COPY of the same rows into an unindexed copy
of the table, and reports the build as a ratio to it; and the table's bytes a row.

    uv run python -m bench.audience [--contacts 1000000]
"""

from __future__ import annotations

import argparse
import time

import sqlalchemy as sa

from bench.common import fresh_services, new_org


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--contacts", type=int, default=1_000_000)
    args = p.parse_args()
    fresh_services("campaigns_bench_audience")
    from campaigns.audience.build import AudienceRules, classify, load_contacts, write_recipients
    from campaigns.control import lifecycle
    from campaigns.control.models import CampaignCreate
    from campaigns.store.db import get_engine
    from campaigns.store.schema import whatsapp_numbers

    db = get_engine()
    org = new_org()
    n = args.contacts
    with db.begin() as conn:
        # 1% invalid phones, 2% opted out, 1% duplicates: every rule does real work.
        conn.execute(
            sa.text("""
            insert into contacts (organization_id, phone, name, opted_out_at, created_at)
            select :org,
                   case when g % 100 = 0 then 'invalid-' || g
                        when g % 100 = 1 then '+55' || (11900000000 + g - 1)::text
                        else '+55' || (11900000000 + g)::text end,
                   'Contato ' || g, case when g % 50 = 7 then now() end, now() + g * interval '1 microsecond'
            from generate_series(1, :n) g
        """),
            {"org": org, "n": n},
        )
        conn.execute(sa.text("analyze contacts"))
        number = conn.execute(
            sa.insert(whatsapp_numbers)
            .values(organization_id=org, provider="sandbox", phone_number_id="1", block_name="none", mps=80)
            .returning(whatsapp_numbers.c.id)
        ).scalar_one()
        cid = lifecycle.create(
            conn,
            org,
            CampaignCreate(
                name="bench", whatsapp_number_id=number, message_type="template", message_content={"template_name": "t"}
            ),
        )
    rules = AudienceRules()
    t0 = time.perf_counter()
    with db.begin() as conn:
        frame = load_contacts(conn, org, "all_contacts", {})
    t1 = time.perf_counter()
    classified = classify(frame, rules)
    t2 = time.perf_counter()
    written = write_recipients(db, cid, org, classified)
    t3 = time.perf_counter()
    total = t3 - t0
    skipped = classified.filter(classified["status"] == "skipped").height
    print(
        f"audience of {n:,} contacts -> {written:,} recipient rows ({skipped:,} skipped) in {total:.2f} s "
        f"(load {t1 - t0:.2f} s, classify {t2 - t1:.2f} s, write {t3 - t2:.2f} s, committed); "
        f"target 5 s: ratio {total / 5:.2f}; {n / total:,.0f} contacts/s"
    )
    floor = bare_copy_seconds(db, cid)
    print(
        f"floor, the same rows COPied into an unindexed copy of the table: {floor:.2f} s; "
        f"the build is {total / floor:.2f}x the floor (target <= 1.3x); the write alone {(t3 - t2) / floor:.2f}x"
    )
    for what, seconds in where_the_write_goes(db, cid, org, classified):
        print(f"  the write's COPYs into a copy of the table with {what}: {seconds:.2f} s ({seconds / floor:.2f}x)")
    with db.connect() as conn:
        table = conn.execute(sa.text("select pg_table_size('campaign_recipients')")).scalar_one()
        indexes = conn.execute(sa.text("select pg_indexes_size('campaign_recipients')")).scalar_one()
    print(f"campaign_recipients: {table / written:.0f} bytes a row + {indexes / written:.0f} of indexes")


def bare_copy_seconds(db: sa.Engine, campaign_id: object) -> float:
    """The floor of the write: the campaign's rows, already built, COPied (binary, every column) into a table
    shaped like campaign_recipients with no index, constraint or trigger, on the same Postgres, committed."""
    import io

    from campaigns.store.db import psycopg_of

    data = io.BytesIO()
    with db.begin() as conn:
        cur = psycopg_of(conn).cursor()
        with cur.copy(
            "copy (select * from campaign_recipients where campaign_id = %s) to stdout (format binary)",
            (campaign_id,),
        ) as copy:
            for chunk in copy:
                data.write(chunk)
        conn.execute(sa.text("drop table if exists recipients_floor"))
        conn.execute(sa.text("create table recipients_floor (like campaign_recipients including defaults)"))
    started = time.perf_counter()
    with db.begin() as conn:
        cur = psycopg_of(conn).cursor()
        with cur.copy("copy recipients_floor from stdin (format binary)") as copy:
            copy.write(data.getvalue())
    took = time.perf_counter() - started
    with db.begin() as conn:
        conn.execute(sa.text("drop table recipients_floor"))
    return took


def where_the_write_goes(
    db: sa.Engine, campaign_id: object, organization_id: object, classified
) -> list[tuple[str, float]]:
    """The write's own COPYs (CSV of the audience columns, two at once, as write_recipients makes them) into
    copies of the table gaining one index at a time: what the format, the defaults and each index cost."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    import polars as pl

    from campaigns.store.db import psycopg_of
    from campaigns.store.recipients import AUDIENCE_COLUMNS

    out = classified.select(
        campaign_id=pl.lit(str(campaign_id)),
        organization_id=pl.lit(str(organization_id)),
        contact_id=pl.col("contact_id"),
        phone=pl.col("phone").fill_null(""),
        status=pl.col("status"),
        skip_reason=pl.col("skip_reason"),
    ).sort(pl.col("status") != "pending", maintain_order=True)  # as write_recipients orders them
    half = -(-out.height // 2)
    chunks = []
    for i in range(0, out.height, half):
        buf = io.BytesIO()
        out.slice(i, half).write_csv(buf, include_header=False)
        chunks.append(buf.getvalue())

    def copy(chunk: bytes) -> None:
        statement = f"copy recipients_floor ({AUDIENCE_COLUMNS}) from stdin (format csv)"
        with db.begin() as conn, psycopg_of(conn).cursor() as cur, cur.copy(statement) as c:
            c.write(chunk)

    steps = [
        ("no index (its defaults and identity only)", ""),
        ("its primary key", "alter table recipients_floor add primary key (id)"),
        ("+ (campaign_id, status, id), the claim's", "create index on recipients_floor (campaign_id, status, id)"),
        (
            "+ the partial indexes (skipped rows and empty ones)",
            """create index on recipients_floor (campaign_id, skip_reason) where status = 'skipped';
            create index on recipients_floor (campaign_id, error_code) where status = 'failed';
            create unique index on recipients_floor (wamid) where wamid is not null;
            create index on recipients_floor (campaign_id, id) where replied_at is not null;
            create index on recipients_floor (campaign_id, coalesce(sent_at, failed_at))
                where coalesce(sent_at, failed_at) is not null""",
        ),
    ]
    ddl: list[str] = []
    figures = []
    for what, index in steps:
        ddl += [s for s in index.split(";") if s.strip()]
        with db.begin() as conn:
            conn.execute(sa.text("drop table if exists recipients_floor"))
            like = "like campaign_recipients including defaults including identity"
            conn.execute(sa.text(f"create table recipients_floor ({like})"))
            for statement in ddl:
                conn.execute(sa.text(statement))
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            list(pool.map(copy, chunks))
        figures.append((what, time.perf_counter() - started))
    with db.begin() as conn:
        conn.execute(sa.text("drop table recipients_floor"))
    return figures


if __name__ == "__main__":
    main()
