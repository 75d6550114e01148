"""Genuine webhooks while a forged-signature flood hits the receiver: their latency and rate, with and without.

The real receiver (uvicorn, as `campaigns webhooks serve`) knows `--secrets` app secrets (an organization
that brings its own Meta app adds one), so checking a body costs its size times that many HMACs. A load
generator posts genuine signed status webhooks open loop at `--rate` (latency counted from when each was
due); a second process floods the receiver over `--flood-connections` connections with `--flood-bytes`
bodies whose signature is well-formed but wrong, as fast as it is answered. Every genuine 200 must be a
stored row.

    uv run python -m bench.webhook_flood [--rate 100] [--seconds 8] [--secrets 50] [--flood-bytes 3000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.webhooks import SECRET, cpu_seconds, free_port, load, signed_bodies, wait_up


def make_app(n_secrets: int) -> Any:
    from campaigns.webhook_app import create_app
    from campaigns.webhooks.receiver import KnownSecrets

    others = [f"other-app-secret-{i}".encode() for i in range(n_secrets - 1)]
    return create_app(os.environ["DATABASE_URL"], KnownSecrets(app_secrets=[SECRET.encode(), *others]))


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    uvicorn.run(make_app(args.secrets), host="127.0.0.1", port=args.port, log_level="error")


async def flood(url: str, seconds: float, connections: int, size: int) -> dict[str, Any]:
    """Forged bodies as fast as answered for `seconds`; how the receiver answered them."""
    import aiohttp

    body = b'{"object":"whatsapp_business_account","entry":[' + b" " * max(0, size - 64) + b"]}"
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + "ab" * 32}
    answers: dict[str, int] = {}
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker() -> None:
            while time.perf_counter() < stop:
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        code = str(resp.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    code = type(exc).__name__
                answers[code] = answers.get(code, 0) + 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    return {"answers": answers, "seconds": seconds}


def run_flood(args: argparse.Namespace) -> None:
    print(json.dumps(asyncio.run(flood(args.url, args.seconds, args.flood_connections, args.flood_bytes))))


def measure(name: str, url: str, bodies: list, rate: float, pid: int, flood_cmd: list[str] | None) -> int:
    flooder = subprocess.Popen(flood_cmd, stdout=subprocess.PIPE, text=True) if flood_cmd else None
    if flooder:
        time.sleep(1.0)  # the flood is under way before the genuine webhooks start
    s0, c0 = cpu_seconds(pid), time.process_time()
    r = asyncio.run(load(url, bodies, 64, rate))
    cpu, generator = cpu_seconds(pid) - s0, time.process_time() - c0
    flooded = ""
    if flooder:
        out, _ = flooder.communicate(timeout=120)
        f = json.loads(out)
        total = sum(f["answers"].values())
        flooded = f"; flood: {total:,} forged requests ({total / f['seconds']:,.0f}/s) answered {f['answers']}"
    print(
        f"  {name}: genuine {r['ok']:,} of {len(bodies):,} accepted = {r['ok'] / r['elapsed']:,.0f}/s "
        f"(asked {rate:,.0f}/s); p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, max {r['max']:.0f} ms; "
        f"answers {r['statuses']}; receiver CPU {cpu / r['elapsed']:.0%} of a core, generator "
        f"{generator / r['elapsed']:.0%} (at worst {r['lag']:.0f} ms behind schedule){flooded}"
    )
    return r["ok"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", nargs="?", default="bench", choices=["bench", "serve", "flood"])
    p.add_argument("--rate", type=float, default=100.0, help="genuine webhooks per second")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--secrets", type=int, default=50, help="app secrets the receiver knows")
    p.add_argument("--flood-connections", type=int, default=16)
    p.add_argument("--flood-bytes", type=int, default=3_000_000)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--url", default="")
    args = p.parse_args()
    if args.mode == "serve":
        serve(args)
        return
    if args.mode == "flood":
        run_flood(args)
        return

    from bench.common import fresh_services

    fresh_services("campaigns_bench_flood")
    import psycopg

    from campaigns.store.db import libpq_url

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.webhook_flood", "serve", "--port", str(port), "--secrets", str(args.secrets)],
        stdin=subprocess.DEVNULL,
    )
    n = int(args.rate * args.seconds)
    bodies = signed_bodies(0, 2 * n)
    print(
        f"receiver knows {args.secrets} app secrets; genuine webhooks paced at {args.rate:,.0f}/s for "
        f"{args.seconds:.0f} s; flood: {args.flood_connections} connections of {args.flood_bytes:,}-byte "
        f"forged bodies"
    )
    accepted = 0
    try:
        wait_up(port, proc)
        url = f"http://127.0.0.1:{port}/webhooks/whatsapp"
        flood_cmd = [
            sys.executable,
            "-m",
            "bench.webhook_flood",
            "flood",
            "--url",
            url,
            "--seconds",
            str(args.seconds + 2),
            "--flood-connections",
            str(args.flood_connections),
            "--flood-bytes",
            str(args.flood_bytes),
        ]
        accepted += measure("without flood", url, bodies[:n], args.rate, proc.pid, None)
        accepted += measure("under flood", url, bodies[n:], args.rate, proc.pid, flood_cmd)
    finally:
        proc.terminate()
        proc.wait(30)
    with psycopg.connect(libpq_url(os.environ["DATABASE_URL"])) as conn:
        rows = conn.execute("select count(*) from webhook_events").fetchone()[0]
    print(
        f"  stored: {rows:,} rows for {accepted:,} genuine answers 200: "
        f"{'nothing lost, nothing forged stored' if rows == accepted else 'MISMATCH'}"
    )


if __name__ == "__main__":
    main()
