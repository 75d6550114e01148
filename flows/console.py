"""A send-campaign run as an operator meets it in the Prefect UI: its name and tags, its state and its
buttons (its artifacts are tasks/artifacts.py). The words come from `campaigns.reporting.run_report`; this module
puts them into Prefect.

How a run's state tells its campaign's (README, "Operating from the Prefect UI"):
- completed → Completed, the funnel as its message; cancelled → Cancelled; failed → Failed with the reason.
- paused (by an operator, an error or a cap) → the run suspends itself (Prefect's Suspended state, the
  reason as its message): it holds no process while it waits, and Resume on the run resumes the campaign
  in the same run. Resuming the campaign elsewhere (API, CLI, campaign-control, the scheduler at the end of
  a cap window) wakes that same run. A run with no deployment (`campaigns run` in a terminal) cannot be
  suspended: it ends Cancelled, named "Paused", with the reason.
- The UI's Cancel pauses the campaign (reason `operator`) within about a second and ends the run Cancelled
  with the explanation: a run is cancelled, the campaign is only paused (cancel the campaign itself to end
  it). The UI's Suspend pauses the campaign the same way and leaves the run Suspended.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.exceptions import Abort, Pause
from prefect.states import Cancelled, Completed, Failed, State, Suspended

from campaigns.control import lifecycle, operator
from campaigns.control.scheduler import RUNNER_SHUTDOWN
from campaigns.errors import CampaignError
from campaigns.reporting import run_report
from campaigns.store.db import get_engine

log = logging.getLogger(__name__)

CANCEL_PRESSED = (
    "Cancel was pressed on its run in the Prefect UI: the campaign is paused, not cancelled; resume "
    "it to send the rest, or cancel the campaign itself to end it"
)
SUSPEND_PRESSED = "Suspend was pressed on its run in the Prefect UI: press Resume on that run to send the rest"


def refused(exc: CampaignError, logger: Any) -> State:
    """An operator form's refused action (create-campaign, campaign-control): the domain's message, naming
    the field or the transition, in the run's log and as its Failed state's message."""
    message = operator.describe(exc)
    logger.error("%s", message)
    return Failed(message=message)


def ignore_terminal_interrupt() -> None:
    """In a run started by `serve` or a worker: Ctrl-C in their terminal reaches this process too and would
    crash the run; the runner stops it properly (SIGTERM with Prefect's intent) instead."""
    from prefect.runtime import deployment

    if deployment.get_id() and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def campaign_run_name() -> str:
    """The run's name, worked out when it starts: the campaign's and its organization's names."""
    from prefect.runtime import flow_run

    campaign_id = flow_run.parameters.get("campaign_id")
    try:
        with get_engine().connect() as conn:
            return run_report.run_name(lifecycle.get_any_org(conn, uuid.UUID(str(campaign_id))))
    except Exception:  # a missing campaign fails the run itself, with a clearer message than a name could give
        return f"send-campaign-{campaign_id}"


def tag_run(flow_run_id: uuid.UUID, org_name: str) -> None:
    """Tag the run `campaigns` and `org:<organization>` (the runs page filters campaigns, and by tenant),
    however it was launched: a run started without the deployment (`campaigns demo`, `campaigns run`) has
    none of the deployment's tags."""
    wanted = ["campaigns", f"org:{org_name}"[:100]]
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        missing = [tag for tag in wanted if tag not in run.tags]
        if missing:
            client.update_flow_run(flow_run_id, tags=[*run.tags, *missing])


def was_suspended(flow_run_id: uuid.UUID) -> bool:
    """Whether this run was suspended before and is now running again: someone pressed Resume on it, or the
    campaign was resumed elsewhere and woke it."""
    with get_client(sync_client=True) as client:
        return any(s.type == StateType.PAUSED for s in client.read_flow_run_states(flow_run_id))


class ButtonWatcher:
    """Pauses the campaign as soon as Cancel or Suspend is pressed on its run (Prefect's serve or worker would
    kill the process only after a grace period: sends went on for ~27 s), and wakes the run's waits; every
    send in flight sees the pause within the send path's control poll. The run's state is read once a
    second by the process's one RunStates poller, however many runs the process holds."""

    def __init__(self, campaign_id: uuid.UUID, flow_run_id: uuid.UUID, logger: Any) -> None:
        self.campaign_id, self.flow_run_id, self.logger = campaign_id, flow_run_id, logger
        self.pressed: str | None = None  # "cancel" or "suspend"
        self.stopping = False  # the dispatcher running this run in `campaigns serve` is stopping
        self._woken = threading.Event()

    def __enter__(self) -> ButtonWatcher:
        RUN_STATES.watch(self)
        return self

    def __exit__(self, *exc: object) -> None:
        RUN_STATES.forget(self)

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking at once when a button is pressed or the dispatcher stops."""
        self._woken.wait(seconds)

    def stop(self) -> None:
        """The dispatcher is stopping: the run leaves after its wave, the campaign stays running."""
        self.stopping = True
        self._woken.set()

    def press(self, button: str) -> None:
        if self.pressed:
            return
        self.pressed = button
        message = CANCEL_PRESSED if button == "cancel" else SUSPEND_PRESSED
        if pause_campaign(self.campaign_id, message):
            self.logger.warning("campaign paused (operator): %s", message)
        self._woken.set()


BUTTONS = {StateType.CANCELLING: "cancel", StateType.PAUSED: "suspend"}  # a run's state -> the button pressed


class RunStates:
    """One thread per process that reads the states of every watched run in one request a second: with a
    thread and a request per run, 200 campaigns in one `serve` would ask the Prefect API 200 times a second."""

    PAGE = 200  # Prefect's default read limit

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._watchers: dict[uuid.UUID, ButtonWatcher] = {}
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, watcher: ButtonWatcher) -> None:
        with self._mutex:
            self._watchers[watcher.flow_run_id] = watcher
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="run-buttons", daemon=True)
                self._thread.start()

    def forget(self, watcher: ButtonWatcher) -> None:
        with self._mutex:
            self._watchers.pop(watcher.flow_run_id, None)

    def stop_all(self) -> None:
        """Every watched run leaves after its wave (`serve` stopping; a run that starts after this meets the
        stopped send engine and leaves too: flows/send_campaign.py)."""
        with self._mutex:
            watchers = list(self._watchers.values())
        for watcher in watchers:
            watcher.stop()

    def _loop(self) -> None:
        """Asks only for the watched runs whose button was pressed (Cancelling or Paused): the answer is
        nearly always empty, where 200 whole runs a second kept Prefect's server busy."""
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )

        pressed = FlowRunFilterState(type=FlowRunFilterStateType(any_=list(BUTTONS)))

        with get_client(sync_client=True) as client:
            while True:
                time.sleep(self.interval)
                with self._mutex:
                    watched = dict(self._watchers)
                ids = list(watched)
                for start in range(0, len(ids), self.PAGE):
                    page = ids[start : start + self.PAGE]
                    try:
                        runs = client.read_flow_runs(
                            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=page), state=pressed), limit=len(page)
                        )
                    except Exception:  # the API is briefly unreachable: look again next second
                        continue
                    for run in runs:
                        try:
                            if run.state and run.state.type in BUTTONS:
                                watched[run.id].press(BUTTONS[run.state.type])
                        except Exception:  # Postgres briefly away: pressed again next second
                            log.warning("could not pause the campaign of run %s", run.id, exc_info=True)


RUN_STATES = RunStates()


def pause_campaign(campaign_id: uuid.UUID, message: str) -> bool:
    with get_engine().begin() as conn:
        return lifecycle.pause_for_error(conn, campaign_id, "operator", message)


def cancel_was_pressed(flow_run_id: uuid.UUID) -> bool:
    """Whether the run is being cancelled from the UI (or the API): its state on the server is Cancelling.
    `serve` stopping sends its runs the same "cancel" intent and SIGTERM, but marks them Cancelled only after
    they are gone, so until then their state is still Running. Unreachable API: not pressed (the campaign
    stays running and is taken up again; a real Cancel is still honoured by on_cancellation)."""
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except Exception:
        return False
    return bool(state and state.type == StateType.CANCELLING)


def on_termination(campaign_id: uuid.UUID, flow_run_id: uuid.UUID, logger: Any) -> None:
    """SIGTERM from `serve` or a worker. If Cancel was pressed in the UI, the campaign pauses at once and the
    sends in flight stop within the send path's control poll; otherwise (`serve` stopping) the campaign stays
    running for the next `serve` to take up, and the send engine ends now, so nothing leaves after it and the
    rows in flight are reconciled by the next run, as after a crash. Prefect cannot stop task threads: without
    this they sent on until their batches were done (12 s and more)."""
    from campaigns.sending.engine_process import close_engine_client

    try:
        from prefect._internal.control_listener import get_intent

        intent = get_intent()
    except ImportError:  # a Prefect without control intents: the hook after the kill still pauses
        intent = None
    if intent == "cancel" and cancel_was_pressed(flow_run_id):
        if pause_campaign(campaign_id, CANCEL_PRESSED):
            logger.warning("campaign paused (operator): %s", CANCEL_PRESSED)
    else:
        logger.warning("the run is being stopped (%s): sending stops now; the next run continues", intent or "SIGTERM")
        close_engine_client()


def on_cancellation(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect's hook after `serve` or a worker killed a cancelled run: the campaign must not stay running
    (the scheduler would relaunch it), so it is paused, and the run's log says so."""
    from prefect.logging.loggers import flow_run_logger

    campaign_id = (flow_run.parameters or {}).get("campaign_id")
    if not campaign_id or (state and state.message == RUNNER_SHUTDOWN):  # `serve` stopping: not the operator
        return
    if pause_campaign(uuid.UUID(str(campaign_id)), CANCEL_PRESSED):
        flow_run_logger(flow_run, flow).warning("campaign paused (operator): %s", CANCEL_PRESSED)


def final_state(
    rep: dict[str, Any], flow_run_id: uuid.UUID | None, pressed: str | None, result: dict[str, Any]
) -> State:
    """The state that tells the campaign's outcome (module docstring) from its report (run_report.report); a
    paused campaign suspends the run."""
    campaign, funnel = rep["campaign"], run_report.funnel_line(rep["stats"])
    status = campaign["status"]
    if status == "completed":
        return Completed(message=f"Campaign completed: {funnel}", data=result)
    if status == "cancelled":
        return Cancelled(message=f"Campaign cancelled: {funnel}", data=result)
    if status == "failed":
        return Failed(message=run_report.status_line(campaign), data=result)
    if status == "paused":
        why = f"Campaign {run_report.pause_explanation(campaign)} So far: {funnel}"
        if pressed == "cancel":
            return Cancelled(message=f"{CANCEL_PRESSED}. {funnel}", data=result)
        if pressed != "suspend" and flow_run_id:
            suspend(flow_run_id, why)  # raises Pause when the run has a deployment to come back to
        if pressed == "suspend":
            raise Pause()  # the run is Suspended already (the button); leave it so
        return Cancelled(name="Paused", message=why, data=result)
    return Completed(name=status.capitalize(), message=result.get("status", status), data=result)


def suspend(flow_run_id: uuid.UUID, message: str) -> None:
    """Suspend this run with `message` on its state and leave the process (Prefect's suspend_flow_run, which
    cannot carry a message). Returns only when Prefect refuses (a run with no deployment)."""
    with get_client(sync_client=True) as client:
        from prefect.utilities.engine import propose_state_sync

        try:
            state = propose_state_sync(
                client, Suspended(pause_key=f"paused-{uuid.uuid4()}", message=message[:5000]), flow_run_id=flow_run_id
            )
        except Abort:
            return
    if state.is_paused():
        raise Pause(state=state)
