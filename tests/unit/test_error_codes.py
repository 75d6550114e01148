"""Each Graph error code a sender meets, and what the campaign does about it (shared/reference/whatsapp-api.md §3):
retry the message, slow down, fail the recipient, or pause the campaign with a reason an operator can act on."""

from __future__ import annotations

import pytest

from campaigns.sending.error_codes import FailureClass, classify, escalated, pause_reason

TRANSIENT, RATE, RECIPIENT, CAMPAIGN, UNKNOWN = (
    FailureClass.TRANSIENT,
    FailureClass.RATE,
    FailureClass.RECIPIENT,
    FailureClass.CAMPAIGN,
    FailureClass.UNKNOWN,
)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        # RETRY: the same message later, with backoff.
        (None, TRANSIENT),  # no Graph code at all: a connection that failed, a 5xx without a body
        (1, TRANSIENT),
        (2, TRANSIENT),
        (131000, TRANSIENT),
        (131016, TRANSIENT),
        (131057, TRANSIENT),
        (133004, TRANSIENT),
        # BACKOFF: the number's, the account's, the app's or the pair's rate; never a failure of the recipient.
        (4, RATE),
        (80007, RATE),
        (130429, RATE),
        (131056, RATE),
        # FAIL: permanent for this recipient only; the rest of the audience goes on.
        (100, RECIPIENT),
        (130472, RECIPIENT),
        (130497, RECIPIENT),
        (131021, RECIPIENT),
        (131026, RECIPIENT),
        (131047, RECIPIENT),
        (131049, RECIPIENT),
        (131050, RECIPIENT),
        (132005, RECIPIENT),
        (132000, RECIPIENT),
        (132012, RECIPIENT),  # one contact's template parameter (see the escalation below)
        # PAUSE: a human must act (token, permission, number, account, payment, quality, template).
        (0, CAMPAIGN),
        (3, CAMPAIGN),
        (10, CAMPAIGN),
        (33, CAMPAIGN),
        (190, CAMPAIGN),
        (368, CAMPAIGN),
        (200, CAMPAIGN),
        (250, CAMPAIGN),
        (299, CAMPAIGN),  # 200-299: an API permission not granted or removed
        (131005, CAMPAIGN),
        (131031, CAMPAIGN),
        (131037, CAMPAIGN),
        (131042, CAMPAIGN),
        (131045, CAMPAIGN),
        (131048, CAMPAIGN),
        (131064, CAMPAIGN),
        (132001, CAMPAIGN),
        (132015, CAMPAIGN),
        (132016, CAMPAIGN),
        (133000, CAMPAIGN),
        (133010, CAMPAIGN),  # 133010: *our* number is not registered, not the recipient's
        # FIX: a request or template bug that would fail every recipient: pause rather than burn the list.
        (131008, CAMPAIGN),
        (131030, CAMPAIGN),
        (131051, CAMPAIGN),
        (131053, CAMPAIGN),
        (131062, CAMPAIGN),
        (131063, CAMPAIGN),
        (132007, CAMPAIGN),
        (135000, CAMPAIGN),
        # Anything else is unknown: retried a limited number of times, neither paused nor failed at once.
        (199, UNKNOWN),
        (300, UNKNOWN),
        (131999, UNKNOWN),
        (999_999_999, UNKNOWN),
    ],
)
def test_each_graph_code_has_its_class(code, expected):
    assert classify(code) is expected


@pytest.mark.parametrize(
    ("codes", "campaign_level"),
    [
        ([132000, 132000, 132000], {132000}),  # every send of the batch refused alike: the template is wrong
        ([132012] * 100, {132012}),
        ([132000, 132000], set()),  # too few to tell a template from two contacts' values
        ([132000, 132000, 132012], set()),  # different codes: the contacts' values
        ([132000, 132000, None], set()),  # one send went through: the template works
        ([131026] * 5, set()),  # a recipient code is never escalated, however many
        ([], set()),
    ],
)
def test_a_template_parameter_error_on_every_send_of_a_batch_becomes_campaign_level(codes, campaign_level):
    escalate = escalated(codes)
    assert escalate == campaign_level
    if campaign_level:
        assert classify(codes[0], escalate) is CAMPAIGN and classify(codes[0]) is RECIPIENT


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (0, "auth_error"),
        (3, "auth_error"),
        (10, "auth_error"),
        (190, "auth_error"),
        (131005, "auth_error"),
        (200, "auth_error"),
        (299, "auth_error"),
        (131042, "payment"),
        (368, "quality"),
        (131031, "quality"),
        (131048, "quality"),
        (131064, "quality"),
        (132001, "template_paused"),
        (132015, "template_paused"),
        (132016, "template_paused"),
        (131008, "template_error"),
        (132000, "template_error"),
        (132007, "template_error"),
        (132012, "template_error"),
        (33, "provider_error"),
        (133010, "provider_error"),  # campaign-level without a reason of its own
    ],
)
def test_a_paused_campaign_says_why_in_words_an_operator_acts_on(code, reason):
    assert pause_reason(code) == reason
