"""What a provider's answer means for its recipient's row: sent, retried later, failed, left for the campaign's
resume, or unknown until a status webhook says (campaigns/sending/outcomes.py outcome_for, prepare.py; the answer
cleaned by providers/base.py clean_result first)."""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import replace

import pytest

from campaigns.sending.claim import Claimed
from campaigns.sending.outcomes import clean_results, outcome_for, tally
from campaigns.sending.prepare import prepare
from campaigns.sending.providers import SendResult
from campaigns.sending.providers.base import MAX_ERROR_TEXT, clean_result
from campaigns.sending.spec import CampaignSpec

SPEC = CampaignSpec(
    id=uuid.uuid4(),
    organization_id=uuid.uuid4(),
    number_id=uuid.uuid4(),
    message_type="text",
    message_content={"text": "Oi {{contact.name}}"},
    template_variables={},
    respect_opt_out=True,
    messages_per_hour=None,
    delay_seconds=0,
    retry_max_attempts=3,
    retry_base_delay=60,
    retry_max_delay=3600,
    mps=80,
)
CAP_UNTIL = 2_000_000_000.0  # a cap of the number is full until then (Unix seconds)


def row(attempts: int = 1, rate_tries: int = 0, **fields) -> Claimed:
    return Claimed(
        **{
            "id": 7,
            "phone": "+5511900000007",
            "attempts": attempts,
            "name": "Ana",
            "attributes": {},
            "opted_out": False,
            "rate_tries": rate_tries,
            **fields,
        }
    )


def failed(code: int | None, **fields) -> SendResult:
    return SendResult(7, False, error_code=code, error_message=f"error {code}", **fields)


def decide(
    result: SendResult | None,
    attempts: int = 1,
    status_now: str = "running",
    rate_tries: int = 0,
    escalate: frozenset[int] = frozenset(),
):
    return outcome_for(SPEC, row(attempts, rate_tries), result, status_now, random.Random(0), escalate)


def wait_seconds(outcome) -> float | None:
    return None if outcome.next_at is None else (outcome.next_at - outcome.at).total_seconds()


@pytest.mark.parametrize(
    ("result", "status_now", "status", "spends_attempt"),
    [
        (SendResult(7, True, message_id="wamid.A"), "running", "sent", True),
        (failed(131026), "running", "failed", True),  # not on WhatsApp: this recipient only
        (failed(131050), "running", "failed", True),  # the user stopped marketing messages
        (failed(131016), "running", "pending", True),  # transient: retried after a backoff
        (failed(None), "running", "pending", True),  # a connection that never opened: nothing left, retried
        (failed(131999), "running", "pending", True),  # an unknown code: retried a limited number of times
        (failed(131000, ambiguous=True), "running", "sending", True),  # may have been accepted: unknown
        (failed(None, ambiguous=True), "running", "sending", True),  # a timeout after the request left
        (failed(190), "running", "pending", False),  # the token: the campaign pauses, the row waits for the resume
        (failed(132001), "running", "pending", False),  # the template
        (failed(130429), "running", "pending", False),  # the number's rate: slow down, not the recipient's fault
        (failed(131056), "running", "pending", False),  # the pair's rate
        (None, "running", "pending", False),  # never attempted: the campaign was paused meanwhile
        (None, "cancelled", "cancelled", False),  # ...or cancelled, which is final
        (SendResult(7, False, cap_until=CAP_UNTIL), "running", "pending", False),  # a cap is full: not attempted
    ],
)
def test_each_answer_decides_the_rows_status_and_whether_it_spent_an_attempt(
    result, status_now, status, spends_attempt
):
    outcome = decide(result, status_now=status_now)
    assert outcome.status == status
    assert outcome.attempts_delta == (0 if spends_attempt else -1)


def test_a_sent_message_keeps_its_id_and_logs_a_successful_attempt():
    outcome = decide(SendResult(7, True, message_id="wamid.A"))
    assert (outcome.wamid, outcome.code, outcome.message) == ("wamid.A", None, None)
    assert (outcome.entry["attempt"], outcome.entry["success"]) == (1, True)


def test_a_failure_keeps_the_providers_code_and_text_for_the_operator():
    outcome = decide(failed(131026))
    assert (outcome.code, outcome.message) == (131026, "error 131026")
    assert outcome.entry["error_code"] == 131026 and outcome.entry["success"] is False


@pytest.mark.parametrize(("attempts", "base_seconds"), [(1, 60), (2, 120), (3, 240)])
def test_a_transient_failure_waits_base_times_two_to_the_attempt_with_jitter(attempts, base_seconds):
    waits = [
        wait_seconds(outcome_for(SPEC, row(attempts), failed(131016), "running", random.Random(seed)))
        for seed in range(100)
    ]
    assert base_seconds * 0.8 <= min(waits) < max(waits) <= base_seconds * 1.2  # ±20%, so retries spread out


def test_the_retry_wait_is_capped_at_retry_max_delay():
    spec = replace(SPEC, retry_max_attempts=10, retry_max_delay=100)
    outcome = outcome_for(spec, row(attempts=8), failed(131016), "running", random.Random(0))
    assert 80 <= wait_seconds(outcome) <= 120  # not 60·2^7 s


@pytest.mark.parametrize("code", [131016, None, 131999])
def test_retries_exhausted_fail_the_recipient_with_the_last_reason(code):
    # retry_max_attempts 3: the first send and three retries; the failure of the fourth attempt is final.
    third = decide(failed(code), attempts=3)
    assert third.status == "pending" and third.next_at is not None
    fourth = decide(failed(code), attempts=4)
    assert (fourth.status, fourth.next_at) == ("failed", None)
    assert fourth.message == f"retries exhausted after 4 attempts: error {code}"


@pytest.mark.parametrize(
    ("code", "tries", "retry_after", "seconds"),
    [
        (131056, 0, None, 4),
        (131056, 1, None, 16),
        (131056, 2, None, 64),
        (131056, 3, None, 256),
        (131056, 9, None, 256),  # the pair limit backs off 4^n s, at most 256 s, for this recipient only
        (130429, 0, None, 1),
        (130429, 1, None, 2),
        (130429, 4, None, 16),
        (130429, 9, None, 30),  # 1, 2, 4 … 30 s
        (80007, 2, None, 4),
        (130429, 0, 7.0, 7),
        (131056, 3, 2.5, 2.5),  # Meta's Retry-After wins
    ],
)
def test_a_rate_refusal_waits_longer_each_time_without_spending_attempts(code, tries, retry_after, seconds):
    outcome = decide(failed(code, retry_after=retry_after), rate_tries=tries)
    assert math.isclose(wait_seconds(outcome), seconds, abs_tol=0.01)
    assert (outcome.attempts_delta, outcome.rate_tries) == (-1, tries + 1)


def test_a_campaign_level_error_leaves_the_row_due_for_the_resume_not_failed():
    outcome = decide(failed(190))
    assert (outcome.status, outcome.next_at, outcome.code) == ("pending", None, 190)


def test_a_template_parameter_error_fails_one_recipient_unless_the_batch_showed_the_template_is_wrong():
    assert decide(failed(132000)).status == "failed"
    assert decide(failed(132000), escalate=frozenset({132000})).status == "pending"


def test_a_full_cap_delays_the_row_until_it_frees_or_leaves_it_due_when_the_campaign_pauses():
    waiting = decide(SendResult(7, False, cap_until=CAP_UNTIL))
    assert waiting.next_at.timestamp() == CAP_UNTIL
    pausing = decide(SendResult(7, False, cap_until=CAP_UNTIL, cap_pause=True))
    assert (pausing.status, pausing.next_at) == ("pending", None)


def test_an_unknown_outcome_keeps_what_the_provider_said_and_is_never_resent_blindly():
    outcome = decide(failed(131000, ambiguous=True))
    assert (outcome.status, outcome.next_at, outcome.code) == ("sending", None, 131000)


def test_the_batch_counts_what_its_rows_became():
    outcomes = [
        decide(SendResult(7, True)),
        decide(failed(131026)),
        decide(failed(131016)),
        decide(failed(None, ambiguous=True)),
        decide(None),
        decide(failed(190)),
    ]
    counts = tally(outcomes)
    assert (counts.claimed, counts.sent, counts.failed, counts.retrying, counts.unknown, counts.returned) == (
        6,
        1,
        1,
        2,
        1,
        1,
    )  # the paused row (190) waits like a retry: it carries its attempt's log entry


# -- before sending: who is settled without a request ------------------------------------------------------------


def test_rows_deleted_opted_out_or_unrenderable_settle_before_sending_and_the_rest_are_rendered():
    rows = [
        row(id=1),
        row(id=2, contact_deleted=True),
        row(id=3, opted_out=True),
        row(id=4, name=None),
        row(id=5, attributes=["not", "an", "object"]),
    ]
    messages, settled = prepare(SPEC, rows)
    assert [(m.recipient_id, m.text) for m in messages] == [(1, "Oi Ana")]
    assert [(o.id, o.status, o.skip_reason, o.message) for o in settled] == [
        (2, "skipped", "contact_deleted", None),
        (3, "skipped", "opt_out", None),
        (4, "failed", None, "missing variable contact.name"),
        (5, "failed", None, "cannot render the message: AttributeError"),
    ]
    assert all(o.attempts_delta == -1 for o in settled if o.status == "skipped")  # never attempted


def test_an_opted_out_contact_is_sent_to_when_the_campaign_does_not_respect_opt_outs():
    spec = replace(SPEC, respect_opt_out=False)
    messages, settled = prepare(spec, [row(opted_out=True)])
    assert len(messages) == 1 and settled == []


def test_a_stored_template_campaign_with_malformed_variables_fails_each_recipient_not_the_batch():
    spec = replace(
        SPEC, message_type="template", message_content={"template_name": "promo"}, template_variables={"body": "Ana"}
    )
    messages, settled = prepare(spec, [row(id=1), row(id=2)])
    assert messages == [] and [o.status for o in settled] == ["failed", "failed"]
    assert settled[0].message.startswith("cannot render the message: template_variables.body")


# -- the answer as the database can record it -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "code", "message"),
    [
        (SendResult(7, False, error_code=131026, error_message="undeliverable"), 131026, "undeliverable"),
        (SendResult(7, False, error_code="131026", error_message="x"), 131026, "x"),  # a code sent as text
        (SendResult(7, False, error_code=2**31, error_message="x"), None, "x (code 2147483648)"),  # past int4
        (SendResult(7, False, error_code=-5), None, "code -5"),
        (SendResult(7, False, error_code=True, error_message="x"), None, "x (code True)"),  # no bool is a code
        (SendResult(7, False, error_message="nul\x00 inside"), None, "nul inside"),
        (SendResult(7, False, error_message="\ud800 lone surrogate"), None, "? lone surrogate"),
        (SendResult(7, False, error_message="x" * 5000), None, "x" * MAX_ERROR_TEXT),
    ],
)
def test_any_code_and_text_a_provider_answers_can_be_recorded(answer, code, message):
    cleaned = clean_result(answer)
    assert (cleaned.error_code, cleaned.error_message) == (code, message)


@pytest.mark.parametrize(
    ("message_id", "kept"),
    [
        ("wamid.HBgM", "wamid.HBgM"),
        (123, None),
        ("", None),
        ("   ", None),
        ("x" * 256, None),
        ("a\nb", None),
        ("a\x00b", None),
    ],
)
def test_a_message_id_that_cannot_identify_the_send_is_dropped_and_the_send_still_counts(message_id, kept):
    cleaned = clean_result(SendResult(7, True, message_id=message_id))
    assert (cleaned.ok, cleaned.message_id) == (True, kept)


@pytest.mark.parametrize(
    ("retry_after", "kept"),
    [
        (7.0, 7.0),
        (0, 0),
        (86_400.0, 86_400.0),
        (86_401.0, None),
        (-1.0, None),
        (math.nan, None),
        (math.inf, None),
        ("7", None),
    ],
)
def test_a_retry_after_is_kept_only_when_it_is_a_finite_number_of_seconds_up_to_a_day(retry_after, kept):
    assert clean_result(failed(130429, retry_after=retry_after)).retry_after == kept


def test_a_message_id_answered_for_two_sends_identifies_neither():
    cleaned = clean_results(
        {
            1: SendResult(1, True, message_id="same"),
            2: SendResult(2, True, message_id="same"),
            3: SendResult(3, True, message_id="own"),
            4: None,
        }
    )
    assert {rid: res and res.message_id for rid, res in cleaned.items()} == {1: None, 2: None, 3: "own", 4: None}
    assert all(res.ok for res in cleaned.values() if res)
