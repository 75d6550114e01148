"""Sending a batch's messages at their reserved slots, many requests in flight (in the send engine's
process: campaigns.sending.engine_process).

Why a module: this is the hot loop, the one part of a batch that runs async, and the one that talks to
Redis (slots, caps, portfolio) and the provider; it returns each message's answer (None: not attempted)
and decides nothing about the rows: campaigns.sending.outcomes does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import replace
from datetime import datetime

from campaigns.sending.claim import InFlightMarks
from campaigns.sending.error_codes import THROUGHPUT_CODES, FailureClass, classify
from campaigns.sending.providers import OutboundMessage, Provider, SendResult
from campaigns.sending.ratelimit import Grant, chunk_size
from campaigns.sending.send_engine import SendEngine
from campaigns.sending.spec import CampaignSpec

log = logging.getLogger(__name__)

# A chunk takes its caps and is marked in flight this long before its first slot, so the commit (a few ms) is
# done when the slot comes and costs no slot; a kill then leaves at most about a chunk (CHUNK_SECONDS of
# sending) per batch marked without having been sent, waiting the grace period.
MARK_LEAD_SECONDS = 0.1
PACED_STEP_S = 1.0  # slots this far apart are sent late rather than skipped (see deliver)
# The campaign a batch's coroutine sends for: the engine's warnings go to that campaign's run alone
# (engine_process._ForwardLogs), not to every run sharing the engine (200 in one `campaigns serve`).
SENDING_FOR: ContextVar[str | None] = ContextVar("sending_for", default=None)


Deliver = Callable[[list[OutboundMessage], datetime], dict[int, SendResult | None]]  # (messages, the claim's token)


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
    slots and overshoot the number's rate): its message takes the next slot instead; unless the slots are
    PACED_STEP_S or more apart, when waiting a whole step would cost more than a late send. Each chunk's rows are
    marked in flight, committed, before its first request (InFlightMarks; `claimed_at` is the claim's token).

    A chunk takes what it sends from the number's caps and its portfolio's window just before its rows are
    marked, and gives back what it did not send when it ends. A counter Redis lost is rebuilt from the rows
    sent and marked (limit_history), so no take is unmarked longer than a mark's commit, and a batch waiting
    for its slots holds none (taken earlier, a dozen batches' chunks were uncounted after a Redis loss, and
    at a pausing cap they were given back after the campaign had paused, leaving the window under-used).
    """
    SENDING_FOR.set(str(spec.id))  # this batch's task and the tasks it starts
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
                if not reservation.count:  # the campaign's own pace: its turn comes at `start`, ask again then
                    if not await control.sleep_until(spec.id, reservation.start - MARK_LEAD_SECONDS):
                        break
                    continue
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
                # A fast limit's slot woken too late for is skipped: sent late, it would bunch with the slots after
                # it and overshoot the number's rate, and skipping costs one step (a millisecond at 1,000 msg/s). A
                # paced campaign's is sent late: skipping it would cost its whole step (36 s at 100 an hour).
                if time.time() - when > engine.settings.late_tolerance_seconds and reservation.step_s < PACED_STEP_S:
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
