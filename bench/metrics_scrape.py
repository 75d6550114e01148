"""What a Prometheus scrape of the API's /metrics costs on a platform with a million-recipient campaign,
over real HTTP, against what counting the same figures from the recipients' rows would cost.

A campaign of `--recipients` rows (sent, some failed) and `--events` pending webhook events are written
with SQL; the send counters are put in Redis as the send path leaves them. Then `/metrics` is scraped
`--scrapes` times; for comparison, the same counts from campaign_recipients (what /metrics avoids).

    uv run python -m bench.metrics_scrape [--recipients 1000000 --scrapes 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import fresh_services, new_org


def run(recipients: int, events: int, scrapes: int) -> dict[str, float]:
    import httpx
    import redis
    import sqlalchemy as sa

    from campaigns.api import create_app
    from campaigns.api.metrics import EngineCollector
    from campaigns.infra.asgi_thread import ThreadedServer
    from campaigns.sending import metrics
    from campaigns.settings import get_settings
    from campaigns.store.db import get_engine

    db = get_engine()
    org = new_org("scrape")
    with db.begin() as conn:
        number = conn.execute(
            sa.text("""insert into whatsapp_numbers (organization_id, provider, phone_number_id, block_name)
                       values (:o, 'sandbox', 'scrape-1', 'none') returning id"""),
            {"o": org},
        ).scalar_one()
        cid = conn.execute(
            sa.text("""insert into campaigns (organization_id, name, whatsapp_number_id, message_type, message_content,
                       audience_type, status) values (:o, 'million', :n, 'text', '{"text": "Oi"}', 'all_contacts',
                       'running') returning id"""),
            {"o": org, "n": number},
        ).scalar_one()
        conn.execute(
            sa.text("""insert into campaign_recipients (campaign_id, organization_id, contact_id, phone, status,
                       error_code, sent_at)
                       select :c, :o, gen_random_uuid(), '+55119' || lpad(g::text, 8, '0'),
                              case when g % 50 = 0 then 'failed' else 'sent' end,
                              case when g % 50 = 0 then 131026 end, now()
                       from generate_series(1, :n) g"""),
            {"c": cid, "o": org, "n": recipients},
        )
        conn.execute(
            sa.text("""insert into webhook_events (provider, body, state) select 'meta_cloud', '\\x7b7d', 'pending'
                       from generate_series(1, :n)"""),
            {"n": events},
        )
    with db.connect() as conn:
        conn.execute(sa.text("analyze campaign_recipients"))
    r = redis.Redis.from_url(get_settings().redis_url or "")
    r.delete(metrics.KEY)
    r.hset(metrics.KEY, mapping={"sent": recipients * 49 // 50, "failed:131026": recipients // 50, "throttled": 3})
    server = ThreadedServer(create_app(lambda _: "", ready=lambda: None, db=db)).start()
    try:
        times = []
        with httpx.Client(timeout=30) as client:  # one connection, kept alive, as Prometheus scrapes
            for _ in range(scrapes):
                t = time.perf_counter()
                body = client.get(server.url + "/metrics")
                times.append(time.perf_counter() - t)
                assert body.status_code == 200
        size = len(body.content)
    finally:
        server.stop()
    collector = EngineCollector(db, get_settings().redis_url or "")
    reads = []
    for _ in range(scrapes):
        t = time.perf_counter()
        list(collector.collect())
        reads.append(time.perf_counter() - t)
    counts = []
    with db.connect() as conn:
        for _ in range(5):
            t = time.perf_counter()
            conn.execute(sa.text("select status, error_code, count(*) from campaign_recipients group by 1, 2")).all()
            counts.append(time.perf_counter() - t)
    return {
        "p50": statistics.median(times),
        "collect": statistics.median(reads),
        "max": max(times),
        "bytes": size,
        "count_rows": statistics.median(counts),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--recipients", type=int, default=1_000_000)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--scrapes", type=int, default=50)
    args = p.parse_args()
    fresh_services("campaigns_bench_scrape")
    r = run(args.recipients, args.events, args.scrapes)
    print(
        f"/metrics with a {args.recipients:,}-recipient campaign and {args.events:,} pending webhook events: "
        f"scrape p50 {r['p50'] * 1000:.1f} ms, max {r['max'] * 1000:.1f} ms over {args.scrapes} "
        f"({r['bytes']:,} bytes; its queries {r['collect'] * 1000:.1f} ms); "
        f"counting the same from the recipients' rows: {r['count_rows'] * 1000:.0f} ms "
        f"({r['count_rows'] / r['p50']:.0f}x a scrape)"
    )


if __name__ == "__main__":
    main()
