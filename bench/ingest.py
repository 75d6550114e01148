"""Ingestion of 300,000 stored status webhooks into recipient rows (target: under 30 s).

A campaign on a number with its own webhook signer gets R recipients already `sent` (wamid `wamid.X<id>`),
written set-based. Stored events are written with one COPY, shaped as Meta and the sandbox send them: every
recipient is delivered, 60% read, a share of the statuses duplicated, and part of the stream shuffled (a
read before its delivered). Each event carries the recipient id (biz_opaque_callback_data) and the wamid,
and the signer that vouched for it. Then `campaigns.webhooks.ingest.ingest_pending` is timed and the result checked
exactly: events, statuses, counts by status, first timestamps.

    uv run python -m bench.ingest [--statuses 300000] [--per-event 1]   # 1 status per row (Meta's usual)
    uv run python -m bench.ingest --per-event 50                         # the sandbox's batched POSTs
    uv run python -m bench.ingest --bad 10     # + 10 events the database refuses, spread over the stream

`--bad N` adds N signed events that put a known wamid on another row (recipients still `sending`, no
wamid): ux_recipients_wamid refuses each, so its round falls back to halves down to that event, which is
quarantined. It measures what isolating a bad event costs; the result must still be exact.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import sqlalchemy as sa

from bench.common import StatementTimer, fresh_services, new_org

TARGET_S = 30.0
SECRET = "bench-ingest-app-secret"
PHONE_NUMBER_ID = "838463922683351"
READ_SHARE, DUPLICATE_SHARE, SHUFFLED_SHARE = 0.6, 0.2, 0.1
T0 = 1771854964  # event times: delivered at T0 + i % 3600, read 30 s later


def plan(n_statuses: int) -> int:
    """Recipients so that delivered + read + duplicates come to n_statuses."""
    return int(n_statuses / ((1 + READ_SHARE) * (1 + DUPLICATE_SHARE)))


def status(rid: int, kind: str) -> dict:
    at = T0 + rid % 3600 + (30 if kind == "read" else 0)
    st = {
        "id": f"wamid.X{rid}",
        "status": kind,
        "timestamp": str(at),
        "recipient_id": f"55119{rid:08d}",
        "biz_opaque_callback_data": f"pytake:{rid}",
    }
    if kind == "delivered":
        st["pricing"] = {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "marketing"}
    return st


def envelope(statuses: list[dict]) -> bytes:
    """Meta's envelope, as the sandbox builds it: 10 statuses per change, 3 changes per entry."""
    meta = {"display_phone_number": "5511900000000", "phone_number_id": PHONE_NUMBER_ID}
    changes = [
        {
            "field": "messages",
            "value": {"messaging_product": "whatsapp", "metadata": meta, "statuses": statuses[i : i + 10]},
        }
        for i in range(0, len(statuses), 10)
    ]
    entries = [{"id": "1147896940776789", "changes": changes[i : i + 3]} for i in range(0, len(changes), 3)]
    return json.dumps({"object": "whatsapp_business_account", "entry": entries}, separators=(",", ":")).encode()


def stream(ids: list[int], n_statuses: int, rng: random.Random) -> tuple[list[tuple[int, str]], set[int]]:
    """(recipient id, status) in arrival order: duplicates, and a share of reads ahead of their delivered."""
    read = {rid for rid in ids if rng.random() < READ_SHARE}
    events = [(rid, "delivered") for rid in ids] + [(rid, "read") for rid in ids if rid in read]
    events += rng.sample(events, min(len(events), n_statuses - len(events)))  # duplicates
    events.sort(key=lambda e: (e[0], e[1] == "read"))  # the natural order: delivered, then read
    order = list(range(len(events)))
    for i in rng.sample(order, int(len(order) * SHUFFLED_SHARE)):  # a share arrives anywhere
        j = rng.randrange(len(order))
        order[i], order[j] = order[j], order[i]
    return [events[i] for i in order], read


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--statuses", type=int, default=300_000)
    p.add_argument("--per-event", type=int, default=1, help="statuses per stored webhook (sandbox: 50)")
    p.add_argument("--limit", type=int, default=None, help="ingest_pending's events per round (default: its own)")
    p.add_argument("--profile", action="store_true", help="cProfile the ingestion, print the top functions")
    p.add_argument("--trace", action="store_true", help="time spent per SQL statement (client side, incl. waits)")
    p.add_argument("--bad", type=int, default=0, help="events the database refuses, spread over the stream")
    args = p.parse_args()
    fresh_services("campaigns_bench_ingest")
    import psycopg

    from campaigns.control import lifecycle
    from campaigns.control.models import CampaignCreate
    from campaigns.settings import get_settings
    from campaigns.store.db import get_engine, libpq_url
    from campaigns.store.schema import whatsapp_numbers
    from campaigns.webhooks.ingest import ingest_pending
    from campaigns.webhooks.receiver import signer_id

    db = get_engine()
    org = new_org()
    signer = signer_id(SECRET)
    n_recipients = plan(args.statuses)
    with db.begin() as conn:
        number = conn.execute(
            sa.insert(whatsapp_numbers)
            .values(
                organization_id=org,
                provider="meta_cloud",
                phone_number_id=PHONE_NUMBER_ID,
                block_name="none",
                mps=1000,
                webhook_signer=signer,
            )
            .returning(whatsapp_numbers.c.id)
        ).scalar_one()
        cid = lifecycle.create(
            conn,
            org,
            CampaignCreate(
                name="bench", whatsapp_number_id=number, message_type="template", message_content={"template_name": "t"}
            ),
        )
        ids = (
            conn.execute(
                sa.text("""
            insert into campaign_recipients (campaign_id, organization_id, contact_id, phone, status, attempts,
                                             sent_at)
            select :c, :org, gen_random_uuid(), '+55' || (11900000000 + g)::text, 'sent', 1,
                   to_timestamp(:t0) - interval '5 seconds'
            from generate_series(1, :n) g
            returning id
        """),
                {"c": cid, "org": org, "n": n_recipients, "t0": T0},
            )
            .scalars()
            .all()
        )
        conn.execute(
            sa.text("update campaign_recipients set wamid = 'wamid.X' || id where campaign_id = :c"), {"c": cid}
        )
        thieves = (
            conn.execute(
                sa.text("""
            insert into campaign_recipients (campaign_id, organization_id, contact_id, phone, status, attempts)
            select :c, :org, gen_random_uuid(), '+55' || (21900000000 + g)::text, 'sending', 1
            from generate_series(1, :n) g returning id
        """),
                {"c": cid, "org": org, "n": args.bad},
            )
            .scalars()
            .all()
        )
        conn.execute(sa.text("update campaigns set status = 'running' where id = :c"), {"c": cid})
    rng = random.Random(42)
    events, read = stream(sorted(ids), args.statuses, rng)
    bad_at = {i * len(events) // args.bad // args.per_event * args.per_event: thief for i, thief in enumerate(thieves)}
    t = time.perf_counter()
    with psycopg.connect(libpq_url(get_settings().database_url or "")) as conn:
        with conn.cursor() as cur, cur.copy("copy webhook_events (provider, body, signers) from stdin") as copy:
            for i in range(0, len(events), args.per_event):
                body = envelope([status(rid, kind) for rid, kind in events[i : i + args.per_event]])
                copy.write_row(("meta_cloud", body, [signer]))
                if i in bad_at:  # a known wamid (this stream's first) on a row that has none: refused
                    theft = status(bad_at[i], "delivered") | {"id": f"wamid.X{events[0][0]}"}
                    copy.write_row(("meta_cloud", envelope([theft]), [signer]))
        conn.commit()
    rows = -(-len(events) // args.per_event)
    print(
        f"ingestion of {len(events):,} status events ({n_recipients:,} recipients, {len(read):,} read, "
        f"{len(events) - n_recipients - len(read):,} duplicates, ~{SHUFFLED_SHARE:.0%} shuffled) in {rows:,} "
        f"stored webhooks of {args.per_event} status(es), written in {time.perf_counter() - t:.1f} s"
    )

    kwargs = {"limit": args.limit} if args.limit else {}
    timer = StatementTimer(db, width=60) if args.trace else None
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t = time.perf_counter()
    result = ingest_pending(db, **kwargs)
    elapsed = time.perf_counter() - t
    spent: dict[str, list[float]] = {}
    for key, secs in timer.times if timer else []:
        spent.setdefault(key, []).append(secs)
    for key, times in sorted(spent.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {sum(times):6.2f} s in {len(times):4d} × {key}")
    if profiler:
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    with db.connect() as conn:
        by = dict(
            conn.execute(
                sa.text(
                    "select status, count(*) from campaign_recipients where campaign_id = :c "
                    "and status <> 'sending' group by status"
                ),
                {"c": cid},
            ).all()
        )
        states = dict(conn.execute(sa.text("select state, count(*) from webhook_events group by state")).all())
        wrong_times = conn.execute(
            sa.text("""
            select count(*) from campaign_recipients where campaign_id = :c and status <> 'sending' and (
                delivered_at is distinct from to_timestamp(:t0 + id % 3600)
                or read_at is distinct from case when status = 'read' then to_timestamp(:t0 + id % 3600 + 30) end
                or sent_at is distinct from to_timestamp(:t0) - interval '5 seconds')
        """),
            {"c": cid, "t0": T0},
        ).scalar_one()
    want = {"delivered": n_recipients - len(read), "read": len(read)}
    want_states = {"processed": rows, **({"quarantined": args.bad} if args.bad else {})}
    exact = (
        by == want
        and states == want_states
        and result.statuses == len(events)
        and result.unmatched == 0
        and result.rejected == 0
        and result.quarantined == args.bad
        and wrong_times == 0
    )
    print(
        f"  ingest_pending: {elapsed:.2f} s = {len(events) / elapsed:,.0f} statuses/s "
        f"(target {TARGET_S:.0f} s: ratio {elapsed / TARGET_S:.2f}); events {result.events:,}, statuses "
        f"{result.statuses:,}, unmatched {result.unmatched}, rejected {result.rejected}, "
        f"quarantined {result.quarantined}"
    )
    print(
        f"  result: {by} (want {want}); events {states}; wrong timestamps {wrong_times}: "
        f"{'exact' if exact else 'NOT EXACT'}"
    )


if __name__ == "__main__":
    main()
