"""Send throughput against the sandbox at 200 ms latency, as a ratio to the number's cap.

Runs the real send-campaign flow (Prefect engine, Postgres claims, Redis limiter, aiohttp) against the
sandbox with its throughput cap equal to the number's mps. Prints sustained rate (first to last accepted
message), end-to-end rate (flow start to end), 130429 answers and the largest one-second window.

    uv run python -m bench.throughput [--cap 1000 --recipients 20000] [--cap 80 --recipients 4000] [--campaigns 2]
    uv run python -m bench.throughput --cap 80 --recipients 40000 --numbers 10    # aggregate: 10 numbers at once
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from pathlib import Path

from bench.common import bulk_contacts, fresh_services, new_org, sandbox_campaign
from bench.processes import MemoryPeak, top
from sandbox import SandboxConfig, SandboxProcess


def _service_pids() -> list[int]:
    """The embedded services' processes (their pid files under CAMPAIGNS_HOME): Prefect's server, Postgres,
    Redis; none for a service given by URL."""
    home = Path(os.environ["CAMPAIGNS_HOME"])
    files = [home / "prefect.pid", home / "pg" / "postmaster.pid", home / "redis.pid"]
    return [int(f.read_text().split()[0]) for f in files if f.exists()]


def _bytes_a_row() -> str:
    import sqlalchemy as sa

    from campaigns.store.db import get_engine

    with get_engine().connect() as conn:
        rows, table, indexes = conn.execute(
            sa.text("""select (select count(*) from campaign_recipients), pg_table_size('campaign_recipients'),
                       pg_indexes_size('campaign_recipients')""")
        ).one()
    return f"{table / rows:.0f} bytes a row + {indexes / rows:.0f} of indexes ({rows:,} rows)"


def run(
    cap: int,
    recipients: int,
    latency_ms: float,
    timeline: bool = False,
    campaigns: int = 1,
    inject: int = 0,
    numbers: int = 1,
    processes: bool = False,
    chart: Path | None = None,
) -> dict[str, float]:
    """`campaigns` > 1: that many campaigns on the one number at once, sharing `recipients` between them.
    `numbers` > 1: that many organizations, each with its number (at `cap`) and its share of `recipients`, all
    sending at once: the machine's aggregate rate, against the sum of the caps. `processes`: each process's peak
    RSS and CPU seconds (this one, where the flows run, with the send engine it starts; the sandbox; Prefect's
    server, Postgres and Redis when embedded), printed after the run.
    `inject`: about that many sends answered 130429 at random through the run (each recipient's first try
    only), whatever the rate: what one 130429 costs, measured apart from whether the machine provokes one."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.send_campaign import send_campaign

    with SandboxProcess(SandboxConfig(latency_ms=latency_ms, mps_cap=cap)) as sandbox:
        if inject:
            rule = {"code": 130429, "http_status": 400, "times": 1, "probability": inject / recipients}
            sandbox.configure(rules=[rule])
        cids = []
        for k in range(numbers):
            org = new_org()
            bulk_contacts(org, recipients // (campaigns * numbers))
            cids += [sandbox_campaign(org, sandbox.url, cap, phone_number_id=f"9{cap}{k}") for _ in range(campaigns)]
        roots = [os.getpid(), sandbox.proc.pid, *_service_pids()]
        watch = MemoryPeak(lambda: roots) if processes else None
        if watch:
            watch.start()
        t0 = time.time()
        with ThreadPoolExecutor(len(cids)) as pool:
            results = list(pool.map(send_campaign, cids))
        t1 = time.time()
        if watch:
            watch.stop.set()
            print(f"  peak RSS by process (MiB): {top(watch.rss_peak)}")
            print(f"  CPU seconds by process over the run: {top(watch.cpu)} (the run: {t1 - t0:.0f} s)")
            print(f"  campaign_recipients after the run: {_bytes_a_row()}")
        result = {"status": ",".join(sorted({r["status"] for r in results}))}
        messages = sandbox.messages()
        accepted = sorted(m["accepted_at"] for m in messages)
        by_number = collections.defaultdict(list)
        for m in messages:
            by_number[m["phone_number_id"]].append(m["accepted_at"])
        if timeline and accepted:
            per = collections.Counter(int(a - accepted[0]) for a in accepted)
            print("accepted per second:", [per[i] for i in range(max(per) + 1)])
        stats = sandbox.stats()
    if chart and accepted:
        from bench.charts import send_rate

        title = f"{len(accepted):,} messages at a {cap * numbers:,} msg/s cap (sandbox, {latency_ms:.0f} ms latency)"
        print(f"  chart: {send_rate(accepted, cap * numbers, chart, title)}")
    n = len(accepted)
    sustained = (n - 1) / (accepted[-1] - accepted[0]) if n > 1 else 0.0
    # Steady state: the middle 80% of messages, away from ramp-up and the tail.
    lo, hi = accepted[n // 10], accepted[n * 9 // 10]
    steady = (n * 8 // 10) / (hi - lo) if hi > lo else 0.0
    slowest = min((len(t) - 1) / (max(t) - min(t)) for t in by_number.values() if len(t) > 1 and max(t) > min(t))
    return {
        "cap": cap * numbers,
        "slowest_number_ratio": slowest / cap,
        "recipients": recipients,
        "status": result["status"],
        "accepted": n,
        "sustained_mps": sustained,
        "steady_mps": steady,
        "end_to_end_mps": n / (t1 - t0),
        "ratio_sustained": sustained / (cap * numbers),
        "ratio_steady": steady / (cap * numbers),
        "throttled_130429": stats["throttled_130429"],
        "max_window": stats["max_window_per_second"],
        "seconds": t1 - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cap", type=int, action="append")
    p.add_argument("--recipients", type=int, action="append")
    p.add_argument("--latency-ms", type=float, default=200)
    p.add_argument("--timeline", action="store_true", help="print messages accepted in each second")
    p.add_argument("--campaigns", type=int, default=1, help="campaigns on the one number at once")
    p.add_argument("--inject-130429", type=int, default=0, help="about this many sends answered 130429 at random")
    p.add_argument("--numbers", type=int, default=1, help="organizations, each with a number at the cap, at once")
    p.add_argument("--processes", action="store_true", help="each process's peak RSS and CPU seconds")
    p.add_argument("--chart", type=Path, help="write the send rate second by second as a PNG here (first cap only)")
    args = p.parse_args()
    caps = args.cap or [1000, 80]
    sizes = args.recipients or [20_000 if c >= 1000 else 4_000 for c in caps]
    fresh_services()
    for cap, size in zip(caps, sizes, strict=True):
        r = run(
            cap,
            size,
            args.latency_ms,
            args.timeline,
            args.campaigns,
            args.inject_130429,
            args.numbers,
            args.processes,
            args.chart if cap == caps[0] else None,
        )
        numbers = f" over {args.numbers} numbers at {cap} each (slowest {r['slowest_number_ratio']:.3f})"
        print(
            f"cap {r['cap']:>5} msg/s{numbers if args.numbers > 1 else ''}, "
            f"{r['recipients']} recipients in {args.campaigns * args.numbers} campaign(s), "
            f"latency {args.latency_ms:.0f} ms: "
            f"sustained {r['sustained_mps']:.1f} msg/s (ratio {r['ratio_sustained']:.3f}), "
            f"steady {r['steady_mps']:.1f} (ratio {r['ratio_steady']:.3f}), "
            f"end-to-end {r['end_to_end_mps']:.1f} msg/s in {r['seconds']:.1f} s; "
            f"130429: {r['throttled_130429']}; largest 1-s window: {r['max_window']}; {r['status']}"
        )


if __name__ == "__main__":
    main()
