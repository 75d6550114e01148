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

Campaign runs are threads of this process, run by the dispatcher (dispatch.py, `--limit` at once, 500 by
default): a campaign waiting for its pace costs a thread, not a process and a slot. Housekeeping and the
operator's forms run on Prefect's runner, each run a process forked warm, with HOUSEKEEPING_SLOTS of their
own: however many campaigns run, statuses are still ingested, scheduled and capped campaigns still start,
and an operator's pause is not queued behind the campaign it pauses. The scheduler's deployment admits one
run at a time and cancels a new one while one runs (CANCEL_NEW): two passes at once would launch the same
campaign twice. Runs left Running or Pending by a `serve` that was killed (kill -9, a lost machine) are
closed as Crashed when `serve` starts again, if it is the only one (a Postgres advisory lock per Prefect
server, held while it lives): nothing else would, the UI would show them running forever, and the
scheduler's would hold its one slot until Prefect's five-minute lease ran out. `kill -USR1` writes every
thread's stack to stderr.

Ctrl-C (SIGINT) stops it as SIGTERM does, within seconds: Prefect's runner ends the housekeeping runs, then the
dispatcher the campaign runs ("Runner is shutting down."; the scheduler launches the interrupted campaigns again
once `serve` is back, not while it stops), and the housekeeping runs ignore the terminal's SIGINT, which would
otherwise crash them.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import signal
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy, StateType
from prefect.exceptions import TerminationSignal
from prefect.runner import Runner
from prefect.schedules import Interval, Schedule
from prefect.settings import PREFECT_API_URL
from prefect.states import Crashed

from campaigns.store.db import get_engine
from campaigns.store.runlock import sole_serve_lock
from deployments.dispatch import Dispatcher
from deployments.limits import ensure_send_limit
from deployments.warm_start import start_runs_warm
from flows.campaign_control import campaign_control
from flows.campaign_scheduler import campaign_scheduler
from flows.create_campaign import create_campaign
from flows.ingest_statuses import ingest_statuses
from flows.send_campaign import send_campaign

log = logging.getLogger(__name__)
INGEST_INTERVAL = 600  # fewer, longer runs: housekeeping must not bury the campaign runs
SCHEDULER_RUN = 600  # a pass every 30 s, in runs of ten minutes (one at a time)
HOUSEKEEPING = ("campaigns", "housekeeping")
OPERATOR_TAGS = ("campaigns", "operator")
POLL_SECONDS = 0.5  # a started campaign is picked up within half a second (Prefect's default poll is every 10 s)
FIRST_RUN_SECONDS = 15  # housekeeping's first run after start-up: Prefect's scheduler adds a new schedule's runs
# within 5 s and never schedules one in the past, so the first run is due a little after that


def soon_and_every(seconds: int) -> Schedule:
    """Every `seconds`, the first run FIRST_RUN_SECONDS from now. A plain `interval=` anchors the schedule at
    registration, so after each start of `serve` statuses and scheduled campaigns would wait a whole interval
    (ten minutes) for their first pass."""
    anchor = datetime.now(UTC) - timedelta(seconds=seconds - FIRST_RUN_SECONDS)
    return Interval(seconds, anchor_date=anchor)


ORPHANED = [StateType.RUNNING, StateType.PENDING, StateType.CANCELLING]
HOUSEKEEPING_SLOTS = 4  # ingest and the scheduler (one run each) and the operator's forms, which last seconds


async def close_orphaned_runs(deployment_ids: list[Any]) -> int:
    """Mark Crashed the runs of these deployments that a previous `serve` left Running, Pending or Cancelling.
    Called before this `serve` polls, when no run of its own exists yet; a served deployment is served by one
    `serve` at a time (the last to register it), so such a run has no process left. The transition is
    orchestrated (not forced), so Prefect releases the deployment slot the run held."""
    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=ORPHANED))),
        )
        for run in runs:
            await client.set_flow_run_state(
                run.id, Crashed(message="Closed when `campaigns serve` started again: the serve running it was gone.")
            )
    return len(runs)


@dataclass(frozen=True)
class Served:
    """One served deployment, as plain data: `serve` builds its deployments from these, and
    tests/unit/test_deployments.py holds prefect.yaml (the work-pool path) to the same."""

    flow: Flow[..., Any]
    tags: tuple[str, ...]
    queue: str  # the runner in `serve`, the work queue in prefect.yaml: campaigns never hold up housekeeping
    parameters: dict[str, Any] = field(default_factory=dict)
    every_seconds: int | None = None  # a schedule
    one_at_a_time: bool = False  # a deployment concurrency limit of one that cancels a new run (CANCEL_NEW)


CAMPAIGNS_QUEUE, HOUSEKEEPING_QUEUE = "campaigns", "housekeeping"
SERVED = (
    Served(send_campaign, ("campaigns",), CAMPAIGNS_QUEUE),
    Served(
        ingest_statuses,
        HOUSEKEEPING,
        HOUSEKEEPING_QUEUE,
        {"run_for_seconds": INGEST_INTERVAL, "every_seconds": 1.0},
        every_seconds=INGEST_INTERVAL,
    ),
    Served(
        campaign_scheduler,
        HOUSEKEEPING,
        HOUSEKEEPING_QUEUE,
        {"run_for_seconds": SCHEDULER_RUN - 30, "every_seconds": 30.0},
        every_seconds=SCHEDULER_RUN,
        one_at_a_time=True,
    ),
    Served(create_campaign, OPERATOR_TAGS, HOUSEKEEPING_QUEUE),
    Served(campaign_control, OPERATOR_TAGS, HOUSEKEEPING_QUEUE),
)


def _options(served: Served) -> dict[str, Any]:
    """Runner.add_flow's options for one served deployment."""
    options: dict[str, Any] = {"tags": list(served.tags)}
    if served.parameters:
        options["parameters"] = served.parameters
    if served.every_seconds:
        options["schedule"] = soon_and_every(served.every_seconds)
    if served.one_at_a_time:
        options["concurrency_limit"] = ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
        )
    return options


CAMPAIGN_RUNS = 500  # campaigns at once in one `serve` (threads: deployments/dispatch.py)


def main(limit: int = CAMPAIGN_RUNS) -> None:
    """Register the deployments and poll for runs until SIGINT or SIGTERM: campaign runs are threads of this
    process (the dispatcher, `limit` at once), housekeeping and the operator's forms are processes forked
    from a warm server (warm_start.py) on a runner with HOUSEKEEPING_SLOTS of their own."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: every thread's stack on stderr
    ensure_send_limit()
    housekeeping = [served for served in SERVED if served.queue == HOUSEKEEPING_QUEUE]
    start_runs_warm([served.flow for served in housekeeping])
    signal.signal(signal.SIGINT, lambda *_: signal.raise_signal(signal.SIGTERM))  # Prefect handles SIGTERM
    runner = Runner(limit=HOUSEKEEPING_SLOTS, query_seconds=POLL_SECONDS, pause_on_shutdown=True)
    deployment_ids = [runner.add_flow(served.flow, name="default", **_options(served)) for served in housekeeping]
    (campaigns,) = [served for served in SERVED if served.queue == CAMPAIGNS_QUEUE]
    dispatcher = Dispatcher(campaigns.flow, limit, POLL_SECONDS)

    stop_housekeeping = runner.astop  # what the runner's SIGTERM handler calls: the dispatcher stops after it

    async def stop_housekeeping_first() -> None:
        """Housekeeping's runs end first, then the campaigns': a scheduler pass in between would take each
        campaign run the dispatcher just ended ("Runner is shutting down.") for a lost runner and launch it
        again, two hundred runs created through a busy Prefect while `serve` is stopping."""
        try:
            await stop_housekeeping()
        finally:
            await asyncio.to_thread(dispatcher.stop)

    runner.astop = stop_housekeeping_first  # type: ignore[method-assign]
    sole = sole_serve_lock(get_engine(), PREFECT_API_URL.value() or "")

    async def serve_all() -> None:
        deployment_ids.append(await dispatcher.register(**_options(campaigns)))
        if sole is not None:
            await close_orphaned_runs(deployment_ids)
        else:
            log.warning("another `campaigns serve` is running on this Prefect server: runs left Running stay so")
        await asyncio.gather(dispatcher.start(), runner.start())

    with contextlib.suppress(KeyboardInterrupt, TerminationSignal):
        asyncio.run(serve_all())


if __name__ == "__main__":
    main()
