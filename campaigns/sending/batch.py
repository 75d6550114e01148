"""The send path of one batch: claim rows, render, pace, send concurrently, record every outcome in bulk.

Exactly-once rests on Postgres, not on Prefect: a batch claims its rows in one statement
(pending → sending, FOR UPDATE SKIP LOCKED), so a retried task or a second flow run cannot claim them
again; outcomes are written in one UPDATE per batch. A row still in `sending` after its batch is an
unknown outcome (a crash, a timeout after the request left): `reconcile.py` settles it from the status
webhooks that carry our recipient id before anything is resent.

Only a request that may have left is unknown. The send engine marks each chunk's rows in flight
(`in_flight_at`, one UPDATE, committed) before the first of them can leave; a row in `sending` without the
mark was certainly never sent, so recovery puts it back to pending at once instead of waiting the grace
period. The claim's time is its token: the mark and the record touch only rows still held by this claim,
so a batch that lost its rows (another runner requeued them) neither sends nor records them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from campaigns.control.lifecycle import pause_for_error
from campaigns.infra.faultpoints import ANSWERED, CLAIMED, RECORDED, pause_point
from campaigns.sending.error_codes import PAIR_LIMIT, THROUGHPUT_CODES, FailureClass, classify, escalated, pause_reason
from campaigns.sending.outage import provider_verdict, record_verdict
from campaigns.sending.providers import OutboundMessage, Provider, SendResult
from campaigns.sending.providers.base import clean_result
from campaigns.sending.ratelimit import (
    Cap,
    Grant,
    Limit,
    PortfolioLimit,
    campaign_limit,
    chunk_size,
    number_caps,
    number_key,
    number_limit,
    portfolio_limit,
)
from campaigns.sending.rendering import (
    RenderError,
    contact_values,
    render_template,
    render_text,
    template_variables_problem,
)
from campaigns.sending.send_engine import SendEngine
from campaigns.settings import get_settings
from campaigns.store.db import get_engine

log = logging.getLogger(__name__)


CLAIM = sa.text("""
    with picked as (
        select r.id, ct.id as contact_exists, ct.name, ct.attributes, ct.opted_out_at
        from campaign_recipients r left join contacts ct on ct.id = r.contact_id
        where r.campaign_id = :campaign and r.status = 'pending'
          and (r.next_attempt_at is null or r.next_attempt_at <= now())
          and exists (select 1 from campaigns c where c.id = :campaign and c.status = 'running'
                      and c.audience_frozen_at is not null and (c.provider_probe_at is null or :probe))
        order by r.id
        limit :limit
        for update of r skip locked
    )
    update campaign_recipients r
    set status = 'sending', claimed_at = now(), in_flight_at = null, attempts = r.attempts + 1
    from picked
    where r.id = picked.id
    returning r.id, r.phone, r.attempts, picked.contact_exists, picked.name, picked.attributes, picked.opted_out_at,
              r.rate_tries, r.claimed_at
""")

# Rows about to leave, marked before any of their requests can: only rows this claim still holds.
MARK_IN_FLIGHT = sa.text("""
    update campaign_recipients set in_flight_at = now()
    where id = any(cast(:ids as bigint[])) and status = 'sending' and claimed_at = :claimed_at
    returning id
""")

RECORD = sa.text("""
    update campaign_recipients r set
        status = v.status,
        wamid = coalesce(v.wamid, r.wamid),
        sent_at = case when v.status = 'sent' then coalesce(r.sent_at, v.at) else r.sent_at end,
        failed_at = case when v.status = 'failed' then v.at else r.failed_at end,
        error_code = coalesce(v.code, case when v.status in ('sent', 'pending') then null else r.error_code end),
        error_message = case when v.status = 'sent' then null else coalesce(v.message, r.error_message) end,
        skip_reason = coalesce(v.skip_reason, r.skip_reason),
        next_attempt_at = v.next_at,
        claimed_at = case when v.status = 'sending' then v.at else r.claimed_at end,
        attempts = r.attempts + v.attempts_delta,
        rate_tries = coalesce(v.rate_tries, r.rate_tries),
        attempt_log = case when v.entry is null then r.attempt_log else r.attempt_log || jsonb_build_array(v.entry) end
    from unnest(
        cast(:ids as bigint[]), cast(:statuses as text[]), cast(:wamids as text[]), cast(:codes as int[]),
        cast(:messages as text[]), cast(:skip_reasons as text[]), cast(:next_ats as timestamptz[]),
        cast(:deltas as int[]), cast(:entries as jsonb[]), cast(:ats as timestamptz[]), cast(:rate_tries as int[])
    ) as v(id, status, wamid, code, message, skip_reason, next_at, attempts_delta, entry, at, rate_tries)
    where r.id = v.id and r.status = 'sending' and r.claimed_at = :claimed_at
""")


@dataclass
class Claimed:
    id: int
    phone: str
    attempts: int
    name: str | None
    attributes: dict[str, Any]
    opted_out: bool
    contact_deleted: bool = False
    rate_tries: int = 0  # earlier tries refused for a rate limit (they do not spend attempts)
    claimed_at: datetime | None = None  # the claim's time, the same for the whole batch: its token


@dataclass
class Outcome:
    """What to write for one recipient after its batch."""

    id: int
    status: str  # sent | failed | pending | skipped | cancelled | sending (unknown)
    wamid: str | None = None
    code: int | None = None
    message: str | None = None
    skip_reason: str | None = None
    next_at: datetime | None = None
    attempts_delta: int = 0  # -1 when the message was never attempted (pause, rate limit)
    entry: dict[str, Any] | None = None  # the attempt log entry
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    rate_tries: int | None = None  # rate refusals so far, when this one was one (None: unchanged)


@dataclass
class BatchCounts:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    skipped: int = 0
    unknown: int = 0
    returned: int = 0  # not attempted: back to pending (pause) or cancelled
    paused_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CampaignSpec:
    """The parts of a campaign row the send path needs (plain data: picklable, loggable)."""

    id: uuid.UUID
    organization_id: uuid.UUID
    number_id: uuid.UUID
    message_type: str
    message_content: dict[str, Any]
    template_variables: dict[str, Any]
    respect_opt_out: bool
    messages_per_hour: int | None
    delay_seconds: float
    retry_max_attempts: int
    retry_base_delay: int
    retry_max_delay: int
    mps: int
    provider: str = "meta_cloud"
    phone_number_id: str = ""
    per_minute: int | None = None
    per_hour: int | None = None
    per_day: int | None = None
    portfolio_id: uuid.UUID | None = None
    portfolio_limit: int | None = None

    @classmethod
    def from_rows(cls, campaign: dict[str, Any], number: dict[str, Any]) -> CampaignSpec:
        return cls(
            id=campaign["id"],
            organization_id=campaign["organization_id"],
            number_id=number["id"],
            message_type=campaign["message_type"],
            message_content=campaign["message_content"],
            template_variables=campaign["template_variables"] or {},
            respect_opt_out=campaign["respect_opt_out"],
            messages_per_hour=campaign["messages_per_hour"],
            delay_seconds=campaign["delay_between_messages_seconds"],
            retry_max_attempts=campaign["retry_max_attempts"],
            retry_base_delay=campaign["retry_base_delay"],
            retry_max_delay=campaign["retry_max_delay"],
            mps=number["mps"],
            provider=number["provider"],
            phone_number_id=number["phone_number_id"],
            per_minute=number.get("per_minute"),
            per_hour=number.get("per_hour"),
            per_day=number.get("per_day"),
            portfolio_id=number.get("portfolio_id"),
            portfolio_limit=number.get("portfolio_limit"),
        )

    def portfolio(self) -> PortfolioLimit | None:
        return portfolio_limit(self.portfolio_id, self.portfolio_limit)

    def caps(self) -> list[Cap]:
        return number_caps(
            number_key(self.provider, self.phone_number_id), self.provider, self.per_minute, self.per_hour, self.per_day
        )

    def limits(self, headroom: float) -> list[Limit]:
        limits = [number_limit(number_key(self.provider, self.phone_number_id), self.mps, headroom, self.provider)]
        own = campaign_limit(str(self.id), self.messages_per_hour, self.delay_seconds)
        return [*limits, own] if own else limits

    def claim_size(self, batch_size: int, headroom: float) -> int:
        """At most ~30 s of sending at this campaign's pace, so claimed rows never wait long."""
        step = max(limit.interval_us for limit in self.limits(headroom)) / 1_000_000
        return max(1, min(batch_size, math.ceil(30 / step)))


def claim(conn: sa.Connection, campaign_id: uuid.UUID, limit: int, probe: bool = False) -> list[Claimed]:
    """Claim up to `limit` due rows. While the campaign waits for its provider only a probe claims."""
    rows = conn.execute(CLAIM, {"campaign": campaign_id, "limit": limit, "probe": probe}).all()
    return [
        Claimed(
            r.id,
            r.phone,
            r.attempts,
            r.name,
            r.attributes or {},
            r.opted_out_at is not None,
            contact_deleted=r.contact_exists is None,
            rate_tries=r.rate_tries,
            claimed_at=r.claimed_at,
        )
        for r in sorted(rows, key=lambda r: r.id)
    ]


def prepare(spec: CampaignSpec, rows: list[Claimed]) -> tuple[list[OutboundMessage], list[Outcome]]:
    """Render each message; opt-outs since the audience was built and render errors settle at once.

    Any render failure fails only its recipient, with its reason: the rows are already claimed, so an
    exception out of here would leave the whole batch in `sending`. Template variables are checked again
    here because a stored campaign may predate the check at creation (or come from the main app).
    """
    messages: list[OutboundMessage] = []
    settled: list[Outcome] = []
    problem = template_variables_problem(spec.template_variables) if spec.message_type == "template" else None
    for row in rows:
        if row.contact_deleted:  # deleted from the main app after the audience froze: never sent
            settled.append(Outcome(row.id, "skipped", skip_reason="contact_deleted", attempts_delta=-1))
            continue
        if spec.respect_opt_out and row.opted_out:
            settled.append(Outcome(row.id, "skipped", skip_reason="opt_out", attempts_delta=-1))
            continue
        try:
            if problem:
                raise RenderError(f"cannot render the message: {problem}")
            messages.append(_render(spec, row))
            continue
        except RenderError as exc:  # a missing variable: the reason names it
            reason = str(exc)
        except Exception as exc:  # the contact's attributes are not an object, say: logged, this row only
            reason = f"cannot render the message: {type(exc).__name__}"
            log.warning("recipient %s: %s", row.id, reason, exc_info=True)
        settled.append(Outcome(row.id, "failed", message=reason, entry=_entry(row.attempts, False, None, reason)))
    return messages, settled


def _render(spec: CampaignSpec, row: Claimed) -> OutboundMessage:
    values = contact_values({"name": row.name, "phone": row.phone, "attributes": row.attributes})
    if spec.message_type == "text":
        return OutboundMessage(row.id, row.phone, "text", text=render_text(spec.message_content["text"], values))
    template = render_template(spec.message_content, spec.template_variables, values)
    return OutboundMessage(row.id, row.phone, "template", template=template)


def clean_results(results: dict[int, SendResult | None]) -> dict[int, SendResult | None]:
    """The providers' answers as the database can record them (providers.base.clean_result), and a message
    id answered for two sends of the batch dropped from both: it cannot identify either (ux_recipients_wamid
    would refuse the second). A send without an id is still recorded sent."""
    cleaned = {rid: clean_result(res) if res is not None else None for rid, res in results.items()}
    seen = Counter(res.message_id for res in cleaned.values() if res is not None and res.message_id)
    for rid, res in cleaned.items():
        if res is not None and res.message_id and seen[res.message_id] > 1:
            log.warning("recipient %s: message id %r answered for several sends; not kept", rid, res.message_id)
            cleaned[rid] = replace(res, message_id=None)
    return cleaned


# A chunk takes its caps and is marked in flight this long before its first slot, so the commit (a few ms) is
# done when the slot comes and costs no slot; a kill then leaves at most about a chunk (CHUNK_SECONDS of
# sending) per batch marked without having been sent, waiting the grace period.
MARK_LEAD_SECONDS = 0.1


def mark_in_flight(db: sa.Engine, ids: list[int], claimed_at: datetime) -> set[int]:
    """Mark rows in flight and commit, before any of their requests may leave. Returns those marked: a row
    missing from it is no longer this claim's (a runner that found this batch's runner gone requeued it)."""
    with db.begin() as conn:
        return set(conn.execute(MARK_IN_FLIGHT, {"ids": ids, "claimed_at": claimed_at}).scalars())


class InFlightMarks:
    """The batch's rows marked in flight. Nothing is sent before its mark has committed: a request written
    to the socket first would look never-sent to recovery, and be sent twice."""

    def __init__(self, claimed_at: datetime) -> None:
        self.claimed_at = claimed_at
        self.marked: set[int] = set()

    async def mark_next(self, queue: deque[OutboundMessage], n: int) -> bool:
        """Mark the next `n` messages of the queue; messages whose rows this claim lost leave the queue
        unsent. False when sending must stop (Postgres away)."""
        ids = [m.recipient_id for m in itertools.islice(queue, n) if m.recipient_id not in self.marked]
        if not ids:
            return True
        try:
            marked = await asyncio.to_thread(mark_in_flight, get_engine(), ids, self.claimed_at)
        except Exception:  # unmarked, they are certainly not sent: back to pending with the batch
            log.exception("could not mark %d messages in flight; they are not sent in this batch", len(ids))
            return False
        self.marked |= marked
        if lost := set(ids) - marked:
            log.warning("%d rows of this batch were requeued by another runner; not sent here", len(lost))
            kept = [m for m in queue if m.recipient_id not in lost]
            queue.clear()
            queue.extend(kept)
        return True

    def ready(self, msg: OutboundMessage) -> bool:
        return msg.recipient_id in self.marked


async def deliver(
    engine: SendEngine,
    provider: Provider,
    spec: CampaignSpec,
    messages: list[OutboundMessage],
    claimed_at: datetime,
) -> dict[int, SendResult | None]:
    """Send at the reserved slots, many requests in flight. None = not attempted (campaign stopped).

    One coroutine walks the reserved slots in order and starts each request on time; requests then run
    concurrently. A slot the loop woke too late for is skipped (sending then would bunch with the next
    slots and overshoot the number's rate): its message takes the next slot instead. Each chunk's rows are
    marked in flight, committed, before its first request (InFlightMarks; `claimed_at` is the claim's token).

    A chunk takes what it sends from the number's caps and its portfolio's window just before its rows are
    marked, and gives back what it did not send when it ends. A counter Redis lost is rebuilt from the rows
    sent and marked (limit_history), so no take is unmarked longer than a mark's commit, and a batch waiting
    for its slots holds none (taken earlier, a dozen batches' chunks were uncounted after a Redis loss, and
    at a pausing cap they were given back after the campaign had paused, leaving the window under-used).
    """
    control = engine.control
    marks = InFlightMarks(claimed_at)
    control.register(spec.id, "running")
    limits = spec.limits(engine.settings.rate_headroom)
    results: dict[int, SendResult | None] = {m.recipient_id: None for m in messages}
    queue = deque(messages)
    inflight: list[asyncio.Task[None]] = []

    async def send(msg: OutboundMessage) -> None:
        try:
            result = await provider.send(engine.session, msg)
        except Exception as exc:  # a bug or an odd reply: the request may have left, so it is ambiguous
            log.exception("send to recipient %s raised", msg.recipient_id)
            result = SendResult(msg.recipient_id, False, error_message=f"{type(exc).__name__}: {exc}", ambiguous=True)
        results[msg.recipient_id] = result
        if control.answered(spec.id, result):
            log.warning(
                "campaign %s: %d sends in a row found the provider unavailable (last: %s); sending stops "
                "until it answers again",
                spec.id,
                control.outage_failures,
                result.error_message,
            )
        if not result.ok and not result.ambiguous and classify(result.error_code) is FailureClass.CAMPAIGN:
            control.stop(spec.id, "paused")  # stop this process's other sends now; the batch records it
        elif result.error_code in THROUGHPUT_CODES:
            try:
                changed, factor = await engine.limiter.slow_down(limits[0])
                if changed:  # one line per step down, not one per refused message
                    log.warning(
                        "number %s answered %s: its rate is now x%.3g", spec.phone_number_id, result.error_code, factor
                    )
            except Exception:  # the retry still waits; only the slowdown is lost
                log.exception("could not slow the number down")

    caps = spec.caps()
    portfolio = spec.portfolio()
    credit = 0  # taken from the caps' windows for this chunk and not yet spent on a send

    async def give_back() -> None:
        nonlocal credit
        if caps and credit > 0:
            try:
                await engine.limiter.refund(caps, credit)
            except Exception:  # the cap then counts a few unsent messages: fewer sent, never more
                log.exception("could not give back %d unsent messages to the caps", credit)
        credit = 0

    try:
        while queue and control.running(spec.id):
            n = chunk_size(limits, len(queue))
            try:
                reservation = await engine.limiter.reserve(limits, n)
                if not await control.sleep_until(spec.id, reservation.start - MARK_LEAD_SECONDS):
                    break
                grant = Grant(n)
                if caps:
                    grant = await engine.limiter.take(caps, n)
                    credit = grant.count
                if portfolio and grant.count:
                    grant = await engine.limiter.admit(portfolio, [m.to for m in itertools.islice(queue, grant.count)])
            except Exception:  # Redis unreachable: stop starting sends; the rest go back to pending
                log.exception("rate limiter unavailable; %d messages not sent in this batch", len(queue))
                break
            if grant.count == 0:
                _cap_reached(results, queue, grant)
                break
            if not await marks.mark_next(queue, grant.count):
                break
            for when in reservation.slots()[: grant.count]:
                # Sleep only when the slot is ahead: timer wake-ups cost ~1 ms, as much as a slot at
                # 1,000 msg/s, so slots already due are sent back to back rather than slept for.
                if when > time.time() and not await control.sleep_until(spec.id, when):
                    break
                if not control.running(spec.id):
                    break
                if time.time() - when > engine.settings.late_tolerance_seconds:
                    continue
                if not queue or not marks.ready(queue[0]):  # the claim lost rows: the rest wait for their mark
                    break
                inflight.append(asyncio.create_task(send(queue.popleft())))
                credit -= 1
                if not queue:
                    break
            await give_back()  # slots woken too late, rows lost: the next chunk takes what it sends
    finally:
        await asyncio.gather(*inflight, return_exceptions=True)
        control.unregister(spec.id)
        await give_back()
    if control.provider_down(spec.id):  # down when the batch ended: its unavailable answers are the outage's
        return {
            rid: replace(res, outage=True) if res is not None and res.unavailable else res
            for rid, res in results.items()
        }
    return results


def _cap_reached(results: dict[int, SendResult | None], queue: deque[OutboundMessage], grant: Grant) -> None:
    """The rest of the batch is not attempted: a cap of the number is full until `grant.until`."""
    cap = grant.cap
    message = f"{cap.label if cap else 'a cap'} reached for this number"
    for msg in queue:
        results[msg.recipient_id] = SendResult(
            msg.recipient_id, False, error_message=message, cap_until=grant.until, cap_pause=bool(cap and cap.pause)
        )
    queue.clear()


def _entry(attempt: int, success: bool, code: int | None, message: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"attempt": attempt, "success": success, "timestamp": datetime.now(UTC).isoformat()}
    if code is not None:
        entry["error_code"] = code
    if message:
        entry["error_message"] = message[:500]
    return entry


def backoff(spec: CampaignSpec, attempt: int, rng: random.Random) -> timedelta:
    """base·2^(attempt-1), capped at retry_max_delay, with ±20% jitter: 60 s, 120 s, 240 s by default."""
    seconds = min(spec.retry_base_delay * 2 ** max(attempt - 1, 0), spec.retry_max_delay)
    return timedelta(seconds=seconds * rng.uniform(0.8, 1.2))


def outcome_for(
    spec: CampaignSpec,
    row: Claimed,
    result: SendResult | None,
    status_now: str,
    rng: random.Random,
    escalate: frozenset[int] = frozenset(),
    provider_down: bool = False,
) -> Outcome:
    """Pure decision for one recipient: the failure classes of errors.py turned into row changes
    (`escalate`: codes this batch showed to be campaign-level, see errors.escalated; `provider_down`: the
    batch found its provider down, see provider_verdict)."""
    now = datetime.now(UTC)
    if result is None:  # never attempted: the campaign was paused or cancelled meanwhile
        return Outcome(row.id, "cancelled" if status_now == "cancelled" else "pending", attempts_delta=-1)
    if result.cap_until:  # not attempted: a pausing cap leaves it due for the resume, a waiting one delays it
        next_at = None if result.cap_pause else datetime.fromtimestamp(result.cap_until, UTC)
        return Outcome(row.id, "pending", next_at=next_at, attempts_delta=-1)
    if result.ok:
        return Outcome(row.id, "sent", wamid=result.message_id, entry=_entry(row.attempts, True, None, None), at=now)
    entry = _entry(row.attempts, False, result.error_code, result.error_message)
    if result.ambiguous:
        # It may have been accepted: leave it in `sending` for reconciliation; never resend blindly.
        return Outcome(row.id, "sending", code=result.error_code, message=result.error_message, entry=entry)
    if provider_down and result.unavailable:
        # The provider's outage, not the recipient's: due again as soon as the provider answers (the runner
        # probes it meanwhile), and no attempt spent on it.
        return Outcome(
            row.id, "pending", code=result.error_code, message=result.error_message, entry=entry, attempts_delta=-1
        )
    cls = classify(result.error_code, escalate)
    if cls is FailureClass.RECIPIENT:
        return Outcome(row.id, "failed", code=result.error_code, message=result.error_message, entry=entry, at=now)
    if cls is FailureClass.CAMPAIGN:
        # Nothing pending is marked failed: the row waits for the campaign to be fixed and resumed.
        return Outcome(
            row.id, "pending", code=result.error_code, message=result.error_message, entry=entry, attempts_delta=-1
        )
    if cls is FailureClass.RATE:
        # Retry-After when Meta sends one; else the pair limit (131056) backs off 4, 16, 64, 256 s for this
        # recipient only, and throughput limits retry after 1, 2, 4 … 30 s while the number slows down.
        tries = row.rate_tries + 1
        backoff_s = 4 ** min(tries, 4) if result.error_code == PAIR_LIMIT else min(2 ** (tries - 1), 30)
        wait = result.retry_after or backoff_s
        return Outcome(
            row.id,
            "pending",
            code=result.error_code,
            message=result.error_message,
            entry=entry,
            next_at=now + timedelta(seconds=wait),
            attempts_delta=-1,
            rate_tries=tries,
        )
    if cls is FailureClass.UNKNOWN:
        log.warning("unknown provider error code %s: %s", result.error_code, result.error_message)
    if row.attempts > spec.retry_max_attempts:  # the first send, then retry_max_attempts retries
        message = f"retries exhausted after {row.attempts} attempts: {result.error_message}"
        return Outcome(row.id, "failed", code=result.error_code, message=message, entry=entry, at=now)
    return Outcome(
        row.id,
        "pending",
        code=result.error_code,
        message=result.error_message,
        entry=entry,
        next_at=now + backoff(spec, row.attempts, rng),
    )


def record(conn: sa.Connection, spec: CampaignSpec, outcomes: list[Outcome], claimed_at: datetime | None) -> int:
    """Write the outcomes in one statement. Should that fail on the data (a value the cleaning did not
    foresee, a message id another row already holds), write them row by row, so the other rows (some
    really sent) are not left in `sending`; a row that still fails is written without the provider's id
    and text. A lost connection or a deadlock is not the data: it is raised, and the caller retries.
    Only rows still held by the claim made at `claimed_at` are written."""
    if not outcomes:
        return 0
    try:
        with conn.begin_nested():
            updated = _record_rows(conn, outcomes, claimed_at)
            _count_errors(conn, spec, outcomes)
            return updated
    except sa.exc.OperationalError:
        raise
    except Exception:
        log.exception("recording a batch of %d outcomes failed; recording them one by one", len(outcomes))
    written = [_record_one(conn, o, claimed_at) for o in outcomes]
    _count_errors(conn, spec, [o for _, o in written])  # once for the batch, with what each row now says
    return sum(n for n, _ in written)


def _record_one(conn: sa.Connection, outcome: Outcome, claimed_at: datetime | None) -> tuple[int, Outcome]:
    """The outcome written alone, or bare if even alone it cannot be; with the outcome as written."""
    try:
        with conn.begin_nested():
            return _record_rows(conn, [outcome], claimed_at), outcome
    except sa.exc.OperationalError:
        raise
    except Exception:
        log.exception(
            "recipient %s: outcome %s not recordable as answered; recorded without the provider's id and text",
            outcome.id,
            outcome.status,
        )
    bare = replace(
        outcome,
        wamid=None,
        code=None,
        entry={"note": "the provider's answer could not be stored"},
        message=None if outcome.status == "sent" else "the provider's answer could not be stored",
    )
    with conn.begin_nested():
        return _record_rows(conn, [bare], claimed_at), bare


def _record_rows(conn: sa.Connection, outcomes: list[Outcome], claimed_at: datetime | None) -> int:
    cols = list(
        zip(
            *[
                (
                    o.id,
                    o.status,
                    o.wamid,
                    o.code,
                    o.message,
                    o.skip_reason,
                    o.next_at,
                    o.attempts_delta,
                    json.dumps(o.entry) if o.entry else None,
                    o.at,
                    o.rate_tries,
                )
                for o in outcomes
            ],
            strict=True,
        )
    )
    names = (
        "ids",
        "statuses",
        "wamids",
        "codes",
        "messages",
        "skip_reasons",
        "next_ats",
        "deltas",
        "entries",
        "ats",
        "rate_tries",
    )
    params = {**dict(zip(names, map(list, cols), strict=True)), "claimed_at": claimed_at}
    return conn.execute(RECORD, params).rowcount


def _count_errors(conn: sa.Connection, spec: CampaignSpec, outcomes: list[Outcome]) -> None:
    """The campaign's error count and last error message, for the failures among `outcomes`."""
    errors = [o for o in outcomes if o.status == "failed" or (o.code is not None and o.status != "sent")]
    if errors:
        conn.execute(
            # A paused campaign keeps the message that explains the pause (batches in flight still finish).
            sa.text(
                "update campaigns set error_count = error_count + :n, updated_at = now(), last_error_message = "
                "case when status = 'paused' then last_error_message else :m end where id = :c"
            ),
            {"n": len(errors), "m": errors[-1].message, "c": spec.id},
        )


def tally(outcomes: list[Outcome]) -> BatchCounts:
    counts = BatchCounts(claimed=len(outcomes))
    for o in outcomes:
        if o.status == "sent":
            counts.sent += 1
        elif o.status == "failed":
            counts.failed += 1
        elif o.status == "skipped":
            counts.skipped += 1
        elif o.status == "sending":
            counts.unknown += 1
        elif o.status == "pending" and o.entry is not None:
            counts.retrying += 1
        else:
            counts.returned += 1
    return counts


Deliver = Callable[[list[OutboundMessage], datetime], dict[int, SendResult | None]]  # (messages, the claim's token)


def send_batch(
    db: sa.Engine, deliver_fn: Deliver, spec: CampaignSpec, batch_size: int, headroom: float, probe: bool = False
) -> BatchCounts:
    """Claim up to `batch_size` pending rows of the campaign, send them, record the outcomes. A `probe` sends
    one row, to a provider the campaign waits for (campaigns/sending/outage.py)."""
    started = time.monotonic()
    with db.begin() as conn:
        rows = claim(conn, spec.id, 1 if probe else spec.claim_size(batch_size, headroom), probe)
    if not rows:
        return BatchCounts()
    claimed_at = time.monotonic()
    token = rows[0].claimed_at
    assert token is not None, "claim() returns the claim's time"
    pause_point(CLAIMED)
    messages, settled = prepare(spec, rows)
    results = clean_results(deliver_fn(messages, token)) if messages else {}
    pause_point(ANSWERED)
    delivered_at = time.monotonic()
    with db.connect() as conn:
        status_now, waiting = conn.execute(
            sa.text("""
            select status, provider_probe_at is not null from campaigns where id = :c
        """),
            {"c": spec.id},
        ).one()
    rng = random.Random()
    by_id = {r.id: r for r in rows}
    sent = [res for res in results.values() if res is not None and not res.cap_until]
    escalate = escalated([None if res.ok else res.error_code for res in sent])
    down = provider_verdict(sent, waiting)
    outcomes = settled + [
        outcome_for(spec, by_id[rid], res, status_now, rng, escalate, bool(down)) for rid, res in results.items()
    ]
    if status_now == "cancelled":  # cancel is final: what would wait for a retry is cancelled instead
        for o in outcomes:
            if o.status == "pending":
                o.status, o.next_at = "cancelled", None
    counts = tally(outcomes)
    campaign_errors = [
        (o, res)
        for o in outcomes
        if (res := results.get(o.id)) is not None
        and not res.ok
        and not res.ambiguous
        and classify(res.error_code, escalate) is FailureClass.CAMPAIGN
    ]
    capped = [res for res in results.values() if res is not None and res.cap_until and res.cap_pause]
    # The breaker counts neither rate refusals nor a provider that could not take the request (outage.py).
    tried = [res for res in sent if res.error_code not in THROUGHPUT_CODES | {PAIR_LIMIT} and not res.unavailable]
    breaker = (sum(not res.ok for res in tried), any(res.ok for res in tried))
    for attempt in range(3):  # a deadlock with a concurrent ingest is retried; RECORD is idempotent
        try:
            with db.begin() as conn:
                _record_and_pause(conn, spec, token, outcomes, campaign_errors, counts, capped)
                record_verdict(conn, spec.id, down, sent, get_settings().provider_probe_max_seconds)
                if not counts.paused_reason:
                    _circuit_breaker(conn, spec, outcomes, *breaker, counts)
            break
        except sa.exc.OperationalError:
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))
    pause_point(RECORDED)
    log.info(
        "batch of %d: claim %.3fs, send %.3fs, record %.3fs: %s",
        len(rows),
        claimed_at - started,
        delivered_at - claimed_at,
        time.monotonic() - delivered_at,
        counts.as_dict(),
    )
    return counts


def _circuit_breaker(
    conn: sa.Connection, spec: CampaignSpec, outcomes: list[Outcome], failed: int, any_ok: bool, counts: BatchCounts
) -> None:
    """Count failed sends in a row (a success resets it); at the threshold, pause the campaign.

    Rate refusals are not failures here (they slow down and retry), nor is a provider that could not take
    the request (an outage is waited out: outage.py). A batch is counted as a whole: a success anywhere in
    it resets the count.
    """
    threshold = get_settings().circuit_breaker_failures
    if not threshold or (not failed and not any_ok):
        return
    row = conn.execute(
        sa.text("""
        update campaigns set consecutive_failures = case when :ok then 0 else consecutive_failures + :n end
        where id = :c returning consecutive_failures
    """),
        {"ok": any_ok, "n": failed, "c": spec.id},
    ).scalar_one()
    if row < threshold:
        return
    last = next((o for o in reversed(outcomes) if o.code is not None or o.message), None)
    detail = f"({last.code}) {last.message}" if last else "no error detail"
    message = f"circuit breaker: {row} sends failed in a row (last: {detail})"
    if pause_for_error(conn, spec.id, "circuit_breaker", message):
        conn.execute(sa.text("update campaigns set consecutive_failures = 0 where id = :c"), {"c": spec.id})
        log.warning("campaign %s paused: %s", spec.id, message)
    counts.paused_reason = "circuit_breaker"


def _record_and_pause(
    conn: sa.Connection,
    spec: CampaignSpec,
    claimed_at: datetime,
    outcomes: list[Outcome],
    campaign_errors: list[Any],
    counts: BatchCounts,
    capped: list[SendResult] | None = None,
) -> None:
    """Write the batch's outcomes and, on a campaign-level error or a full hour/day cap, pause the campaign:
    one transaction."""
    record(conn, spec, outcomes, claimed_at)
    # A cancel that committed while this batch was sending already swept pending rows: sweep again.
    conn.execute(
        sa.text("""
        update campaign_recipients set status = 'cancelled' where campaign_id = :c and status = 'pending'
        and exists (select 1 from campaigns where id = :c and status = 'cancelled')
    """),
        {"c": spec.id},
    )
    if campaign_errors:
        _, res = campaign_errors[0]
        reason = pause_reason(res.error_code or 0)
        message = f"({res.error_code}) {res.error_message}"
        if pause_for_error(conn, spec.id, reason, message):
            log.warning("campaign %s paused: %s %s", spec.id, reason, message)
        counts.paused_reason = reason
    elif capped:
        resume_at = datetime.fromtimestamp(max(res.cap_until or 0 for res in capped), UTC)
        # The seed's wording first, so operators who know it recognise it; then which cap and until when.
        message = (
            f"Rate limit exceeded: {capped[0].error_message}; resumes at {resume_at.isoformat(timespec='seconds')}"
        )
        if pause_for_error(conn, spec.id, "rate_limit", message, resume_at=resume_at):
            log.warning("campaign %s paused: %s", spec.id, message)
        counts.paused_reason = "rate_limit"
