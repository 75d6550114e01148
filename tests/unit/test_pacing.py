"""How fast a campaign may send: the number's rate less the headroom, its caps per minute, hour and day, the
campaign's own pace, and how much is reserved or claimed at once (campaigns/sending/ratelimit.py, the arithmetic
only; the Redis limiter itself is tested against Redis in tests/test_ratelimit.py)."""

from __future__ import annotations

import uuid

import pytest

from campaigns.reporting.stats import limit_rate
from campaigns.sending.ratelimit import Limit, campaign_limit, chunk_size, number_caps, number_limit
from campaigns.sending.spec import CampaignSpec


@pytest.mark.parametrize(
    ("mps", "headroom", "provider", "interval_us"),
    [
        (80, 0.0, "meta_cloud", 12_500),  # Meta's default 80 msg/s
        (80, 0.2, "meta_cloud", 15_625),  # 20% kept for replies: 64 msg/s
        (1000, 0.0, "meta_cloud", 1_000),
        (80, 0.04, "evolution", 500_000),  # Evolution: 500 ms between messages, whatever the number says
        (1, 0.0, "evolution", 1_000_000),
    ],
)
def test_a_numbers_pace_is_its_rate_less_the_headroom(mps, headroom, provider, interval_us):
    assert number_limit("n", mps, headroom, provider).interval_us == pytest.approx(interval_us)


@pytest.mark.parametrize(
    ("per_hour", "delay", "interval_s"),
    [
        (100, 0, 36.0),  # the seed's default: 100 an hour
        (3600, 0, 1.0),
        (3600, 2.5, 2.5),  # the slower of the two wins
        (None, 0.25, 0.25),
        (None, 0, None),  # no pace of its own: only the number's
    ],
)
def test_a_campaigns_own_pace_is_the_slower_of_its_hourly_cap_and_its_delay(per_hour, delay, interval_s):
    limit = campaign_limit("c", per_hour, delay)
    assert (limit and limit.interval_us / 1_000_000) == interval_s


def test_meta_hour_and_day_caps_pause_the_campaign_a_minute_cap_waits_and_evolution_never_pauses():
    minute, hour, day = number_caps("meta_cloud:1", "meta_cloud", 20, 100, 500)
    assert [(c.limit, c.window_s, c.pause) for c in (minute, hour, day)] == [
        (20, 60, False),
        (100, 3600, True),
        (500, 86400, True),
    ]
    assert hour.label == "hourly cap of 100 messages"
    assert number_caps("meta_cloud:1", "meta_cloud", None, None, None) == []
    [soft] = number_caps("evolution:loja", "evolution", None, None, None)  # Evolution's soft 1,000 an hour
    assert (soft.limit, soft.window_s, soft.pause) == (1000, 3600, False)
    assert all(not cap.pause for cap in number_caps("evolution:loja", "evolution", 20, 100, 500))


@pytest.mark.parametrize(
    ("interval_us", "remaining", "chunk"),
    [
        (2_000_000, 100, 1),  # one message every 2 s: one slot at a time
        (1_000, 100, 100),  # 1,000 msg/s: the whole batch
        (1_000, 3, 3),  # never more than what is left
        (10_000, 1000, 50),  # half a second of sending at once
    ],
)
def test_slots_are_reserved_a_fraction_of_a_second_at_a_time(interval_us, remaining, chunk):
    assert chunk_size([Limit("a", 1_000), Limit("b", interval_us)], remaining) == chunk


@pytest.mark.parametrize(
    ("per_hour", "delay", "mps", "claimed"),
    [
        (None, 0, 80, 100),  # fast: a whole batch
        (3600, 0, 80, 30),  # one a second: 30 s of sending
        (100, 0, 80, 1),  # one every 36 s: one row at a time, none waits long claimed
        (None, 2, 80, 15),
    ],
)
def test_a_batch_claims_at_most_thirty_seconds_of_sending_at_the_campaigns_pace(per_hour, delay, mps, claimed):
    spec = CampaignSpec(
        uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "text", {"text": "x"}, {}, True, per_hour, delay, 3, 60, 3600, mps
    )
    assert spec.claim_size(batch_size=100, headroom=0.04) == claimed


def test_the_estimate_counts_the_slowest_limit_in_force():
    campaign = {"messages_per_hour": None, "delay_between_messages_seconds": 0}
    number = {"mps": 80, "provider": "meta_cloud", "per_minute": None, "per_hour": None, "per_day": 500}
    assert limit_rate(campaign, number, 0.04) == 500 / 86400  # the daily cap, not 76.8 msg/s
    assert limit_rate(campaign, {**number, "per_day": None}, 0.04) == 80 * 0.96
    assert limit_rate({**campaign, "messages_per_hour": 100}, {**number, "per_day": None}, 0) == 100 / 3600
    assert limit_rate(campaign, {**number, "provider": "evolution", "per_day": None}, 0) == 1000 / 3600
