"""Serve every deployment from one process: `campaigns serve` (or `python -m deployments.serve`).

- send-campaign/default: run by `campaigns start`, the Prefect UI's "Run" form (campaign_id), or the
  main app through Prefect's REST API (`POST /api/deployments/{id}/create_flow_run`).
- ingest-statuses/default: every ten minutes, each run ingesting once a second for the ten minutes
  (a status reaches the statistics about a second after receipt; see flows/ingest_statuses.py).
- campaign-scheduler/default: a pass every 30 seconds (in runs of ten minutes, one at a time) starts
  scheduled campaigns and resumes campaigns paused by a number's hourly or daily cap once the window ends.
- create-campaign/default and campaign-control/default: the operator's forms in the Prefect UI (create a
  campaign, then draft / start / schedule it; pause, resume, cancel, retry-failed, schedule, start one).
The two housekeeping deployments are tagged `housekeeping`, campaign runs `campaigns` and `org:<name>`:
the Runs page filtered by tag shows one or the other. The global concurrency limit for send batches is
created here if missing.

Ctrl-C (SIGINT) stops it as SIGTERM does, within seconds: Prefect's runner cancels the runs in progress
("Runner is shutting down."; the scheduler launches interrupted campaigns again once it is back), and the
runs themselves ignore the terminal's SIGINT, which would otherwise crash them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import Flow
from prefect.exceptions import TerminationSignal
from prefect.runner import Runner
from prefect.schedules import Interval, Schedule

from deployments.limits import ensure_send_limit
from deployments.warm_start import start_runs_warm
from flows.campaign_control import campaign_control
from flows.campaign_scheduler import campaign_scheduler
from flows.create_campaign import create_campaign
from flows.ingest_statuses import ingest_statuses
from flows.send_campaign import send_campaign

INGEST_INTERVAL = 600  # fewer, longer runs: housekeeping must not bury the campaign runs
SCHEDULER_RUN = 600  # a pass every 30 s, in runs of ten minutes (one at a time)
HOUSEKEEPING = ["campaigns", "housekeeping"]
OPERATOR_TAGS = ["campaigns", "operator"]
POLL_SECONDS = 0.5  # a started campaign is picked up within half a second (Prefect's default poll is every 10 s)
FIRST_RUN_SECONDS = 15  # housekeeping's first run after start-up: Prefect's scheduler adds a new schedule's runs
# within 5 s and never schedules one in the past, so the first run is due a little after that


def soon_and_every(seconds: int) -> Schedule:
    """Every `seconds`, the first run FIRST_RUN_SECONDS from now. A plain `interval=` anchors the schedule at
    registration, so after each start of `serve` statuses and scheduled campaigns would wait a whole interval
    (ten minutes) for their first pass."""
    anchor = datetime.now(UTC) - timedelta(seconds=seconds - FIRST_RUN_SECONDS)
    return Interval(seconds, anchor_date=anchor)


def main(limit: int = 8) -> None:
    """Register the deployments with their flows (so each run forks from the warm server: warm_start.py; a
    deployment registered without its flow would start `python -m prefect.engine`, importing everything
    again) and poll for runs until SIGINT or SIGTERM."""
    served: list[tuple[Flow[..., Any], dict[str, Any]]] = [
        (send_campaign, {"tags": ["campaigns"]}),
        (
            ingest_statuses,
            {
                "schedule": soon_and_every(INGEST_INTERVAL),
                "tags": HOUSEKEEPING,
                "parameters": {"run_for_seconds": INGEST_INTERVAL, "every_seconds": 1.0},
            },
        ),
        (
            campaign_scheduler,
            {
                "schedule": soon_and_every(SCHEDULER_RUN),
                "tags": HOUSEKEEPING,
                "concurrency_limit": 1,
                "parameters": {"run_for_seconds": SCHEDULER_RUN - 30, "every_seconds": 30.0},
            },
        ),
        (create_campaign, {"tags": OPERATOR_TAGS}),
        (campaign_control, {"tags": OPERATOR_TAGS}),
    ]
    ensure_send_limit()
    start_runs_warm([served_flow for served_flow, _ in served])
    signal.signal(signal.SIGINT, lambda *_: signal.raise_signal(signal.SIGTERM))  # Prefect handles SIGTERM
    runner = Runner(limit=limit, query_seconds=POLL_SECONDS, pause_on_shutdown=True)
    for served_flow, options in served:
        runner.add_flow(served_flow, name="default", **options)
    with contextlib.suppress(KeyboardInterrupt, TerminationSignal):
        asyncio.run(runner.start())


if __name__ == "__main__":
    main()
