"""Writing a batch's outcomes, and what they do to the campaign (its error count, a pause, the breaker).

Why a module: the record is the batch's one transaction after the send: every outcome in one UPDATE
(campaigns.store.recipients.record, only rows this claim still holds), the sweep for a cancel that
committed meanwhile, and a pause on a campaign-level error, a full cap or too many failures in a row.
When the one UPDATE fails on the data, the rows are written one by one so the sent ones are not left in
`sending`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from campaigns.control.lifecycle import pause_for_error
from campaigns.sending.error_codes import pause_reason
from campaigns.sending.outcomes import BatchCounts, Outcome
from campaigns.sending.providers import SendResult
from campaigns.sending.spec import CampaignSpec
from campaigns.settings import get_settings
from campaigns.store import recipients

log = logging.getLogger(__name__)


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
            updated = recipients.record(conn, outcomes, claimed_at)
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
            return recipients.record(conn, [outcome], claimed_at), outcome
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
        return recipients.record(conn, [bare], claimed_at), bare


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


def circuit_breaker(
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


def record_and_pause(
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
    recipients.cancel_pending(conn, spec.id)
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
