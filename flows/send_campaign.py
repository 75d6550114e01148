"""send-campaign: a campaign from its audience to every recipient, exactly once.

Requires: DATABASE_URL, REDIS_URL, PREFECT_API_URL (or the embedded defaults); one
`whatsapp-number-credentials` block per number; the global concurrency limit `whatsapp-send-batches`
(created on first use if missing). Deployed as `send-campaign/default`.

The run is named after the campaign and its organization and tagged `org:<name>`; its log tells the story
(audience, sending, pauses with what to do, retries, the funnel at the end) and its final state tells the
campaign's outcome (flows/console.py): a paused campaign suspends the run, and Resume on it resumes both.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import nullcontext
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import update_progress_artifact
from prefect.exceptions import Pause, TerminationSignal
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, State
from prefect.task_runners import ThreadPoolTaskRunner

from campaigns.control import lifecycle
from campaigns.control.scheduler import RUNNER_SHUTDOWN
from campaigns.reporting import run_report, stats
from campaigns.sending import runner
from campaigns.sending.engine_process import EngineStopped, engine_logs_to, get_engine_client
from campaigns.sending.reconcile import reconcile
from campaigns.sending.send_engine import tune_gc
from campaigns.sending.send_lease import RunnerLease
from campaigns.settings import get_settings
from campaigns.store.db import get_engine
from campaigns.store.runlock import RunnerLock, campaign_runner_lock
from deployments.limits import ensure_send_limit, give_back, send_slots, slots_for_run
from flows import console
from tasks.artifacts import progress_card, publish_summary
from tasks.send import SEND_RETRIES, SEND_RETRY_DELAY_SECONDS, prepare_campaign, retry_batch, send_batch, send_one_batch

STOPPED = "stopped with its dispatcher"  # `campaigns serve` stopping: the campaign stays running
LOG_EVERY_SECONDS = 10.0  # one line of sending figures at most this often (a slow campaign's waves are many)
PROGRESS_EVERY_SECONDS = 2.0  # the progress card's refresh at most this often


def _progress(campaign_id: uuid.UUID) -> tuple[float, dict[str, int]]:
    with get_engine().connect() as conn:
        by = stats.counts_by_status(conn, campaign_id)
    total = sum(by.values()) or 1
    done = total - by.get("pending", 0) - by.get("sending", 0)
    return 100.0 * done / total, by


class ProgressCard:
    """The run's progress card, refreshed as batches end but at most every PROGRESS_EVERY_SECONDS, as
    SendingLog writes its lines: each refresh counts the campaign's rows by status and writes to Prefect. Once
    a batch, a 1,000,000-recipient campaign at 1,000 msg/s counted a million index entries ten times a second
    (Postgres used 711 CPU seconds of its 1,560-s run, more than any other process)."""

    def __init__(self, campaign_id: uuid.UUID, artifact: uuid.UUID) -> None:
        self.campaign_id, self.artifact, self.at = campaign_id, artifact, time.monotonic()

    def refresh(self, force: bool = False) -> None:
        if force or time.monotonic() - self.at >= PROGRESS_EVERY_SECONDS:
            update_progress_artifact(self.artifact, _progress(self.campaign_id)[0])
            self.at = time.monotonic()


class SendingLog:
    """Adds up the waves' figures and writes one line every LOG_EVERY_SECONDS: sent, failed, retrying, and
    the rate against what the limits allow, per hour for a paced campaign (100 an hour is 0.03 msg/s)."""

    def __init__(self, log: Any, allowed: float) -> None:
        self.log, self.allowed = log, allowed
        self.since = time.monotonic()
        self.totals: dict[str, int] = {}

    def add(self, counts: dict[str, Any]) -> None:
        for key in ("sent", "failed", "retrying", "skipped", "unknown"):
            self.totals[key] = self.totals.get(key, 0) + int(counts.get(key) or 0)

    def flush(self, force: bool = False) -> None:
        elapsed = time.monotonic() - self.since
        if not any(self.totals.values()) or (elapsed < LOG_EVERY_SECONDS and not force):
            return
        self.log.info(sending_line(self.totals, elapsed, self.allowed))
        self.since, self.totals = time.monotonic(), {}


def sending_line(totals: dict[str, int], elapsed: float, allowed: float) -> str:
    """One line of the run's log: "sent 1,200, failed 3 in 10.0 s: 120.0 msg/s, 96% of the 125.0 msg/s the
    limits allow"; below one message a second, the rates are per hour."""
    per, unit = (3600, "msg/h") if allowed < 1 else (1, "msg/s")
    rate = totals.get("sent", 0) / elapsed if elapsed > 0 else 0.0
    extra = "".join(f", {totals[k]:,} {k}" for k in ("retrying", "skipped", "unknown") if totals.get(k))
    share = f"{100 * rate / allowed:.0f}%" if allowed else "0%"
    return (
        f"sent {totals.get('sent', 0):,}, failed {totals.get('failed', 0):,}{extra} in {elapsed:.1f} s: "
        f"{rate * per:.1f} {unit}, {share} of the {allowed * per:.1f} {unit} the limits allow"
    )


@flow(
    name="send-campaign",
    task_runner=ThreadPoolTaskRunner(max_workers=get_settings().parallel_batches),  # type: ignore[arg-type]  # Prefect's own generic
    flow_run_name=console.campaign_run_name,
    on_cancellation=[console.on_cancellation],
)
def send_campaign(campaign_id: uuid.UUID) -> State:
    """Send a campaign. Safe to run again at any time: it continues where the last run stopped.

    Args:
        campaign_id: The campaign's id (`campaigns list --org ORG` shows them; campaign-control finds one by
            name). A draft or scheduled campaign goes through the pre-launch checklist first.
    """
    console.ignore_terminal_interrupt()
    log = get_run_logger()
    logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)  # one line per batch would bury the story
    db = get_engine()
    tune_gc()  # a full collection over Prefect's heap stalled every task thread for ~1.4 s (bench)
    run_id = uuid.UUID(flow_run.get_id())
    with db.connect() as conn:
        head = lifecycle.get_any_org(conn, campaign_id)
    console.tag_run(run_id, head["org_name"])
    with campaign_runner_lock(db, campaign_id) as held:
        if not held:
            log.warning("another run is sending campaign %s; this run does nothing", campaign_id)
            return Completed(
                name="Skipped",
                message="Another run is sending this campaign",
                data={"campaign_id": str(campaign_id), "status": "already running elsewhere"},
            )
        runner.record_runner(db, campaign_id, str(run_id))  # however it was launched: UI, API, schedule
        lease = RunnerLease.of(campaign_id)
        if left := lease.take_left_behind():  # the lock is ours: the runner that wrote it down is gone
            give_back(left)
            log.info("gave back the send slots a lost runner of this campaign still held (lease %s)", left)
        if head["status"] == "paused" and console.was_suspended(run_id):
            with db.begin() as conn:
                t = lifecycle.resume(conn, head["organization_id"], campaign_id)
            log.info("Resume pressed on this run: campaign %s -> %s", t.previous, t.status)
        with console.ButtonWatcher(campaign_id, run_id, log) as buttons, engine_logs_to(str(run_id), str(campaign_id)):
            try:
                outcome = _send(campaign_id, log, buttons, held, lease)
            except Pause:  # Suspend pressed: Prefect stops the run at its next task; the campaign pauses too
                buttons.press("suspend")
                raise
            except TerminationSignal:  # Cancel pressed, or `serve` stopping
                console.on_termination(campaign_id, run_id, log)
                raise
            except Exception as exc:  # never "running" with nobody sending: paused, with the error
                if not (buttons.stopping or isinstance(exc, EngineStopped)):
                    _runner_failed(campaign_id, exc, log)
                    raise
                outcome = {"status": STOPPED}  # `serve` stopping mid-wave: not a failure
                buttons.stop()
        if buttons.stopping:  # `campaigns serve` stopping: the campaign stays running for the next one
            log.warning("the run is being stopped (%s): the next run continues", RUNNER_SHUTDOWN)
            return Cancelled(message=RUNNER_SHUTDOWN, data={"campaign_id": str(campaign_id), **outcome})
        with db.connect() as conn:
            rep = run_report.report(conn, campaign_id)  # read once: the log, the summary and the state agree
        _log_outcome(log, rep)
        publish_summary(campaign_id, run_id, rep)
        result = {"campaign_id": str(campaign_id), "status": rep["campaign"]["status"], **rep["stats"], **outcome}
        return console.final_state(rep, run_id, buttons.pressed, result)


def _runner_failed(campaign_id: uuid.UUID, exc: Exception, log: Any) -> None:
    """Pause the campaign with the error that stopped its runner (what the scheduler does on seeing its run
    Failed, but at once and without `campaigns serve`); a paused or finished campaign is left as it is."""
    why = f"its runner failed: {type(exc).__name__}: {exc}"[:1500] + "; fix the cause, then resume to continue"
    try:
        with get_engine().begin() as conn:
            if lifecycle.pause_for_error(conn, campaign_id, "runner_failed", why):
                log.error("campaign paused: %s", why)
    except Exception:  # the database itself is away: the scheduler (or the supervisor) sees the lost runner
        log.exception("could not pause campaign %s after its runner failed", campaign_id)


def _send(
    campaign_id: uuid.UUID, log: Any, buttons: console.ButtonWatcher, held: RunnerLock, lease: RunnerLease
) -> dict[str, Any]:
    """The campaign's send loop: waves of mapped batches while rows are due, then due retries. Returns {} once
    the campaign has nothing left to do here, else {"status": why this run sent nothing more}. Its slots'
    lease is written down in `lease` while a wave holds them (for the next runner, should this one die)."""
    settings = get_settings()
    db = get_engine()
    # The send engine's process imports for seconds (SQLAlchemy, aiohttp, redis): started now, it does so while
    # the audience is built, not after (bench/start.py: the first message 8.1 s -> see BENCHMARKS.md).
    get_engine_client()
    prepared = prepare_campaign(campaign_id)
    if prepared.refused:
        raise RuntimeError("preflight failed:\n- " + "\n- ".join(prepared.refused))
    if prepared.status != "running":
        log.info("campaign is %s: nothing to send", prepared.status)
        return {"status": prepared.status}
    if prepared.audience:
        log.info(run_report.audience_line(prepared.audience, prepared.total_recipients))
    for warning in prepared.warnings:
        log.warning("preflight: %s", warning)
    limit_name = ensure_send_limit()
    pct, _ = _progress(campaign_id)
    log.info("sending: %.1f%% of %s recipients already processed", pct, f"{prepared.total_recipients:,}")
    progress = ProgressCard(campaign_id, progress_card(campaign_id, buttons.flow_run_id, pct))
    batch_no = failed_waves = 0
    wave_cap, allowed = runner.wave_plan(
        db, campaign_id, settings.batch_size, settings.rate_headroom, settings.parallel_batches
    )
    # A paced campaign's wave is one batch whose messages mostly wait for their turn (one every 36 s at the seed's
    # default pace): it takes no send slot, or a few dozen waiting campaigns would hold every slot of the platform,
    # and is a plain call, not a task run (_paced_wave).
    paced = wave_cap == 1
    figures = SendingLog(log, allowed)
    waiting_said = None
    provider_said = False  # the wait for the provider is in the log (once per outage)
    while True:
        if buttons.stopping:
            figures.flush(force=True)
            progress.refresh(force=True)
            return {"status": STOPPED}
        retaken = held.retaken
        if not held.still_held():  # its connection died and another runner has the campaign, or Postgres is away
            log.error("the runner lock was lost; this run stops (the next runner continues)")
            return {"status": "runner lock lost"}
        if held.retaken > retaken:
            log.warning("the runner lock's connection to Postgres died; the lock was taken again and sending goes on")
        # Rows left in `sending` (a crash, a timeout) are settled from their status webhooks before any resend. A
        # plain call, not a task: a task run per wave was half of what 200 paced campaigns asked of Prefect.
        reconcile(db, campaign_id, settings.reconcile_grace_seconds)
        left = runner.remaining(db, campaign_id)
        step = runner.next_step(left, wave_cap, settings.batch_size, settings.reconcile_grace_seconds)
        provider_said = provider_said and left.probe_in is not None
        if step.action == "finish":
            break
        if step.action == "wait_for_provider":
            if not provider_said:
                figures.flush(force=True)
                log.warning(
                    "the provider is unavailable: waiting for it, one message tries it again in %.0f s, "
                    "then at growing intervals; %d recipients wait to be sent",
                    left.probe_in,
                    left.due,
                )
                provider_said = True
            buttons.wait(step.seconds)
            continue
        if step.action == "send":
            if paced:
                counts, error = _paced_wave(campaign_id, step.probe, buttons, log)
                progress.refresh()
                figures.add(counts)
                figures.flush()
                failed_waves = runner.failed_waves_after(failed_waves, int(error is not None), 1)
                if error is not None and failed_waves >= runner.MAX_FAILED_WAVES:
                    raise error
                continue
            # Leases are renewed while held; a killed runner's slots are given back by the next one (or come
            # back when the lease expires). A probe, one message, takes no slot: waiting for one (seconds at
            # times) would only delay the recovery. A wave takes slots by its rate (deployments/limits.py).
            taken = min(step.batches, slots_for_run(allowed))
            with nullcontext() if step.probe else send_slots(limit_name, taken, lease):
                futures = send_batch.map(campaign_id, range(batch_no, batch_no + step.batches), probe=step.probe)
                batch_no += step.batches
                for future in as_completed(futures):
                    progress.refresh()
                    lease.refresh()  # a long wave outlives the entry's TTL; Prefect renews the lease itself
                    counts = future.result(raise_on_failure=False)  # its state as read back may lag
                    if isinstance(counts, dict):
                        figures.add(counts)
            figures.flush()
            failed = [f for f in futures if f.state.is_failed()]
            failed_waves = runner.failed_waves_after(failed_waves, len(failed), len(futures))
            if failed_waves >= runner.MAX_FAILED_WAVES:  # e.g. the credentials block is gone: stop, don't spin
                failed[0].result()  # raises the batches' own error
            continue
        said = (left.waiting_retry, left.unknown)  # only future retries or unknown outcomes: wait for the nearest
        if said != waiting_said:
            figures.flush(force=True)
            log.info(
                "waiting: %d recipients for a retry (next in %.0f s), %d sends of unknown outcome for their "
                "status webhook",
                left.waiting_retry,
                left.next_retry_in or 0,
                left.unknown,
            )
            waiting_said = said
        buttons.wait(step.seconds)
    figures.flush(force=True)
    with db.begin() as conn:
        lifecycle.complete_if_done(conn, campaign_id)
    progress.refresh(force=True)
    return {}


def _paced_wave(
    campaign_id: uuid.UUID, probe: bool, buttons: console.ButtonWatcher, log: Any
) -> tuple[dict[str, Any], Exception | None]:
    """A paced campaign's wave: one batch, as a plain call with the send-batch task's retries. Its message
    mostly waits for its turn (one every 36 s at the seed's default pace); as a task run, 200 such campaigns
    were 5.6 task runs a second on Prefect's server, which also starts every campaign (the first message's
    p95 rose with it). Returns the batch's counts, or the error of its last try."""
    tries = 0
    while True:
        try:
            return send_one_batch(campaign_id, probe), None
        except Exception as exc:  # what the task would retry: a retry claims only rows still pending
            if buttons.stopping or not retry_batch():  # `serve` stopping killed the send engine: not a failure
                return {}, exc
            tries += 1
            if tries > SEND_RETRIES:
                log.error("a wave failed: %s: %s", type(exc).__name__, exc, exc_info=True)
                return {}, exc
            log.warning(
                "a wave failed, trying again in %.0f s: %s: %s", SEND_RETRY_DELAY_SECONDS, type(exc).__name__, exc
            )
            buttons.wait(SEND_RETRY_DELAY_SECONDS)


def _log_outcome(log: Any, rep: dict[str, Any]) -> None:
    """The run's last lines: why a paused campaign stopped and what to do, then the funnel."""
    campaign = rep["campaign"]
    if campaign["status"] == "paused":
        log.warning("campaign %s", run_report.pause_explanation(campaign))
    log.info("campaign %s: %s", campaign["status"], run_report.funnel_line(rep["stats"]))
