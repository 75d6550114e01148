"""The webhook receiver on loopback: accepted webhooks per second, latency, nothing lost.

The real receiver (`campaigns.webhook_app.create_app`, served by uvicorn as `campaigns webhooks serve` serves
it) runs in its own process; this process is the load generator: N keep-alive connections (aiohttp) post
signed Meta status webhooks, one status per POST as Meta often sends them (the shape of a real `sent` /
`delivered` / `read` capture, with pricing and our callback data). Bodies and signatures are made before
the clock starts. Afterwards every 200 must be a row in webhook_events, each body stored once.

Target: ≥ 3,000 accepted/s, p99 < 100 ms, nothing lost.

    uv run python -m bench.webhooks [--requests 60000] [--connections 128] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

SECRET = "bench-webhook-app-secret"
PHONE_NUMBER_ID = "838463922683351"
TARGET_RATE = 3000.0
TARGET_P99_MS = 100.0


def make_app() -> Any:  # a uvicorn factory: several workers need an import string
    from campaigns.webhook_app import create_app
    from campaigns.webhooks.receiver import KnownSecrets

    return create_app(os.environ["DATABASE_URL"], KnownSecrets(app_secrets=[SECRET.encode()]))


def serve(args: argparse.Namespace) -> None:
    """The receiver, served like `campaigns webhooks serve` (uvicorn, log level warning)."""
    import uvicorn

    opts = {"host": "127.0.0.1", "port": args.port, "log_level": "warning", "loop": args.loop, "http": args.http}
    if args.workers > 1:
        uvicorn.run("bench.webhooks:make_app", factory=True, workers=args.workers, **opts)
    else:
        uvicorn.run(make_app(), **opts)


def status_body(i: int) -> bytes:
    """One status per POST (reference §4.2 Example B), as Meta sends them when traffic is light or spread."""
    status = ("sent", "delivered", "read")[i % 3]
    st = {
        "id": f"wamid.HBgMNTUxMTkwMDAwMDAwFQIAERgS{i:020d}AA==",
        "status": status,
        "timestamp": str(1771854964 + i // 1000),
        "recipient_id": f"55119{i:08d}",
        "biz_opaque_callback_data": f"pytake:{i // 3 + 1}",
    }
    if status != "read":
        st["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "marketing", "type": "regular"}
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1147896940776789",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "5511900000000", "phone_number_id": PHONE_NUMBER_ID},
                            "statuses": [st],
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def signed_bodies(start: int, n: int) -> list[tuple[bytes, dict[str, str]]]:
    from sandbox import sign_body

    out = []
    for i in range(start, start + n):
        body = status_body(i)
        out.append(
            (
                body,
                {
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": sign_body(body, SECRET),
                    "User-Agent": "facebookexternalua",
                },
            )
        )
    return out


async def load(
    url: str, bodies: list[tuple[bytes, dict[str, str]]], connections: int, rate: float | None = None
) -> dict:
    """Closed loop (each connection posts again as soon as answered) or, with `rate`, open loop: request i
    is due at i / rate and its latency counts from then, so a receiver falling behind shows in p99."""
    import aiohttp

    latencies: list[float] = []
    lags: list[float] = []
    statuses: dict[int | str, int] = {}
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(body: bytes, headers: dict[str, str], since: float) -> None:
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    code: int | str = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                code = type(exc).__name__
            latencies.append(time.perf_counter() - since)
            statuses[code] = statuses.get(code, 0) + 1

        t0 = time.perf_counter()
        if rate is None:
            nxt = 0

            async def worker() -> None:
                nonlocal nxt
                while nxt < len(bodies):
                    body, headers = bodies[nxt]
                    nxt += 1
                    await post(body, headers, time.perf_counter())

            await asyncio.gather(*(worker() for _ in range(connections)))
        else:
            tasks = []
            for i, (body, headers) in enumerate(bodies):
                due = t0 + i / rate
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                else:
                    lags.append(now - due)  # the generator itself behind schedule (CPU taken from it)
                tasks.append(asyncio.create_task(post(body, headers, due)))
            await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "elapsed": elapsed,
        "ok": statuses.get(200, 0),
        "statuses": statuses,
        "p50": pct(0.50),
        "p99": pct(0.99),
        "max": latencies[-1] * 1000,
        "lag": max(lags, default=0) * 1000,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children that were waited for (uvicorn's workers)."""
    total = 0.0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            pids += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, proc: subprocess.Popen) -> None:
    import httpx

    for _ in range(400):
        if proc.poll() is not None:
            raise RuntimeError("receiver exited")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("receiver did not start")


def commits(db_url: str) -> int:
    """Transactions committed in the bench database so far (one per group the EventWriter stored)."""
    import psycopg

    time.sleep(1.1)  # backends publish their counters at most once a second
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("select pg_stat_clear_snapshot()")
        return conn.execute("select xact_commit from pg_stat_database where datname = current_database()").fetchone()[0]


def report(name: str, r: dict, wanted: int, server_cpu: float, client_cpu: float, groups: int) -> float:
    rate = r["ok"] / r["elapsed"]
    print(
        f"  {name}: {r['ok']:,} of {wanted:,} accepted in {r['elapsed']:.2f} s = {rate:,.0f}/s "
        f"(target {TARGET_RATE:,.0f}/s: ratio {rate / TARGET_RATE:.2f}); p50 {r['p50']:.1f} ms, "
        f"p99 {r['p99']:.1f} ms (target {TARGET_P99_MS:.0f} ms: ratio {r['p99'] / TARGET_P99_MS:.2f}), "
        f"max {r['max']:.0f} ms; receiver CPU {server_cpu / r['elapsed']:.0%} of a core "
        f"({server_cpu / max(1, r['ok']) * 1e6:.0f} µs per webhook), load generator "
        f"{client_cpu / r['elapsed']:.0%}"
        + f"; ~{r['ok'] / max(1, groups):.0f} webhooks per commit"
        + (f" (at worst {r['lag']:.0f} ms behind schedule)" if r["lag"] else "")
        + f"; answers {r['statuses']}"
    )
    return rate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", nargs="?", default="bench", choices=["bench", "serve"])
    p.add_argument("--requests", type=int, default=60_000, help="closed-loop run: as fast as answered")
    p.add_argument("--rate", type=float, default=TARGET_RATE, help="open-loop run at this rate (0: skip)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the open-loop run")
    p.add_argument("--warmup", type=int, default=3_000)
    p.add_argument("--connections", type=int, default=128)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--loop", default="auto", help="uvicorn --loop (auto picks uvloop when installed)")
    p.add_argument("--http", default="auto", help="uvicorn --http (auto picks httptools when installed)")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    if args.mode == "serve":
        serve(args)
        return

    from bench.common import fresh_services

    fresh_services("campaigns_bench_wh")
    import psycopg

    from campaigns.store.db import libpq_url

    db_url = libpq_url(os.environ["DATABASE_URL"])
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "bench.webhooks",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--loop",
        args.loop,
        "--http",
        args.http,
    ]
    paced = int(args.rate * args.seconds) if args.rate else 0
    bodies = signed_bodies(0, args.warmup + args.requests + paced)
    warm_b, closed_b, paced_b = (
        bodies[: args.warmup],
        bodies[args.warmup : args.warmup + args.requests],
        bodies[args.warmup + args.requests :],
    )
    gc.collect()
    gc.freeze()  # ~100,000 prepared bodies: a full collection here would stall the generator, not the receiver
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    accepted = 0
    print(
        f"receiver: {args.workers} worker(s), loop={args.loop}, http={args.http}; "
        f"{args.connections} connections, one status per POST ({len(bodies[0][0])} bytes)"
    )
    try:
        wait_up(port, proc)
        url = f"http://127.0.0.1:{port}/webhooks/whatsapp"
        accepted += asyncio.run(load(url, warm_b, args.connections))["ok"]
        runs = [("as fast as answered", closed_b, None)]
        if paced:
            runs.append((f"paced at {args.rate:,.0f}/s", paced_b, args.rate))
        for name, chunk, rate in runs:
            x0 = commits(db_url)
            s0, c0 = cpu_seconds(proc.pid), time.process_time()
            r = asyncio.run(load(url, chunk, args.connections, rate))
            s1, c1 = cpu_seconds(proc.pid), time.process_time()
            report(name, r, len(chunk), s1 - s0, c1 - c0, commits(db_url) - x0 - 2)
            accepted += r["ok"]
    finally:
        proc.terminate()
        proc.wait(30)
    with psycopg.connect(db_url) as conn:
        rows, distinct = conn.execute("select count(*), count(distinct md5(body)) from webhook_events").fetchone()
    print(
        f"  stored: {rows:,} rows ({distinct:,} distinct bodies) for {accepted:,} answers 200 incl. warm-up: "
        f"{'nothing lost' if rows == distinct == accepted else 'MISMATCH'}"
    )


if __name__ == "__main__":
    main()
