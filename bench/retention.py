"""The webhook retention job (campaigns/webhooks/retention.py) on a platform-sized table: what it costs, and
what it costs the receiver writing beside it.

Three million applied status events (a 1M-recipient campaign's sent, delivered and read), shaped as Meta sends
them and eight days old, are written with one COPY, plus a day's worth of recent ones. The table's bytes per
event are read, then the job deletes the old ones in batches while a thread writes events as the receiver
does (COPY of 50 rows every 20 ms) and times each write: its p50/p99/max before and during the job are the
cost to the live path.

    uv run python -m bench.retention [--events 3000000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from datetime import timedelta

import psycopg
import sqlalchemy as sa

from bench.common import fresh_services


def body(i: int) -> bytes:
    """One status webhook, as Meta posts it (about 600 bytes)."""
    status = {
        "id": f"wamid.HBgNNTUxMTk{i:012d}FQIAERgSQzVGNDc2QjA0RjA3NTk0QTAA",
        "status": ("sent", "delivered", "read")[i % 3],
        "timestamp": str(1771854964 + i // 3),
        "recipient_id": f"55119{i // 3:08d}",
        "biz_opaque_callback_data": f"pytake:{i // 3}",
        "conversation": {"id": "c0ffee", "origin": {"type": "marketing"}},
        "pricing": {"billable": True, "pricing_model": "PMP", "category": "marketing"},
    }
    entry = {
        "id": "WABA",
        "changes": [
            {
                "field": "messages",
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550000000", "phone_number_id": "838463922683351"},
                    "statuses": [status],
                },
            }
        ],
    }
    return json.dumps({"object": "whatsapp_business_account", "entry": [entry]}).encode()


def load(url: str, events: int, age_days: float) -> None:
    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        # read before the COPY: a query on the connection while its COPY is open waits for it for good
        received = conn.execute(f"select now() - interval '{age_days} days'").fetchone()[0]  # type: ignore[index]
        with cur.copy(
            "copy webhook_events (provider, body, signers, state, received_at, processed_at) from stdin"
        ) as copy:
            for i in range(events):
                copy.write_row(("meta", body(i), ["s"], "processed", received, received))
        conn.execute("vacuum analyze webhook_events")


class Writer(threading.Thread):
    """The receiver's inserts: a COPY of 50 events every 20 ms, each timed."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.times = url, threading.Event(), []
        self.mark = 0

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.perf_counter()
                with conn.cursor() as cur, cur.copy("copy webhook_events (provider, body, signers) from stdin") as c:
                    for i in range(50):
                        c.write_row(("meta", body(i), ["s"]))
                self.times.append(time.perf_counter() - started)
                time.sleep(0.02)


def summary(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return (
        f"p50 {statistics.median(ms):.1f} / p99 {ms[int(len(ms) * 0.99)]:.1f} / max {ms[-1]:.1f} ms ({len(ms)} writes)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3_000_000)
    args = parser.parse_args()
    fresh_services("campaigns_bench_retention")
    from campaigns.settings import get_settings
    from campaigns.store.db import get_engine, libpq_url
    from campaigns.webhooks.retention import prune_processed_events

    url = libpq_url(get_settings().database_url or "")
    started = time.perf_counter()
    load(url, args.events, 8)
    load(url, args.events // 30, 0.5)  # applied within the retention: kept
    print(f"loaded {args.events:,} old + {args.events // 30:,} recent events in {time.perf_counter() - started:.0f} s")
    db = get_engine()
    with db.connect() as conn:
        size = conn.execute(sa.text("select pg_total_relation_size('webhook_events')")).scalar_one()
        rows = conn.execute(sa.text("select count(*) from webhook_events")).scalar_one()
    print(f"webhook_events: {size / 2**20:,.0f} MiB for {rows:,} events: {size / rows:,.0f} bytes an event")

    writer = Writer(url)
    writer.start()
    time.sleep(5)
    writer.mark = len(writer.times)
    started = time.perf_counter()
    deleted = prune_processed_events(db, timedelta(days=7))
    took = time.perf_counter() - started
    during = writer.times[writer.mark :]
    writer.stop.set()
    writer.join()
    print(f"retention: deleted {deleted:,} events in {took:.1f} s ({deleted / took:,.0f} a second)")
    print(f"receiver writes before: {summary(writer.times[: writer.mark])}")
    print(f"receiver writes during: {summary(during)}")
    started = time.perf_counter()
    again = prune_processed_events(db, timedelta(days=7))
    print(f"a second pass (nothing to delete): {again} deleted in {(time.perf_counter() - started) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
