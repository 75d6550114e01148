"""A provider outage: the campaign waits for its provider, and goes on by itself when it answers again.

When the provider itself cannot take requests (Graph codes 2, 131016, 131057, 133004, a 5xx, a timeout, a
connection refused: `SendResult.unavailable`), every send fails alike, whoever the recipient. Counting
those failures per recipient and in the circuit breaker, as for any failure, did the wrong thing twice: an
outage of a minute spent the retries of every recipient sent meanwhile (they failed for good), and 50 of
them in a row paused the campaign until an operator resumed it after the provider was back.

So an outage is judged per campaign, not per recipient, and waited out (two campaigns on one number each
judge and probe for themselves):

- The send engine counts a campaign's answers in a row that found the provider unavailable (any other
  answer, a success or an error about the message, ends the run: the provider took that request). At
  `PROVIDER_OUTAGE_FAILURES` (10) the provider is down: the campaign's sends in that process stop at once
  (engine.CampaignControl.answered), and the batches flag their unavailable answers as the outage's.
- Those answers cost the recipients nothing: back to pending, due again, no attempt spent, the answer kept in
  their attempt log (sending.outcomes.outcome_for). Nor does the circuit breaker count them: it is kept for failures
  that say something about the campaign's messages or audience.
- The campaign stays `running` and records the wait (`provider_down_since`, `provider_probe_at`). While it
  waits no batch claims rows; when `provider_probe_at` comes the runner sends one message (a probe batch of
  one row, which takes no slot of the send limit). Refused, the next try waits half as long as the outage
  has lasted so far (at least 1 s: 1, 1, 1, 1.5, 2.3 … s, growing by half each time), at most
  `PROVIDER_PROBE_MAX_SECONDS` (60 s): one request a minute against a long outage, and sending again
  within half the outage's length after it ended (within a minute). Taken, the wait ends and sending goes
  on at full pace.

Why a wait inside the running campaign rather than a pause: a pause stops the run and needs the scheduler
(under `campaigns serve`) or an operator to resume; the runner holding its lock can simply wait and probe,
with nothing to relaunch and the campaign's status telling the truth (it is sending as soon as it can).
Why one probe and not the retry schedule of each row: during an outage thousands of rows would each come
due and hit a provider that is down; one request tells as much.

What is still spent: a batch that ended before the count reached the threshold (an outage that starts at
a campaign's last few sends, say) recorded its unavailable answers as ordinary transient failures, each
retried with its recipient's backoff at the cost of one attempt; and a 5xx without a Graph code or a
timeout may have been accepted, so that row still waits for its status webhook and its try counts, as
any ambiguous send. Below the threshold one recipient's "service unavailable" stays that recipient's
transient failure, which fails it once its retries are used. A provider down for good (a wrong address:
connection refused) is waited for, not paused: `last_error_message` says since when; pause or cancel the
campaign to stop it.
"""

from __future__ import annotations

import logging
import uuid

import sqlalchemy as sa

from campaigns.sending.providers import SendResult
from campaigns.store.db import iso_z

log = logging.getLogger(__name__)

FIRST_PROBE_SECONDS = 1.0


def provider_verdict(answers: list[SendResult], waiting: bool) -> bool | None:
    """What a batch's answers (its attempted sends) say of the provider: True it is down (the send engine
    judged so, or the campaign already waited for it and nothing got through), False it answers again (the
    campaign waited and a request was taken), None nothing new."""
    if any(res.outage for res in answers):
        return True
    if not waiting or not answers:
        return None
    return all(res.unavailable for res in answers)


def record_verdict(
    conn: sa.Connection, campaign_id: uuid.UUID, down: bool | None, answers: list[SendResult], max_seconds: float
) -> None:
    """Start or lengthen the campaign's wait for its provider (`down`), or end it (`down` False)."""
    if down is None:
        return
    if not down:
        lasted = conn.execute(
            sa.text("""
            with old as (select id, provider_down_since from campaigns
                         where id = :c and provider_down_since is not null for update)
            update campaigns c set provider_down_since = null, provider_probe_at = null from old
            where c.id = old.id
            returning extract(epoch from now() - old.provider_down_since)
        """),
            {"c": campaign_id},
        ).scalar()
        if lasted is not None:
            log.warning("campaign %s: the provider answers again after %.0f s; sending goes on", campaign_id, lasted)
        return
    row = conn.execute(
        sa.text("""
        update campaigns set provider_down_since = coalesce(provider_down_since, now()),
               provider_probe_at = now() + make_interval(secs => least(greatest(
                   extract(epoch from now() - coalesce(provider_down_since, now())) / 2, :first), :most))
        where id = :c
        returning provider_down_since, provider_probe_at
    """),
        {"c": campaign_id, "first": FIRST_PROBE_SECONDS, "most": max_seconds},
    ).one()
    last = next((res for res in reversed(answers) if res.unavailable), None)
    detail = (
        f"({last.error_code}) {last.error_message}"
        if last and last.error_code
        else (last.error_message if last else "no answer")
    )
    message = (
        f"provider unavailable since {iso_z(row.provider_down_since)} (last: {detail}); the campaign waits "
        f"for it and goes on by itself, next try at {iso_z(row.provider_probe_at)}"
    )
    conn.execute(
        sa.text("update campaigns set last_error_message = :m where id = :c"), {"m": message, "c": campaign_id}
    )
