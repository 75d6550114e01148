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

from campaigns.ratelimit import Limit, RateLimiter, chunk_size

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


async def main() -> None:
    client = aredis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    limiter = RateLimiter(client)
    one = await cost(limiter, 1)
    chunked = await cost(limiter, 48)
    print(f"limiter cost, {SENDERS} concurrent callers: {one:.1f} µs per message reserving one slot per call; "
          f"{chunked:.2f} µs per message in chunks of 48 (what a 1,000 msg/s number uses)")
    rate = 1000.0
    n, reserved, actual = await accuracy(limiter, rate, 10.0)
    print(f"accuracy, {SENDERS} senders sharing {rate:.0f} msg/s for 10 s: {n} slots; largest 1-s window "
          f"{reserved} reserved (limit {rate:.0f}, overshoot {max(0, reserved - rate):.0f}), "
          f"{actual} by actual wake-up time (overshoot {max(0, actual - rate):.0f})")
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
