"""The Redis limiter: exact under concurrency, shared by every caller of a key."""

from __future__ import annotations

import asyncio
import os
import time

import redis.asyncio as aredis

from campaigns.sending.ratelimit import Limit, RateLimiter, campaign_limit, number_limit


def _run(coro):
    return asyncio.run(coro)


def test_eight_concurrent_reservers_never_share_or_crowd_a_slot():
    async def main():
        client = aredis.Redis.from_url(os.environ["REDIS_URL"])
        limiter = RateLimiter(client)
        limit = Limit(f"rl:test:{os.getpid()}:{id(client)}", 10_000.0)  # 100 per second
        got = await asyncio.gather(*[limiter.reserve([limit], 5) for _ in range(8)])
        await client.aclose()
        return sorted(s for r in got for s in r.slots())

    slots = _run(main())
    assert len(slots) == 40
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert min(gaps) >= 0.0099  # 10 ms apart: never two in one slot, never closer than the rate
    assert max(gaps) <= 0.0101


def test_a_campaign_cap_and_a_number_rate_hold_together():
    async def main():
        client = aredis.Redis.from_url(os.environ["REDIS_URL"])
        limiter = RateLimiter(client)
        number = number_limit(f"n{os.getpid()}", 1000, 0.0)
        slow = campaign_limit(f"c{os.getpid()}", None, 0.5)
        fast = campaign_limit(f"f{os.getpid()}", 3_600_000, 0)
        a = await limiter.reserve([number, slow], 3)
        b = await limiter.reserve([number, fast], 3)
        await client.aclose()
        return a, b

    a, b = _run(main())
    assert a.step_s == 0.5  # the campaign's delay between messages wins over the number's 1 ms
    # The fast campaign shares the number: its slots come after the number's last reserved slot.
    assert b.slots()[0] >= a.slots()[-1] + 0.001 - 1e-6


def test_a_paced_campaign_never_holds_its_number_for_the_other_campaigns_on_it():
    """At the seed's default pace (one message every 36 s) a campaign's next slot is far ahead: taking the
    number's slot that far ahead held every other campaign on the number back until then (36 s)."""

    async def main():
        client = aredis.Redis.from_url(os.environ["REDIS_URL"])
        limiter = RateLimiter(client)
        number = number_limit(f"shared{os.getpid()}", 80, 0.0)
        paced = campaign_limit(f"paced{os.getpid()}", 100, 2)
        other = campaign_limit(f"other{os.getpid()}", 100, 2)
        first = await limiter.reserve([number, paced], 1)
        second = await limiter.reserve([number, paced], 1)  # its next message: 36 s on
        meanwhile = await limiter.reserve([number, other], 1)
        await client.aclose()
        return first, second, meanwhile

    first, second, meanwhile = _run(main())
    assert first.count == 1
    assert second.count == 0 and second.start >= first.start + 36 - 1e-6  # nothing reserved; ask again then
    assert meanwhile.count == 1 and meanwhile.start < first.start + 1  # not 36 s later


def test_a_key_redis_lost_goes_on_after_the_slots_already_reserved_on_it():
    """Redis restarted without its data (or flushed) while slots reserved on the key are still being sent:
    the next reservation comes after them, so the number is never asked for more than its rate."""

    async def main():
        client = aredis.Redis.from_url(os.environ["REDIS_URL"])
        limiter = RateLimiter(client)
        limit = Limit(f"rl:test:lost:{os.getpid()}", 100_000.0)  # 10 per second
        before = await limiter.reserve([limit], 20)  # two seconds of sending
        await client.delete(limit.key)  # all Redis knew of it, lost
        after = await limiter.reserve([limit], 5)
        await client.aclose()
        return before, after

    before, after = _run(main())
    assert after.start >= before.slots()[-1] + 0.1 - 1e-6  # was at once: 20 messages in flight at twice the rate


def test_caps_grant_what_every_window_has_room_for_and_say_when_the_full_one_ends():
    from campaigns.sending.ratelimit import number_caps

    async def main():
        client = aredis.Redis.from_url(os.environ["REDIS_URL"])
        limiter = RateLimiter(client)
        caps = number_caps(f"sandbox:caps{os.getpid()}", "meta_cloud", per_minute=None, per_hour=7, per_day=5)
        got = await asyncio.gather(*[limiter.take(caps, 2) for _ in range(8)])  # 8 concurrent takers
        await limiter.refund(caps, 1)
        after_refund = await limiter.take(caps, 3)
        await client.aclose()
        return caps, got, after_refund

    caps, got, after_refund = _run(main())
    assert sum(g.count for g in got) == 5  # the daily cap, exactly, under concurrency
    refused = [g for g in got if g.count == 0]
    assert refused and all(g.cap is caps[1] and g.cap.pause for g in refused)
    day_end = refused[0].until
    assert day_end % 86400 == 0 and 0 < day_end - time.time() <= 86400
    assert after_refund.count == 1  # one given back, one taken again
