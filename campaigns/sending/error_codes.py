"""Failure classes of provider errors, by Graph error `code` (never by HTTP status).

The table follows shared/reference/whatsapp-api.md §3. An unknown code is treated as transient with a
limited number of attempts (the safe class: it neither burns the audience nor drops the recipient) and
its body is logged by the caller.
"""

from __future__ import annotations

from enum import StrEnum


class FailureClass(StrEnum):
    TRANSIENT = "transient"  # retry the same message later with backoff
    RATE = "rate"  # slow down and retry the same message
    RECIPIENT = "recipient"  # permanent for this recipient
    CAMPAIGN = "campaign"  # pause the campaign: a human must act
    UNKNOWN = "unknown"


TRANSIENT_CODES = frozenset({1, 2, 131000, 131016, 131057, 133004})
# The provider itself could not take the request (downtime, overload, maintenance): for one recipient a
# transient failure like any other, for every send of a campaign in a row an outage (sending.deliver).
UNAVAILABLE_CODES = frozenset({2, 131016, 131057, 133004})
OPTED_OUT = 131050  # the user stopped marketing messages: record the opt-out, never resend
PAIR_LIMIT = 131056  # too many messages to this one recipient: only it waits
THROUGHPUT_CODES = frozenset({130429, 80007, 4})  # the number's, the account's or the app's rate: slow down

RATE_CODES = THROUGHPUT_CODES | {PAIR_LIMIT}
# Template parameter errors: one contact's value (too long, a newline) fails only that recipient; the
# same error for every recipient of a batch means the template itself is wrong (see `escalated`).
TEMPLATE_PARAM_CODES = frozenset({132000, 132012})
RECIPIENT_CODES = frozenset(
    {100, 130472, 130497, 131021, 131026, 131047, 131049, 131050, 132005, *TEMPLATE_PARAM_CODES}
)
CAMPAIGN_CODES = frozenset(
    {
        0,
        3,
        10,
        33,
        190,
        368,
        131005,
        131008,
        131030,
        131031,
        131037,
        131042,
        131045,
        131048,
        131051,
        131053,
        131062,
        131063,
        131064,
        132001,
        132007,
        132015,
        132016,
        133000,
        133010,
        135000,
    }
)
ALIKE_MIN = 3  # failures of one batch, all with the same template parameter code, that pause the campaign

# Why a campaign-level code pauses the campaign (the operator reads this).
PAUSE_REASONS: dict[int, str] = {
    0: "auth_error",
    190: "auth_error",
    10: "auth_error",
    3: "auth_error",
    131005: "auth_error",
    131042: "payment",
    131048: "quality",
    368: "quality",
    131031: "quality",
    131064: "quality",
    132001: "template_paused",
    132015: "template_paused",
    132016: "template_paused",
    132000: "template_error",
    132012: "template_error",
    132007: "template_error",
    131008: "template_error",
}

# Codes that may mean the message was accepted anyway: reconcile before resending.
AMBIGUOUS_CODES = frozenset({131000})


def classify(code: int | None, escalate: frozenset[int] = frozenset()) -> FailureClass:
    """`escalate`: codes a batch showed to be campaign-level (see `escalated`)."""
    if code in escalate:
        return FailureClass.CAMPAIGN
    if code is None:
        return FailureClass.TRANSIENT
    if code in TRANSIENT_CODES:
        return FailureClass.TRANSIENT
    if code in RATE_CODES:
        return FailureClass.RATE
    if code in RECIPIENT_CODES:
        return FailureClass.RECIPIENT
    if code in CAMPAIGN_CODES or 200 <= code <= 299:
        return FailureClass.CAMPAIGN
    return FailureClass.UNKNOWN


def escalated(codes: list[int | None]) -> frozenset[int]:
    """The template parameter code to treat as campaign-level: when every send of a batch (at least
    ALIKE_MIN) failed with that same code."""
    if len(codes) >= ALIKE_MIN and len(set(codes)) == 1 and codes[0] in TEMPLATE_PARAM_CODES:
        return frozenset({codes[0]})
    return frozenset()


def pause_reason(code: int) -> str:
    if 200 <= code <= 299:
        return "auth_error"
    return PAUSE_REASONS.get(code, "provider_error")
