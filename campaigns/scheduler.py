"""What should start running now, without an operator: campaigns whose `scheduled_at` has come,
campaigns a number's hourly or daily cap paused (`rate_limit`) whose `resume_at` has passed, and running
campaigns whose runner is gone.

A runner holds its campaign's advisory lock for its whole life (campaigns.runlock), so a campaign that is
`running`, untouched for ORPHAN_AFTER_SECONDS and whose lock nobody holds has lost its runner: a worker
killed or crashed, a machine lost. It is launched again (every run continues where the last stopped and
sends nothing twice). If its last flow run was cancelled in the Prefect UI, that was an operator stopping
it: it is paused instead. If that run failed, relaunching would fail again: it is paused with the reason.

`due_campaigns` only changes rows; the `campaign-scheduler` flow launches a send-campaign run for each.
A scheduled campaign goes through the same preflight as `campaigns start`: when it fails, the campaign is
paused with reason `preflight_failed` and every failed check in `last_error_message`, not retried forever.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from campaigns import lifecycle
from campaigns.runlock import runner_alive

log = logging.getLogger(__name__)


ORPHAN_AFTER_SECONDS = 60  # a launched run takes seconds to take its lock; a minute leaves room to spare


@dataclass
class Due:
    resumed: list[uuid.UUID] = field(default_factory=list)
    started: list[uuid.UUID] = field(default_factory=list)
    recovered: list[uuid.UUID] = field(default_factory=list)  # running, but their runner was gone
    refused: dict[uuid.UUID, str] = field(default_factory=dict)
    stopped: dict[uuid.UUID, str] = field(default_factory=dict)  # paused: their flow run was cancelled or failed

    @property
    def to_launch(self) -> list[uuid.UUID]:
        return [*self.resumed, *self.started, *self.recovered]


def due_campaigns(db: sa.Engine, start: Callable[[sa.Engine, uuid.UUID, uuid.UUID], object],
                  run_state: Callable[[str | None], str | None] = lambda _: None) -> Due:
    """Resume capped campaigns whose window has ended; start scheduled ones whose time has come; launch
    again running ones whose runner is gone (`run_state` reads their last flow run's state)."""
    due = Due()
    _recover_orphans(db, due, run_state)
    with db.begin() as conn:
        due.resumed = list(conn.execute(sa.text("""
            update campaigns set status = 'running', paused_reason = null, resume_at = null, updated_at = now()
            where status = 'paused' and paused_reason = 'rate_limit' and resume_at <= now()
            returning id
        """)).scalars())
        scheduled = conn.execute(sa.text(
            "select id, organization_id from campaigns where status = 'scheduled' and scheduled_at <= now()"
        )).all()
    for cid, org in scheduled:
        try:
            start(db, org, cid)
            due.started.append(cid)
        except lifecycle.CampaignError as exc:
            detail = "; ".join([exc.message, *exc.details])
            with db.begin() as conn:
                lifecycle.pause(conn, org, cid, "preflight_failed", detail[:2000])
            due.refused[cid] = detail
            log.warning("scheduled campaign %s not started: %s", cid, detail)
    return due


def _recover_orphans(db: sa.Engine, due: Due, run_state: Callable[[str | None], str | None]) -> None:
    with db.connect() as conn:
        candidates = conn.execute(sa.text("""
            select id, organization_id, flow_run_id from campaigns
            where status = 'running' and updated_at < now() - make_interval(secs => :s)
        """), {"s": ORPHAN_AFTER_SECONDS}).all()
        orphans = [c for c in candidates if not runner_alive(conn, c.id)]
        conn.commit()
    for cid, org, flow_run_id in orphans:
        state = run_state(flow_run_id)
        with db.begin() as conn:
            if state in ("CANCELLED", "CANCELLING"):
                why = f"its flow run {flow_run_id} was cancelled in Prefect; resume to continue"
                lifecycle.pause(conn, org, cid, "operator", why)
                due.stopped[cid] = why
            elif state == "FAILED":
                why = f"its flow run {flow_run_id} failed (see it in Prefect); resume to try again"
                lifecycle.pause(conn, org, cid, "runner_failed", why)
                due.stopped[cid] = why
            else:  # crashed, killed (Prefect may still say RUNNING), or never started: launch it again
                conn.execute(sa.text("update campaigns set updated_at = now() where id = :c and status = 'running'"),
                             {"c": cid})
                due.recovered.append(cid)
                log.warning("campaign %s was running without a runner (last run %s: %s); launching it again",
                            cid, flow_run_id, state)
