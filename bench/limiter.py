"""The Redis limiter: cost per message and accuracy with 8 concurrent senders on one number.

Cost: reservations per second from 8 concurrent callers, one slot each and in chunks, against the
machine's Redis. Accuracy: 8 senders share a 1,000 msg/s number for 10 s, each reserving chunks and
sleeping to its slots; the largest count in any sliding one-second window, over the reserved slots and
over the moments the senders actually woke, against the limit.

    uv run python -m bench.limiter
"""

from __future__ import annotations

import asyncio
import bisect
import os
import time
import uuid

import redis.asyncio as aredis

from campaigns.sending.ratelimit import Limit, PortfolioLimit, RateLimiter, chunk_size, number_caps

SENDERS = 8


def max_window(times: list[float], width: float = 1.0) -> int:
    times = sorted(times)
    return max((bisect.bisect_left(times, t + width) - i for i, t in enumerate(times)), default=0)


async def cost(limiter: RateLimiter, per_call: int, seconds: float = 3.0) -> float:
    limit = Limit(f"rl:bench:{uuid.uuid4()}", 1.0)  # 1 µs apart: never the bottleneck
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await limiter.reserve([limit], per_call)
            done += per_call

    start = time.perf_counter()
    await asyncio.gather(*[caller() for _ in range(SENDERS)])
    return (time.perf_counter() - start) / done * 1e6


async def accuracy(limiter: RateLimiter, rate: float, seconds: float) -> tuple[int, int, int]:
    limit = Limit(f"rl:bench:{uuid.uuid4()}", 1_000_000 / rate)
    slots: list[float] = []
    woke: list[float] = []
    deadline = time.time() + seconds

    async def sender() -> None:
        while time.time() < deadline:
            reservation = await limiter.reserve([limit], chunk_size([limit], 100))
            for when in reservation.slots():
                if when > time.time():
                    await asyncio.sleep(when - time.time())
                slots.append(when)
                woke.append(time.time())

    await asyncio.gather(*[sender() for _ in range(SENDERS)])
    return len(slots), max_window(slots), max_window(woke)


async def caps(limiter: RateLimiter, cap: int = 5000, per_call: int = 48) -> tuple[float, int]:
    """8 concurrent takers on a number with minute, hour and day caps, until the day's cap is full:
    microseconds per message taken, and how many were granted in all (the cap, exactly, or an overshoot)."""
    number_caps_ = number_caps(f"bench:{uuid.uuid4()}", "meta_cloud", 10**9, 10**9, cap)
    granted = 0

    async def taker() -> None:
        nonlocal granted
        while True:
            grant = await limiter.take(number_caps_, per_call)
            granted += grant.count
            if grant.count < per_call:
                return

    start = time.perf_counter()
    await asyncio.gather(*[taker() for _ in range(SENDERS)])
    return (time.perf_counter() - start) / granted * 1e6, granted


async def portfolio(limiter: RateLimiter, limit: int = 10_000, per_call: int = 48) -> tuple[float, int]:
    """8 concurrent senders admitting distinct phones into a portfolio's 24 h window until it is full."""
    pf = PortfolioLimit(f"pf:bench:{uuid.uuid4()}", limit)
    admitted = 0
    counter = iter(range(10**9))

    async def sender() -> None:
        nonlocal admitted
        while True:
            phones = [f"+5511{next(counter):09d}" for _ in range(per_call)]
            grant = await limiter.admit(pf, phones)
            admitted += grant.count
            if grant.count < per_call:
                return

    start = time.perf_counter()
    await asyncio.gather(*[sender() for _ in range(SENDERS)])
    return (time.perf_counter() - start) / admitted * 1e6, admitted


async def main() -> None:
    client = aredis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    limiter = RateLimiter(client)
    one = await cost(limiter, 1)
    chunked = await cost(limiter, 48)
    print(
        f"limiter cost, {SENDERS} concurrent callers: {one:.1f} µs per message reserving one slot per call; "
        f"{chunked:.2f} µs per message in chunks of 48 (what a 1,000 msg/s number uses)"
    )
    rate = 1000.0
    n, reserved, actual = await accuracy(limiter, rate, 10.0)
    print(
        f"accuracy, {SENDERS} senders sharing {rate:.0f} msg/s for 10 s: {n} slots; largest 1-s window "
        f"{reserved} reserved (limit {rate:.0f}, overshoot {max(0, reserved - rate):.0f}), "
        f"{actual} by actual wake-up time (overshoot {max(0, actual - rate):.0f})"
    )
    per_msg, granted = await caps(limiter)
    print(
        f"caps (minute + hour + day windows), {SENDERS} concurrent takers in chunks of 48: {per_msg:.2f} µs per "
        f"message; granted {granted} against a daily cap of 5000 (overshoot {max(0, granted - 5000)})"
    )
    per_phone, admitted = await portfolio(limiter)
    print(
        f"portfolio window, {SENDERS} concurrent senders in chunks of 48 new phones: {per_phone:.2f} µs per "
        f"recipient; admitted {admitted} against a limit of 10000 (overshoot {max(0, admitted - 10000)})"
    )
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
