"""What each recipient's answer means for its row: the pure decisions of a batch.

Why pure and apart: the failure classes of error_codes.py become row changes here (sent, failed, a retry
at base·2^n, a rate refusal that spends no attempt, an unknown outcome left in `sending`, a pause that
puts the row back), and tests/unit/test_outcomes.py checks them without a database. Writing them is
campaigns.sending.record's.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from campaigns.sending.claim import Claimed
from campaigns.sending.error_codes import PAIR_LIMIT, FailureClass, classify
from campaigns.sending.providers import SendResult
from campaigns.sending.providers.base import clean_result
from campaigns.sending.spec import CampaignSpec

log = logging.getLogger(__name__)


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


def attempt_entry(attempt: int, success: bool, code: int | None, message: str | None) -> dict[str, Any]:
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
        return Outcome(
            row.id, "sent", wamid=result.message_id, entry=attempt_entry(row.attempts, True, None, None), at=now
        )
    entry = attempt_entry(row.attempts, False, result.error_code, result.error_message)
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
