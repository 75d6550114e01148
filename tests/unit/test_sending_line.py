"""The run's line of sending figures reads in the campaign's own unit."""

from __future__ import annotations

from flows.send_campaign import sending_line


def test_a_fast_campaign_reads_in_messages_a_second_against_what_its_limits_allow():
    line = sending_line({"sent": 1200, "failed": 3, "retrying": 5}, 10.0, 125.0)
    assert line == "sent 1,200, failed 3, 5 retrying in 10.0 s: 120.0 msg/s, 96% of the 125.0 msg/s the limits allow"


def test_a_paced_campaign_reads_in_messages_an_hour_not_a_rounded_zero_a_second():
    """At the seed's default pace (100 an hour) the limits allow 0.03 msg/s, which read "0.0 msg/s"."""
    line = sending_line({"sent": 1}, 36.0, 100 / 3600)
    assert line == "sent 1, failed 0 in 36.0 s: 100.0 msg/h, 100% of the 100.0 msg/h the limits allow"
