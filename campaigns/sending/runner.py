"""What a campaign run does between batches (plain functions; the flow only wires them to Prefect)."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa

from campaigns.audience import build as audience
from campaigns.control import lifecycle
from campaigns.control.preflight import WINDOWED_PROVIDERS, run_preflight
from campaigns.control.scheduler import RELAUNCH_LIMIT
from campaigns.control.tenancy import get_number
from campaigns.infra.faultpoints import AUDIENCE_WRITTEN, pause_point
from campaigns.reporting import stats
from campaigns.sending.providers import Credentials
from campaigns.sending.ratelimit import LimitUsage
from campaigns.sending.spec import CampaignSpec
from campaigns.store import recipients
from campaigns.store.db import iso_z
from campaigns.store.runlock import runner_alive

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    status: str
    refused: list[str] = field(default_factory=list)
    audience: dict[str, int] = field(default_factory=dict)
    total_recipients: int = 0
    warnings: list[str] = field(default_factory=list)


def load_spec(
    db: sa.Engine, campaign_id: uuid.UUID, credentials: Callable[[str], Credentials]
) -> tuple[CampaignSpec, str, Credentials]:
    """The campaign as the send path needs it, its provider's name and the number's credentials."""
    with db.connect() as conn:
        campaign = lifecycle.get_any_org(conn, campaign_id)
        number = get_number(conn, campaign["organization_id"], campaign["whatsapp_number_id"])
    return CampaignSpec.from_rows(campaign, number), number["provider"], credentials(number["block_name"])


def build_audience_once(db: sa.Engine, campaign_id: uuid.UUID, provider: str) -> dict[str, int]:
    """Freeze the audience the first time the campaign runs; later runs (resume, restart) reuse it.

    `audience_frozen_at` is set only after every row is written, so a build that crashed halfway is
    cleaned up and redone; no batch claims rows before the audience is frozen.
    """
    with db.begin() as conn:
        campaign = lifecycle.get_any_org(conn, campaign_id)
        if campaign["audience_frozen_at"] is not None:
            return {}
        recipients.discard_audience(conn, campaign_id)
        rules = audience.AudienceRules(
            respect_opt_out=campaign["respect_opt_out"],
            skip_active_conversations=campaign["skip_active_conversations"],
            require_window=campaign["message_type"] == "text" and provider in WINDOWED_PROVIDERS,
        )
        frame = audience.load_contacts(
            conn, campaign["organization_id"], campaign["audience_type"], campaign["audience_filter"] or {}
        )
    classified = audience.classify(frame, rules, datetime.now(UTC))
    total = audience.write_recipients(db, campaign_id, campaign["organization_id"], classified)
    pause_point(AUDIENCE_WRITTEN)
    with db.begin() as conn:
        conn.execute(
            sa.text("""
            update campaigns set total_recipients = :n, audience_frozen_at = now(), updated_at = now()
            where id = :c and audience_frozen_at is null
        """),
            {"n": total, "c": campaign_id},
        )
    return audience.counts(classified)


EARLY_START_SECONDS = 5  # Prefect may start a scheduled run a moment early (its clock, rounding to the second)


def record_runner(db: sa.Engine, campaign_id: uuid.UUID, flow_run_id: str | None) -> None:
    """The runner that took the campaign: its flow run (for the Prefect UI and the scheduler), and the
    scheduler's count of relaunches starts again. A run that came before the campaign's time (prepare lets
    it do nothing) leaves the recorded id alone: that is the campaign's scheduled run, under Upcoming."""
    with db.begin() as conn:
        conn.execute(
            sa.text("""
            update campaigns set flow_run_id = coalesce(:r, flow_run_id), relaunches = 0
            where id = :c and not (status = 'scheduled' and scheduled_at > now() + make_interval(secs => :early))
        """),
            {"r": flow_run_id, "c": campaign_id, "early": EARLY_START_SECONDS},
        )


def prepare(
    db: sa.Engine,
    campaign_id: uuid.UUID,
    credentials: Callable[[str], Credentials],
    ping_redis: Callable[[], Any],
    ping_prefect: Callable[[], Any] | None = None,
    usage: LimitUsage | None = None,
) -> Prepared:
    """Preflight (for a campaign not yet running), mark it running, build its audience once. A scheduled
    campaign whose time has not come is left as it is (a run of an older schedule, or one started early by
    hand): its status then says when it is due."""
    warnings: list[str] = []
    with db.begin() as conn:
        campaign = lifecycle.get_any_org(conn, campaign_id)
        if not_yet := _not_due(campaign):
            return Prepared(not_yet)
        org = campaign["organization_id"]
        number = get_number(conn, org, campaign["whatsapp_number_id"])
        if campaign["status"] in lifecycle.STARTABLE:
            pf = run_preflight(
                conn, campaign, number, lambda: credentials(number["block_name"]), ping_redis, ping_prefect, usage=usage
            )
            if not pf.ok:
                return Prepared(campaign["status"], refused=pf.failures())
            warnings = pf.warnings()
            lifecycle.mark_running(conn, org, campaign_id)
        elif campaign["status"] != "running":
            return Prepared(campaign["status"])
        else:  # resumed, or a rerun: read the credentials now, so a token fixed while paused is used
            credentials(number["block_name"])
    counts = build_audience_once(db, campaign_id, number["provider"])
    with db.connect() as conn:
        total = conn.execute(
            sa.text("select total_recipients from campaigns where id = :c"), {"c": campaign_id}
        ).scalar_one()
    return Prepared("running", audience=counts, total_recipients=total, warnings=warnings)


def _not_due(campaign: dict[str, Any]) -> str | None:
    at = campaign["scheduled_at"]
    if campaign["status"] == "scheduled" and at and at > datetime.now(UTC) + timedelta(seconds=EARLY_START_SECONDS):
        return f"scheduled for {iso_z(at)}"
    return None


@dataclass
class Remaining:
    status: str
    due: int  # pending rows that may be sent now
    waiting_retry: int  # pending rows with a future next_attempt_at
    unknown: int  # rows in `sending` (unknown outcome)
    next_retry_in: float | None
    probe_in: float | None = None  # waiting for its provider: seconds to the next try (<= 0: now); None: not


def remaining(db: sa.Engine, campaign_id: uuid.UUID) -> Remaining:
    with db.connect() as conn:
        row = conn.execute(
            sa.text("""
            select c.status,
                   count(r.id) filter (where r.status = 'pending' and (r.next_attempt_at is null
                                        or r.next_attempt_at <= now())) as due,
                   count(r.id) filter (where r.status = 'pending' and r.next_attempt_at > now()) as waiting,
                   count(r.id) filter (where r.status = 'sending') as unknown,
                   extract(epoch from min(r.next_attempt_at) filter (where r.status = 'pending'
                                          and r.next_attempt_at > now()) - now()) as next_in,
                   extract(epoch from c.provider_probe_at - now()) as probe_in
            from campaigns c left join campaign_recipients r
                 on r.campaign_id = c.id and r.status in ('pending', 'sending')
            where c.id = :c group by c.status, c.provider_probe_at
        """),
            {"c": campaign_id},
        ).one()
    return Remaining(
        row.status,
        row.due,
        row.waiting,
        row.unknown,
        float(row.next_in) if row.next_in is not None else None,
        float(row.probe_in) if row.probe_in is not None else None,
    )


MAX_IDLE_SLEEP = 5.0  # a waiting run looks again at least this often (a resume, a new due row)
LOCK_SETTLE_SECONDS = 10.0  # how long a killed runner's lock may outlive it (Postgres noticing its connection close)
MAX_FAILED_WAVES = 3  # waves in a row whose every batch failed (e.g. the credentials block is gone): stop


@dataclass(frozen=True)
class Step:
    """What the run does next: `send` `batches` batches at once, `wait` `seconds`, or `finish`."""

    action: Literal["send", "wait", "wait_for_provider", "finish"]
    batches: int = 0
    seconds: float = 0.0
    probe: bool = False  # the one message that tries a provider the campaign waits for (sending/outage.py)


def next_step(left: Remaining, wave_cap: int, batch_size: int, grace_seconds: float) -> Step:
    """The run's decision after each wave, from what is left: due rows are sent in as many batches as they
    fill (at most `wave_cap`); while the provider is down, one message tries it when its probe is due and
    the run waits for it otherwise; with only future retries or sends of unknown outcome it waits for the
    nearest (a retry's time, or the reconcile grace); no wait is longer than MAX_IDLE_SLEEP. Otherwise it is
    done (the campaign is no longer running, or nothing is left)."""
    if left.status != "running":
        return Step("finish")
    if left.due and left.probe_in is not None:
        if left.probe_in > 0:
            return Step("wait_for_provider", seconds=min(MAX_IDLE_SLEEP, left.probe_in))
        return Step("send", batches=1, probe=True)
    if left.due:
        return Step("send", batches=min(math.ceil(left.due / batch_size), wave_cap))
    if not left.waiting_retry and not left.unknown:
        return Step("finish")
    waits = [w for w in (left.next_retry_in, grace_seconds if left.unknown else None) if w]
    return Step("wait", seconds=min([MAX_IDLE_SLEEP, *waits]))


def failed_waves_after(failed_waves: int, failed_batches: int, batches: int) -> int:
    """Waves in a row whose every batch failed: a wave with one good batch starts the count again. The run
    stops (raising the batches' own error) at MAX_FAILED_WAVES rather than spin on a broken number."""
    return failed_waves + 1 if batches and failed_batches == batches else 0


def wave_plan(
    db: sa.Engine, campaign_id: uuid.UUID, batch_size: int, headroom: float, parallel: int
) -> tuple[int, float]:
    """How many batches to start at once, and the messages per second the limits allow (for the run's log).

    A slow campaign (say 100 messages an hour) starts one batch a wave: parallel batches would only queue
    behind its pace, their claimed rows waiting minutes in `sending` (a crash then puts them back to
    pending at once, as they were never marked in flight, but nothing is gained by claiming them early)."""
    with db.connect() as conn:
        campaign = lifecycle.get_any_org(conn, campaign_id)
        number = get_number(conn, campaign["organization_id"], campaign["whatsapp_number_id"])
    spec = CampaignSpec.from_rows(campaign, number)
    step = max(limit.interval_us for limit in spec.limits(headroom)) / 1_000_000
    seconds_per_batch = spec.claim_size(batch_size, headroom) * step
    fits = int(30 // seconds_per_batch) if seconds_per_batch else UNLIMITED
    # Enough room for every parallel batch: no cap (capping waves would idle the number between them).
    return (UNLIMITED if fits >= parallel else max(1, fits)), stats.limit_rate(campaign, number, headroom)


UNLIMITED = 1_000_000


def supervise(db: sa.Engine, campaign_id: uuid.UUID, run_once: Callable[[], object]) -> int:
    """Run the campaign's runner (`run_once`, a process of its own) again whenever it ends while the campaign
    is still `running` and no runner holds it: killed, crashed, its lock lost. What `campaigns serve`'s
    scheduler does for served runs, for a campaign started from the CLI with nothing serving. Runners lost
    RELAUNCH_LIMIT times in a row without progress pause the campaign (`runner_failed`). Returns how many
    runners were lost."""
    lost = in_a_row = 0
    left = _left(remaining(db, campaign_id))
    while True:
        run_once()
        now = remaining(db, campaign_id)
        if now.status != "running" or _held_by_another(db, campaign_id):  # done, paused, cancelled; or taken
            return lost
        lost += 1
        in_a_row = 0 if _left(now) < left else in_a_row + 1
        left = _left(now)
        if in_a_row >= RELAUNCH_LIMIT:
            with db.begin() as conn:
                lifecycle.pause_for_error(
                    conn,
                    campaign_id,
                    "runner_failed",
                    f"its runner was lost {in_a_row} times in a row; resume to try again",
                )
            return lost
        log.warning(
            "campaign %s: its runner ended with the campaign running and nobody sending; starting it again", campaign_id
        )


def _held_by_another(db: sa.Engine, campaign_id: uuid.UUID, settle_seconds: float = LOCK_SETTLE_SECONDS) -> bool:
    """Whether another runner holds the campaign once the one that just ended has let go. A runner killed a
    moment ago still holds its lock until Postgres sees its connection close (milliseconds when idle, seconds
    on a loaded machine): read at once, the dead runner's lock looked like another's, and the supervisor
    left the campaign `running` with nobody sending. So look again until the lock is free or the time is up."""
    deadline = time.monotonic() + settle_seconds
    while True:
        with db.connect() as conn:
            alive = runner_alive(conn, campaign_id)
            conn.commit()
        if not alive:
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.2)


def _left(r: Remaining) -> int:
    """Rows not yet settled: progress is this number going down."""
    return r.due + r.waiting_retry + r.unknown
