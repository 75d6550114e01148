"""The one-line funnel that ends a campaign's run (its state's message and its last log line)."""

from __future__ import annotations

import pytest

from campaigns.reporting.run_report import funnel_line

BODY = {
    "messages_sent": 2,
    "messages_delivered": 0,
    "delivery_rate": 0.0,
    "messages_read": 0,
    "read_rate": 0.0,
    "messages_replied": 0,
    "reply_rate": 0.0,
    "messages_failed": 0,
    "messages_skipped": 0,
    "messages_pending": 0,
    "messages_cancelled": 0,
}


@pytest.mark.parametrize(
    ("awaiting", "said"),
    [(2, "2 awaiting their status (the summary follows them)"), (0, None)],
)
def test_a_run_that_ends_before_its_statuses_arrive_says_they_are_on_their_way(awaiting, said):
    """A run's final message is written when the last send is answered, before the delivered statuses come:
    "0 delivered" alone reads as a failed delivery."""
    line = funnel_line({**BODY, "awaiting_status": awaiting})
    assert line.startswith("2 sent, 0 delivered (0.0%)")
    assert (said in line) if said else ("awaiting" not in line)
