"""What should start running now, without an operator: campaigns whose `scheduled_at` has come,
campaigns a number's hourly or daily cap paused (`rate_limit`) whose `resume_at` has passed, and running
campaigns whose runner is gone.

A runner holds its campaign's advisory lock for its whole life (campaigns.store.runlock), so a campaign that is
`running`, untouched for ORPHAN_AFTER_SECONDS and whose lock nobody holds has lost its runner: a worker
killed or crashed, a machine lost. It is launched again (every run continues where the last stopped and
sends nothing twice). If its last flow run was cancelled in the Prefect UI, that was an operator stopping
it: it is paused instead (not when `serve` itself stopped and cancelled its runs). If that run failed,
relaunching would fail again: it is paused with the reason, as it is after RELAUNCH_LIMIT lost runners
in a row. A last run still waiting in Prefect for a slot (Scheduled) is left to start; one a worker took
(Pending) but never started within `pending_lost_seconds` lost its worker and is launched again. A lost
run that still reads Running or Pending is named in `Due.lost_runs`, for the flow to close it in Prefect.

`due_campaigns` only changes rows; the `campaign-scheduler` flow launches a send-campaign run for each.
A scheduled campaign goes through the same preflight as `campaigns start`: when it fails, the campaign is
paused with reason `preflight_failed` and every failed check in `last_error_message`, not retried forever.
A scheduled campaign normally starts by its own Scheduled send-campaign run (under Prefect's Upcoming);
this is the fallback when that run does not come (Prefect was down when it was scheduled, nothing served it).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa

from campaigns.control import lifecycle
from campaigns.control.runs import RunState
from campaigns.errors import Conflict, Invalid
from campaigns.sending.reconcile import cancelled_with_unknown, settle_cancelled
from campaigns.settings import get_settings
from campaigns.store.runlock import runner_alive
from campaigns.webhooks.ingest import ingest_pending

log = logging.getLogger(__name__)


ORPHAN_AFTER_SECONDS = 60  # a launched run takes seconds to take its lock; a minute leaves room to spare
RELAUNCH_LIMIT = 3  # runners lost in a row before the campaign is paused instead (a crash that repeats)
WAITING_STATES = ("SCHEDULED", "PENDING")  # its last run was launched and waits for a slot (or a worker's start)
STALE_STATES = ("RUNNING", "PENDING")  # what a run whose process is gone may still read in Prefect
ENDED_STATES = ("CANCELLED", "CRASHED", "COMPLETED", "FAILED")  # its last run is over: nothing is on its way
SETTLED_SECONDS = 10  # a start or resume records its new run within this (before, the last run is the old one)
# A scheduled campaign's own Prefect run (campaigns.control.services.schedule_run) starts it at its time; this flow
# starts it only if that run is not on its way within ORPHAN_AFTER_SECONDS (nothing served it, or it failed).
SCHEDULED_RUN_ON_ITS_WAY = ("SCHEDULED", "PENDING", "RUNNING")
RUNNER_SHUTDOWN = "Runner is shutting down."  # Prefect's message when `serve` stops: not an operator's cancel


@dataclass
class Due:
    resumed: list[uuid.UUID] = field(default_factory=list)
    started: list[uuid.UUID] = field(default_factory=list)
    recovered: list[uuid.UUID] = field(default_factory=list)  # running, but their runner was gone
    refused: dict[uuid.UUID, str] = field(default_factory=dict)
    stopped: dict[uuid.UUID, str] = field(default_factory=dict)  # paused: their flow run was cancelled or failed
    orgs: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)  # each campaign's organization
    lost_runs: dict[uuid.UUID, str] = field(default_factory=dict)  # recovered: their last run, still Running/Pending

    @property
    def to_launch(self) -> list[uuid.UUID]:
        return [*self.resumed, *self.started, *self.recovered]


def due_campaigns(
    db: sa.Engine,
    start: Callable[[sa.Engine, uuid.UUID, uuid.UUID], object],
    run_state: Callable[[str | None], RunState | None] = lambda _: None,
) -> Due:
    """Resume capped campaigns whose window has ended; start scheduled ones whose time has come (unless
    their own scheduled run is starting them); launch again running ones whose runner is gone (`run_state`
    reads their last flow run's state)."""
    due = Due()
    _recover_orphans(db, due, run_state)
    _settle_cancelled(db)
    with db.begin() as conn:
        for cid, org in conn.execute(
            sa.text("""
            update campaigns set status = 'running', paused_reason = null, resume_at = null, updated_at = now()
            where status = 'paused' and paused_reason = 'rate_limit' and resume_at <= now()
            returning id, organization_id
        """)
        ):
            due.resumed.append(cid)
            due.orgs[cid] = org
        scheduled = conn.execute(
            sa.text("""
            select id, organization_id, flow_run_id,
                   greatest(scheduled_at, updated_at) > now() - make_interval(secs => :s) as recent
            from campaigns where status = 'scheduled' and scheduled_at <= now()
            order by scheduled_at, id
        """),
            {"s": ORPHAN_AFTER_SECONDS},
        ).all()
    for cid, org, flow_run_id, recent in scheduled:
        state = run_state(flow_run_id) if recent else None
        if state and state.type in SCHEDULED_RUN_ON_ITS_WAY:  # its own scheduled run starts it (Upcoming)
            continue
        try:
            start(db, org, cid)
            due.started.append(cid)
            due.orgs[cid] = org
        except Conflict:  # started, paused or cancelled meanwhile: the operator's act stands
            continue
        except Invalid as exc:  # the preflight's refusal
            _refuse(db, due, org, cid, "; ".join([exc.message, *exc.details]))
        except Exception:  # one campaign's trouble must not keep the others (and those resumed) waiting
            log.exception("scheduled campaign %s could not be started; the next pass tries again", cid)
    return due


def _refuse(db: sa.Engine, due: Due, org: uuid.UUID, cid: uuid.UUID, detail: str) -> None:
    """Pause a campaign whose preflight failed, only if it is still scheduled and due: an operator who
    paused, cancelled or (having fixed it) started it since the refusal was read is not overridden."""
    with db.begin() as conn:
        still = conn.execute(
            sa.text("""
            select 1 from campaigns where id = :c and status = 'scheduled' and scheduled_at <= now() for update
        """),
            {"c": cid},
        ).scalar()
        if not still:
            return
        lifecycle.pause(conn, org, cid, "preflight_failed", detail[:2000])
    due.refused[cid] = detail
    log.warning("scheduled campaign %s not started: %s", cid, detail)


def _recover_orphans(db: sa.Engine, due: Due, run_state: Callable[[str | None], RunState | None]) -> None:
    """Running campaigns whose runner is gone. One untouched for ORPHAN_AFTER_SECONDS is, whatever Prefect
    says of its last run (a killed run may still read RUNNING); one whose last run has ended (stopped with
    `serve`, crashed) is after SETTLED_SECONDS: no run of it is on its way, so `serve` back takes it up on its
    first pass instead of a minute later."""
    with db.connect() as conn:
        candidates = conn.execute(
            sa.text("""
            select id, organization_id, flow_run_id, relaunches,
                   updated_at < now() - make_interval(secs => :s) as quiet
            from campaigns where status = 'running' and updated_at < now() - make_interval(secs => :settled)
        """),
            {"s": ORPHAN_AFTER_SECONDS, "settled": SETTLED_SECONDS},
        ).all()
        orphans = [c for c in candidates if not runner_alive(conn, c.id)]
        conn.commit()
    pending_lost = get_settings().pending_lost_seconds
    for cid, org, flow_run_id, relaunches, quiet in orphans:
        state = run_state(flow_run_id)
        kind = state.type if state else None
        lost_pending = _lost_pending(state, pending_lost)  # taken by a worker that died: it never starts
        if kind in WAITING_STATES and not lost_pending:  # on its way
            continue
        if not quiet and kind not in ENDED_STATES and not lost_pending:  # its run may be starting: give it the minute
            continue
        if state and kind in ("CANCELLED", "CANCELLING") and state.message != RUNNER_SHUTDOWN:
            _stop(
                db,
                due,
                org,
                cid,
                "operator",
                f"its flow run {flow_run_id} was cancelled in Prefect; resume to continue",
            )
        elif kind == "FAILED":
            _stop(
                db,
                due,
                org,
                cid,
                "runner_failed",
                f"its flow run {flow_run_id} failed (see it in Prefect); resume to try again",
            )
        elif relaunches >= RELAUNCH_LIMIT:
            _stop(
                db,
                due,
                org,
                cid,
                "runner_failed",
                f"its runner was lost {relaunches} times in a row (last flow run "
                f"{flow_run_id}: {kind}); resume to try again",
            )
        else:  # crashed, killed (Prefect may still say RUNNING), stopped with `serve`: launch it again
            with db.begin() as conn:
                claimed = conn.execute(
                    sa.text("""
                    update campaigns set updated_at = now(), relaunches = relaunches + 1
                    where id = :c and status = 'running' and relaunches = :r
                    returning id
                """),
                    {"c": cid, "r": relaunches},
                ).scalar()  # one scheduler pass wins a race (the count it read is the token)
            if claimed:
                due.recovered.append(cid)
                due.orgs[cid] = org
                if flow_run_id and kind in STALE_STATES:
                    due.lost_runs[cid] = flow_run_id
                log.warning(
                    "campaign %s was running without a runner (last run %s: %s); launching it again",
                    cid,
                    flow_run_id,
                    kind,
                )


def _lost_pending(state: RunState | None, after_seconds: float) -> bool:
    """A run a worker took (Pending) and never started: the worker died while its process was starting.
    Nothing else moves it on, and it would keep its campaign `running` at 0% for good."""
    if state is None or state.type != "PENDING" or state.since is None:
        return False
    return (datetime.now(UTC) - state.since).total_seconds() > after_seconds


def _settle_cancelled(db: sa.Engine) -> None:
    grace = get_settings().reconcile_grace_seconds
    with db.connect() as conn:
        idle = [cid for cid in cancelled_with_unknown(conn, grace) if not runner_alive(conn, cid)]
        conn.commit()
    if idle:
        ingest_pending(db)
    for cid in idle:
        if n := settle_cancelled(db, cid, grace):
            log.warning("cancelled campaign %s: %d sends of unknown outcome had no status webhook; cancelled", cid, n)


def _stop(db: sa.Engine, due: Due, org: uuid.UUID, cid: uuid.UUID, reason: str, why: str) -> None:
    with db.begin() as conn, contextlib.suppress(Conflict):  # an operator may have acted meanwhile
        lifecycle.pause(conn, org, cid, reason, why)
        due.stopped[cid] = why
