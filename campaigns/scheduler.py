"""What should start running now, without an operator: campaigns whose `scheduled_at` has come, and
campaigns a number's hourly or daily cap paused (`rate_limit`) whose `resume_at` has passed.

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

log = logging.getLogger(__name__)


@dataclass
class Due:
    resumed: list[uuid.UUID] = field(default_factory=list)
    started: list[uuid.UUID] = field(default_factory=list)
    refused: dict[uuid.UUID, str] = field(default_factory=dict)

    @property
    def to_launch(self) -> list[uuid.UUID]:
        return [*self.resumed, *self.started]


def due_campaigns(db: sa.Engine, start: Callable[[sa.Engine, uuid.UUID, uuid.UUID], object]) -> Due:
    """Resume capped campaigns whose window has ended; start scheduled ones whose time has come."""
    due = Due()
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
