"""Start latency, as the main app sees it: `POST /api/v1/campaigns/{id}/start` over HTTP with `campaigns serve`
running, how long until the answer, until `serve` picks the run up (Pending), until it is Running (its
process has started and imported the flow), and until the first message reaches the provider (the sandbox).
Where the time goes, from the run's state history (server time): `poll` is Scheduled→Pending (`serve`'s poll),
`process` is Pending→Running (the run's process starts and its engine proposes Running).

    uv run python -m bench.start [--campaigns 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid

from bench.common import bulk_contacts, fresh_services, new_org, sandbox_campaign
from sandbox import SandboxConfig, SandboxProcess


def run(campaigns: int) -> dict[str, list[float]]:
    import httpx
    from prefect.client.orchestration import get_client

    from campaigns import api_tokens
    from campaigns.api import PrefectLauncher, Unavailable, create_app
    from campaigns.infra.asgi_thread import ThreadedServer
    from campaigns.store.db import get_engine

    serve = subprocess.Popen(
        [sys.executable, "-m", "campaigns.cli", "serve"],
        env=os.environ.copy(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    figures: dict[str, list[float]] = {
        "answer": [],
        "picked_up": [],
        "running": [],
        "first_message": [],
        "poll": [],
        "process": [],
    }
    try:
        launcher = PrefectLauncher()
        while True:
            try:
                launcher.ready()
                break
            except Unavailable:
                time.sleep(0.5)
        api = ThreadedServer(create_app()).start()
        with SandboxProcess(SandboxConfig(latency_ms=50)) as sandbox:
            for i in range(campaigns):
                org = new_org("start")
                bulk_contacts(org, 100)
                cid = sandbox_campaign(org, sandbox.url, 80, phone_number_id=f"8800{i}")
                with get_engine().begin() as conn:
                    _, token = api_tokens.issue(conn, org, "agent")
                before = len(sandbox.messages())
                t0, t0_wall = time.perf_counter(), time.time()
                answer = httpx.post(
                    f"{api.url}/api/v1/campaigns/{cid}/start", timeout=60, headers={"Authorization": f"Bearer {token}"}
                )
                figures["answer"].append(time.perf_counter() - t0)
                assert answer.status_code == 200, answer.text
                run_id = uuid.UUID(answer.json()["flow_run_id"])
                with get_client(sync_client=True) as client:
                    while client.read_flow_run(run_id).state.type.value == "SCHEDULED":
                        time.sleep(0.02)
                    figures["picked_up"].append(time.perf_counter() - t0)  # serve took it: Pending
                    while client.read_flow_run(run_id).state.type.value not in ("RUNNING", "COMPLETED"):
                        time.sleep(0.02)
                figures["running"].append(time.perf_counter() - t0)
                while len(sandbox.messages()) == before:
                    time.sleep(0.1)
                first = min(message["accepted_at"] for message in sandbox.messages()[before:])
                figures["first_message"].append(first - t0_wall)  # the sandbox's own clock of acceptance
                with get_client(sync_client=True) as client:  # let it finish before the next one
                    while not client.read_flow_run(run_id).state.is_final():
                        time.sleep(0.2)
                    stamps = {state.type.value: state.timestamp for state in client.read_flow_run_states(run_id)}
                figures["poll"].append((stamps["PENDING"] - stamps["SCHEDULED"]).total_seconds())
                figures["process"].append((stamps["RUNNING"] - stamps["PENDING"]).total_seconds())
        api.stop()
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--campaigns", type=int, default=5)
    args = parser.parse_args()
    fresh_services("campaigns_bench_start")
    figures = run(args.campaigns)
    for name, target in (
        ("answer", 1.0),
        ("picked_up", 2.0),
        ("running", 2.0),
        ("first_message", None),
        ("poll", None),
        ("process", None),
    ):
        values = figures[name]
        line = f"{name:14} median {statistics.median(values):.2f} s, max {max(values):.2f} s over {len(values)} starts"
        if target:
            line += f"; target {target:.0f} s, ratio {max(values) / target:.2f}"
        print(line)


if __name__ == "__main__":
    main()
