"""Statistics and progress of a 1,000,000-recipient campaign: cold, warm, and after VACUUM (ANALYZE).

The campaign is built set-based: every row written `pending` (as the audience step writes them), then one
UPDATE gives each its outcome (as sending and ingestion do), so the table carries the dead row versions a
finished campaign leaves before any vacuum. Mix: 2% skipped (four reasons), 3% failed (four codes), the
rest sent 10% / delivered 40% / read 50%, 5% of the delivered or read replied; the last ~30,000 sends fall in
the last 30 seconds (a campaign still going at 1,000 msg/s) and 0.5% is still pending. Another campaign's
rows share the table, so nothing can be answered by scanning the whole table.

`campaigns.reporting.stats.stats` and `.progress` are called as the API calls them (`services.stats_of` /
`progress_of`): right after the write (cold: no hint bits, no visibility map, no planner statistics),
again (warm), after `VACUUM (ANALYZE)`, and once a quarter of the rows moved on since that vacuum (a live
campaign between two autovacuums). Target: under 200 ms each, for a live dashboard.

    uv run python -m bench.stats [--recipients 1000000] [--other 250000] [--without-stats-indexes]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import sqlalchemy as sa

from bench.common import StatementTimer, fresh_services, new_org

TARGET_MS = 200.0

# Migration 0008's indexes and expression statistics (migrations/versions/0008_stats_indexes.py), dropped by
# --without-stats-indexes to measure the "before".
STATS_INDEXES = (
    "ix_recipients_campaign_skipped",
    "ix_recipients_campaign_failed",
    "ix_recipients_campaign_replied",
    "ix_recipients_campaign_recent",
)

FILL = sa.text("""
    insert into campaign_recipients (campaign_id, organization_id, contact_id, phone, status, attempts)
    select :c, :org, gen_random_uuid(), '+55' || (11900000000 + g)::text, 'pending', 0
    from generate_series(1, :n) g
""")

# g = the row's rank in its campaign (1..n); u = a fixed pseudo-random number in [0, 1) per row.
OUTCOMES = sa.text("""
    with r as (
        select id, row_number() over (order by id) as g,
               ((hashtext(id::text)::bigint + 2147483648) % 1000000) / 1000000.0 as u
        from campaign_recipients where campaign_id = :c
    ), o as (
        select id, g, u,
               case when g > :n - :n * 0.005 then 'pending'
                    when u < 0.02 then 'skipped'
                    when u < 0.05 then 'failed'
                    when u < 0.145 then 'sent'
                    when u < 0.525 then 'delivered'
                    else 'read' end as status,
               -- sends spread over the hour before the last 30 s; the last ~30,000 inside the last 30 s
               now() - make_interval(secs => case when g > :n - :n * 0.005 - 30000
                                                  then ((:n - :n * 0.005 - g) / 1000.0)::float8
                                                  else (30 + (:n - g) * 3600.0 / :n)::float8 end) as at
        from r
    )
    update campaign_recipients t set
        status = o.status,
        skip_reason = case when o.status = 'skipped' then
            (array['opt_out', 'invalid_number', 'duplicate', 'outside_window'])[1 + (o.g % 4)::int] end,
        error_code = case when o.status = 'failed' then
            (array[131026, 131049, 131047, 130472])[1 + (o.g % 4)::int] end,
        error_message = case when o.status = 'failed' then 'Message undeliverable' end,
        attempts = case when o.status in ('pending', 'skipped') then 0 else 1 end,
        wamid = case when o.status in ('sent', 'delivered', 'read', 'failed') then 'wamid.X' || o.id end,
        sent_at = case when o.status in ('sent', 'delivered', 'read') then o.at end,
        delivered_at = case when o.status in ('delivered', 'read') then o.at + interval '2 seconds' end,
        read_at = case when o.status = 'read' then o.at + interval '40 seconds' end,
        failed_at = case when o.status = 'failed' then o.at end,
        replied_at = case when o.status in ('delivered', 'read') and o.u * 1000 % 1 < 0.055
                     then o.at + interval '3 minutes' end
    from o where t.id = o.id
""")


def build(db: sa.Engine, org: uuid.UUID, n: int, other: int) -> uuid.UUID:
    from campaigns.control import lifecycle
    from campaigns.control.models import CampaignCreate
    from campaigns.store.schema import whatsapp_numbers

    with db.begin() as conn:
        number = conn.execute(
            sa.insert(whatsapp_numbers)
            .values(organization_id=org, provider="sandbox", phone_number_id="1", block_name="none", mps=1000)
            .returning(whatsapp_numbers.c.id)
        ).scalar_one()
        ids = [
            lifecycle.create(
                conn,
                org,
                CampaignCreate(
                    name=name,
                    whatsapp_number_id=number,
                    message_type="template",
                    message_content={"template_name": "t"},
                ),
            )
            for name in ("bench", "other")
        ]
        conn.execute(
            sa.text("update campaigns set status = 'running', total_recipients = :n where id = :c"),
            {"n": n, "c": ids[0]},
        )
    for cid, size in ((ids[1], other), (ids[0], n)):
        if not size:
            continue
        t = time.perf_counter()
        with db.begin() as conn:
            conn.execute(FILL, {"c": cid, "org": org, "n": size})
        t1 = time.perf_counter()
        with db.begin() as conn:
            conn.execute(OUTCOMES, {"c": cid, "n": size})
        print(f"  {size:,} recipients written in {t1 - t:.1f} s, outcomes in {time.perf_counter() - t1:.1f} s")
    return ids[0]


def measure(db: sa.Engine, timer: StatementTimer, org: uuid.UUID, cid: uuid.UUID, label: str, repeats: int) -> None:
    from campaigns.control import lifecycle, tenancy
    from campaigns.reporting import stats
    from campaigns.settings import get_settings

    out: dict[str, list[float]] = {"stats": [], "progress": []}
    breakdown: dict[str, list[tuple[str, float]]] = {}
    with db.connect() as conn:
        campaign = lifecycle.get(conn, org, cid)
        number = tenancy.get_number(conn, org, campaign["whatsapp_number_id"])
        for _ in range(repeats):
            for name in ("stats", "progress"):
                timer.times.clear()
                t = time.perf_counter()
                if name == "stats":
                    stats.stats(conn, campaign)
                else:
                    stats.progress(conn, campaign, number, get_settings().rate_headroom)
                out[name].append((time.perf_counter() - t) * 1000)
                breakdown.setdefault(name, list(timer.times))
            conn.rollback()
    for name, ms in out.items():
        first, rest = ms[0], ms[1:]
        warm = f"; then {min(rest):.0f}–{max(rest):.0f} ms (median {statistics.median(rest):.0f})" if rest else ""
        print(
            f"  {label:<28} {name:<8} first call {first:6.0f} ms{warm}; target {TARGET_MS:.0f} ms: "
            f"ratio {statistics.median(ms) / TARGET_MS:.2f}"
        )
        for stmt, secs in breakdown[name]:
            print(f"      {secs * 1000:7.1f} ms  {stmt}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--recipients", type=int, default=1_000_000)
    p.add_argument("--other", type=int, default=250_000, help="rows of another campaign in the same table")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--without-stats-indexes", action="store_true", help="drop migration 0008's indexes first")
    p.add_argument("--ddl", action="append", default=[], help="extra DDL to run before the build (experiments)")
    args = p.parse_args()
    fresh_services("campaigns_bench_stats")
    from campaigns.control import lifecycle
    from campaigns.reporting import stats
    from campaigns.store.db import get_engine

    db = get_engine()
    with db.begin() as conn:
        if args.without_stats_indexes:
            for ix in STATS_INDEXES:
                conn.execute(sa.text(f"drop index if exists {ix}"))
            conn.execute(sa.text("drop statistics if exists st_recipients_outcome_at"))
        for ddl in args.ddl:
            conn.execute(sa.text(ddl))
    org = new_org()
    print(
        f"stats of a {args.recipients:,}-recipient campaign ({args.other:,} rows of another campaign beside it)"
        + (", without the stats indexes" if args.without_stats_indexes else "")
    )
    cid = build(db, org, args.recipients, args.other)
    timer = StatementTimer(db)
    measure(db, timer, org, cid, "cold (after the write)", args.repeats)
    t = time.perf_counter()
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("vacuum (analyze) campaign_recipients"))
    print(f"  VACUUM (ANALYZE) campaign_recipients: {time.perf_counter() - t:.1f} s")
    measure(db, timer, org, cid, "after VACUUM (ANALYZE)", args.repeats)
    # A live campaign keeps moving on after a vacuum: the last quarter of the rows (the latest sends) get read
    # receipts, which clears the visibility map of their pages and leaves dead row versions there.
    with db.begin() as conn:
        moved = conn.execute(
            sa.text("""
            update campaign_recipients set status = 'read', read_at = delivered_at + interval '40 seconds'
            where campaign_id = :c and status = 'delivered'
              and id > (select max(id) - :n / 4 from campaign_recipients where campaign_id = :c)
        """),
            {"c": cid, "n": args.recipients},
        ).rowcount
    measure(db, timer, org, cid, f"{moved:,} read since VACUUM", args.repeats)
    with db.connect() as conn:
        s = stats.stats(conn, lifecycle.get(conn, org, cid))
    print(
        f"  result: {s['total_recipients']:,} recipients, sent {s['messages_sent']:,}, delivered "
        f"{s['messages_delivered']:,}, read {s['messages_read']:,}, failed {s['messages_failed']:,}, "
        f"skipped {s['messages_skipped']:,}, pending {s['messages_pending']:,}, reply rate {s['reply_rate']}%; "
        f"skipped {s['skipped_by_reason']}; failed {s['failures_by_code']}"
    )


if __name__ == "__main__":
    main()
