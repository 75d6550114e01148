"""One batch of the send path, end to end: claim rows, prepare, send, decide, record.

The steps live in their own modules (spec, claim, prepare, deliver, outcomes, record); this one only
runs them in order, with the fault suite's pause points between them, and retries the record on a
deadlock. A row still in `sending` after its batch is an unknown outcome (a crash, a timeout after the
request left): campaigns.sending.reconcile settles it from the status webhooks before anything is resent.
"""

from __future__ import annotations

import logging
import random
import time

import sqlalchemy as sa

from campaigns.infra.faultpoints import ANSWERED, CLAIMED, RECORDED, pause_point
from campaigns.sending import metrics
from campaigns.sending.claim import claim
from campaigns.sending.deliver import Deliver
from campaigns.sending.error_codes import PAIR_LIMIT, THROUGHPUT_CODES, FailureClass, classify, escalated
from campaigns.sending.outage import provider_verdict, record_verdict
from campaigns.sending.outcomes import BatchCounts, clean_results, outcome_for, tally
from campaigns.sending.prepare import prepare
from campaigns.sending.record import circuit_breaker, record_and_pause
from campaigns.sending.spec import CampaignSpec
from campaigns.settings import get_settings

log = logging.getLogger(__name__)


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
    for attempt in range(3):  # a deadlock with a concurrent ingest is retried; the record is idempotent
        try:
            with db.begin() as conn:
                record_and_pause(conn, spec, token, outcomes, campaign_errors, counts, capped)
                record_verdict(conn, spec.id, down, sent, get_settings().provider_probe_max_seconds)
                if not counts.paused_reason:
                    circuit_breaker(conn, spec, outcomes, *breaker, counts)
            break
        except sa.exc.OperationalError:
            if attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))
    pause_point(RECORDED)
    answers = [res.error_code for res in results.values() if res is not None]
    metrics.count_batch(outcomes, answers, time.monotonic() - started)
    log.info(
        "batch of %d: claim %.3fs, send %.3fs, record %.3fs: %s",
        len(rows),
        claimed_at - started,
        delivered_at - claimed_at,
        time.monotonic() - delivered_at,
        counts.as_dict(),
    )
    return counts
