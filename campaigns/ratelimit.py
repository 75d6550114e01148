"""Send-time reservations shared through Redis: exact under concurrency, smooth, one call per chunk.

The limiter is GCRA written as virtual scheduling. Each limit (a number's messages per second, a
campaign's messages_per_hour / delay_between_messages_seconds) is a Redis key holding the earliest time
its next message may go (its "TAT"). One Lua script reserves `n` consecutive send slots on every key a
message is subject to, atomically, using Redis' own clock so that every process and machine agrees:

    start = max(now, TAT of each key);  step = the largest interval;  slot i = start + i * step
    each key's TAT becomes start + (n - 1) * step + its own interval

Callers then sleep until each slot, on the wall clock (Redis' TIME; hosts are assumed NTP-synced to
a few milliseconds). Two campaigns on one number interleave their slots; none can take
more than the number's rate, and there is no burst at a window edge because there are no windows.
A chunk is at most ~50 ms of sending, so a pause never strands many reserved slots.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio as aredis

RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local step = 0
for i = 1, #KEYS do
  local iv = tonumber(ARGV[i + 1])
  if iv > step then step = iv end
end
local start = now
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat > start then start = tat end
end
for i = 1, #KEYS do
  local tat = start + (n - 1) * step + tonumber(ARGV[i + 1])
  local ttl = math.ceil((tat - now) / 1000) + 60000
  redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', ttl)
end
return {string.format('%.0f', start), string.format('%.0f', step)}
"""

CHUNK_SECONDS = 0.5


@dataclass(frozen=True)
class Limit:
    key: str
    interval_us: float  # microseconds between two messages under this limit


@dataclass(frozen=True)
class Reservation:
    start: float  # wall-clock time (Redis' clock, Unix seconds) of the first slot
    step_s: float  # between consecutive slots
    count: int

    def slots(self) -> list[float]:
        """Absolute send times. Absolute, so a slow reply cannot shift them later unnoticed."""
        return [self.start + i * self.step_s for i in range(self.count)]


def number_limit(number_id: str, mps: float, headroom: float) -> Limit:
    """A number's throughput, less the headroom kept for replies and other traffic."""
    rate = max(mps * (1 - headroom), 0.001)
    return Limit(f"rl:number:{number_id}", 1_000_000 / rate)


def campaign_limit(campaign_id: str, messages_per_hour: int | None, delay_seconds: float) -> Limit | None:
    """The campaign's own pace across all its batches; None when it sets no cap."""
    interval = max(3600 / messages_per_hour if messages_per_hour else 0.0, delay_seconds)
    return Limit(f"rl:campaign:{campaign_id}", interval * 1_000_000) if interval > 0 else None


def chunk_size(limits: list[Limit], remaining: int) -> int:
    """How many slots to reserve at once: about CHUNK_SECONDS of sending, at least one."""
    step_s = max(limit.interval_us for limit in limits) / 1_000_000
    return max(1, min(remaining, math.floor(CHUNK_SECONDS / step_s) if step_s > 0 else remaining))


class RateLimiter:
    def __init__(self, client: aredis.Redis) -> None:
        self._script = client.register_script(RESERVE)

    async def reserve(self, limits: list[Limit], n: int) -> Reservation:
        if not limits or n <= 0:
            return Reservation(time.time(), 0.0, max(n, 0))
        start_us, step_us = await self._script(
            keys=[limit.key for limit in limits], args=[n, *(f"{limit.interval_us:.3f}" for limit in limits)]
        )
        return Reservation(int(start_us) / 1_000_000, int(step_us) / 1_000_000, n)
