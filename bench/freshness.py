"""Freshness: how long a status webhook takes from receipt to the campaign's statistics.

The real set-up, on one machine: `campaigns serve` (deployments; ingest-statuses on its schedule), the
webhook receiver, the sandbox in its own process posting signed status webhooks while a campaign sends.
For every stored event, processed_at − received_at is the time until its statuses are in the recipient
rows, which is what `stats` reads (it is derived from those rows on every read).

    uv run python -m bench.freshness [--mps 100 --recipients 12000]
"""

from __future__ import annotations

import argparse
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from bench.common import bulk_contacts, fresh_services, new_org, sandbox_campaign, serve_and_receiver
from sandbox import SandboxConfig, SandboxProcess

SECRET = secrets.token_urlsafe(24)  # the sandbox signs with it, the receiver knows it (a well-known one it refuses)


def _wait_for_a_running_ingester(timeout: float = 240.0) -> None:
    """Steady state: the first scheduled ingest-statuses run has started (a fresh deployment waits for the
    server's scheduler to create its runs)."""
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterStateName

    async def running() -> bool:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["ingest-statuses"])),
                flow_run_filter=FlowRunFilter(state={"name": FlowRunFilterStateName(any_=["Running"])}),
            )
            return bool(runs)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(running()):
            return
        time.sleep(1)
    raise RuntimeError(f"no ingest-statuses run started within {timeout} s")


def run(mps: int, recipients: int, chart: Path | None = None) -> dict[str, float]:
    import sqlalchemy as sa

    from campaigns.store.db import get_engine
    from flows.send_campaign import send_campaign

    db = get_engine()
    serve, receiver = serve_and_receiver(SECRET)
    try:
        _wait_for_a_running_ingester()
        with SandboxProcess(
            SandboxConfig(
                latency_ms=50, mps_cap=mps, webhook_url=receiver.url + "/webhooks/whatsapp", app_secret=SECRET
            )
        ) as sandbox:
            org = new_org("fresh")
            bulk_contacts(org, recipients)
            cid = sandbox_campaign(org, sandbox.url, mps, phone_number_id="77001", app_secret=SECRET)
            t0 = time.time()
            result = send_campaign(cid)
            while sandbox.stats()["webhook_pending"]:
                time.sleep(0.5)
            sent_for = time.time() - t0
        deadline = time.monotonic() + 180
        with db.connect() as conn:
            while (
                time.monotonic() < deadline
                and conn.execute(sa.text("select count(*) from webhook_events where state = 'pending'")).scalar_one()
            ):
                time.sleep(1)
                conn.commit()
            lat = conn.execute(
                sa.text("""
                select count(*), percentile_cont(array[0.5, 0.95, 0.99]) within group (order by s), max(s)
                from (select extract(epoch from processed_at - received_at) as s
                      from webhook_events where state = 'processed') t
            """)
            ).one()
            left = conn.execute(sa.text("select count(*) from webhook_events where state <> 'processed'")).scalar_one()
            if chart:
                _funnel_chart(conn, cid, mps, chart)
    finally:
        receiver.stop()
        serve.send_signal(signal.SIGTERM)  # to `serve` alone: it stops its runs (SIGTERM to the group crashes them)
        serve.wait(30)
    return {
        "status": result["status"],
        "seconds": sent_for,
        "events": lat[0],
        "p50": lat[1][0],
        "p95": lat[1][1],
        "p99": lat[1][2],
        "max": lat[2],
        "not_processed": left,
    }


def _funnel_chart(conn: Any, campaign_id: Any, mps: int, path: Path) -> None:
    import sqlalchemy as sa

    from bench.charts import funnel

    rows = conn.execute(
        sa.text("""select extract(epoch from sent_at), extract(epoch from delivered_at), extract(epoch from read_at)
                   from campaign_recipients where campaign_id = :c and sent_at is not null"""),
        {"c": campaign_id},
    ).all()
    stage = [[float(r[i]) for r in rows if r[i] is not None] for i in range(3)]
    title = f"A campaign's funnel: {len(rows):,} recipients at {mps} msg/s, statuses from the sandbox's webhooks"
    print(f"  chart: {funnel(*stage, path, title)}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mps", type=int, default=100)
    p.add_argument("--recipients", type=int, default=12_000)
    p.add_argument("--chart", type=Path, help="write the delivery funnel over time as a PNG here")
    args = p.parse_args()
    fresh_services("campaigns_bench_fresh")
    r = run(args.mps, args.recipients, args.chart)
    print(
        f"{args.recipients} recipients at {args.mps} msg/s ({r['seconds']:.0f} s of webhooks, {r['status']}): "
        f"{r['events']} webhook events, receipt → statistics p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s "
        f"(target 30 s: ratio {r['p95'] / 30:.2f}), p99 {r['p99']:.2f} s, max {r['max']:.2f} s; "
        f"not processed: {r['not_processed']}"
    )


if __name__ == "__main__":
    main()
