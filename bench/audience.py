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
    """The write's own COPYs (write_recipients' rows, CSV and COPY, two at once) into copies of the table
    gaining the table's own indexes a few at a time: what the format, the defaults and each index cost."""
    from concurrent.futures import ThreadPoolExecutor

    from campaigns.audience.build import as_csv, audience_rows, split
    from campaigns.store.recipients import copy_audience

    chunks = [as_csv(chunk) for chunk in split(audience_rows(classified, campaign_id, organization_id), 2)]
    with db.connect() as conn:
        indexes = dict(
            conn.execute(
                sa.text("select indexname, indexdef from pg_indexes where tablename = 'campaign_recipients'")
            ).all()
        )
    claim = "ix_recipients_campaign_status_id"
    primary = next(name for name in indexes if name.endswith("_pkey"))
    steps = [
        ("no index (its defaults and identity only)", []),
        ("its primary key", [primary]),
        ("+ (campaign_id, status, id), the claim's", [claim]),
        ("+ the partial indexes (skipped rows and empty ones)", sorted(set(indexes) - {primary, claim})),
    ]
    built: list[str] = []
    figures = []
    for what, names in steps:
        built += names
        with db.begin() as conn:
            conn.execute(sa.text("drop table if exists recipients_floor"))
            like = "like campaign_recipients including defaults including identity"
            conn.execute(sa.text(f"create table recipients_floor ({like})"))
            for name in built:  # the table's own definition, on the copy
                definition = indexes[name].replace(" ON public.campaign_recipients ", " ON recipients_floor ")
                conn.execute(sa.text(definition.replace(f"INDEX {name} ", f"INDEX {name}_floor ")))
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            list(pool.map(lambda chunk: copy_audience(db, chunk, table="recipients_floor"), chunks))
        figures.append((what, time.perf_counter() - started))
    with db.begin() as conn:
        conn.execute(sa.text("drop table recipients_floor"))
    return figures


if __name__ == "__main__":
    main()
