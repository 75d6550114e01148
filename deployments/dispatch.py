"""The campaign dispatcher: every send-campaign run of a `campaigns serve`, each a thread of its process.

Why (README, "Many campaigns at once"): at the seed's default pace (100 messages an hour) a campaign of
10,000 recipients is a run of about 100 hours that waits 36 s between messages. With a process per run
(Prefect's runner) each waiting campaign held ~226 MB and one of `serve`'s 8 slots: the ninth campaign
waited days. Here a run costs a thread and a few MB; every run shares the process's one send engine (its
own process, which holds every number's rate limiter and connection pool), its one lock connection to
Postgres (campaigns.store.runlock.LockSession) and its one poller of run states (flows/console.RunStates).
Each campaign is still its own flow run in the UI, with its log, progress, buttons and final state.

It polls Prefect for the send-campaign deployment's due runs as the runner would (every POLL seconds),
claims each by proposing Pending (another `serve` polling the same deployment loses that race), and runs
it with Prefect's engine in a thread. A suspended run that is resumed becomes due again and is run again.
Cancel in the UI is seen by the run's ButtonWatcher within a second: the campaign pauses and the run ends
Cancelled. When `serve` stops, the send engine is killed at once (nothing leaves after that; the rows in flight
are reconciled by the next run, as after a crash) and every run leaves: its campaign stays running, and the
run ends Cancelled with Prefect's "Runner is shutting down.", as the runner's did; one still going after
STOP_SECONDS is marked so.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import Abort
from prefect.flow_engine import run_flow
from prefect.states import Cancelled, Pending
from prefect.utilities.engine import propose_state

from campaigns.control.scheduler import RUNNER_SHUTDOWN
from campaigns.sending.engine_process import stop_engine_for_good
from flows.console import RUN_STATES

log = logging.getLogger(__name__)
STOP_SECONDS = 10.0  # how long `serve` waits for its runs to end once its send engine is stopped


class Dispatcher:
    """Runs the due runs of one deployment in threads, at most `limit` at once."""

    def __init__(self, flow: Flow[..., Any], limit: int, poll_seconds: float) -> None:
        self.flow, self.limit, self.poll_seconds = flow, limit, poll_seconds
        self.deployment_id: uuid.UUID | None = None
        self.last_polled: datetime | None = None
        self._runs: dict[uuid.UUID, threading.Thread] = {}
        self._mutex = threading.Lock()
        self._stopping = threading.Event()

    @property
    def running(self) -> int:
        with self._mutex:
            return len(self._runs)

    async def register(self, **options: Any) -> uuid.UUID:
        """The flow's deployment, served here (no work pool), as Runner.add_flow would register it."""
        deployment = await self.flow.ato_deployment(name="default", **options)  # type: ignore[attr-defined]
        deployment.work_pool_name = None
        deployment.work_queue_name = None
        self.deployment_id = await deployment.aapply()
        return self.deployment_id

    def stop(self) -> None:
        """Stop taking runs and sending: the send engine is killed, so nothing leaves after this (the rows in
        flight are reconciled by the next run, as after a crash), and the runs leave (start() then returns)."""
        self._stopping.set()
        RUN_STATES.stop_all()
        stop_engine_for_good()

    async def start(self) -> None:
        """Poll and dispatch until stop(), then wait for the runs to leave."""
        async with get_client() as client:
            while not self._stopping.is_set():
                try:
                    await self._take_due(client)
                except Exception:  # the API briefly away: poll again
                    log.warning("could not poll for due campaign runs", exc_info=True)
                await asyncio.sleep(self.poll_seconds)
            await self._leave(client)

    async def _take_due(self, client: Any) -> None:
        assert self.deployment_id is not None
        runs = await client.get_scheduled_flow_runs_for_deployments(
            deployment_ids=[self.deployment_id], scheduled_before=datetime.now(UTC) + timedelta(seconds=1)
        )
        self.last_polled = now = datetime.now(UTC)
        for run in sorted(runs, key=lambda r: r.next_scheduled_start_time or now):
            with self._mutex:
                if run.id in self._runs or len(self._runs) >= self.limit:
                    continue
            if self._stopping.is_set() or not await _claim(client, run):
                continue
            thread = threading.Thread(target=self._run, args=(run,), name=f"run-{run.name}", daemon=True)
            with self._mutex:
                self._runs[run.id] = thread
            thread.start()

    def _run(self, flow_run: FlowRun) -> None:
        try:
            run_flow(self.flow, flow_run=flow_run, return_type="state")
        except BaseException:  # Pause (the run is Suspended), or what the engine has already put on its state
            log.debug("run %s left with an exception", flow_run.id, exc_info=True)
        finally:
            with self._mutex:
                self._runs.pop(flow_run.id, None)

    async def _leave(self, client: Any) -> None:
        """Wait up to STOP_SECONDS for the runs to end; close the ones still going as the runner would."""
        deadline = time.monotonic() + STOP_SECONDS
        while self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        with self._mutex:
            left = list(self._runs)
        for run_id in left:
            try:
                await client.set_flow_run_state(run_id, Cancelled(message=RUNNER_SHUTDOWN), force=True)
            except Exception:  # the next `serve` closes it as orphaned
                log.warning("run %s left Running", run_id, exc_info=True)


async def _claim(client: Any, run: FlowRun) -> bool:
    """Propose Pending: of two `serve`s polling the same deployment, one wins each run."""
    try:
        state = await propose_state(client, Pending(), flow_run_id=run.id)
    except Abort:
        return False
    except Exception:
        log.warning("could not claim run %s", run.id, exc_info=True)
        return False
    return state.is_pending()
