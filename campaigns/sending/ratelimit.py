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
A chunk is at most ~50 ms of sending, so a pause never strands many reserved slots. A campaign whose own
pace puts its next slot more than DEFER_US past what its number allows reserves nothing yet: the number has
one TAT, and a slot taken 36 s ahead (the seed's 100 messages an hour) held every other campaign on that
number back for 36 s. It waits for its turn and asks again.

Redis restarted without its data (or flushed) loses every TAT while the slots already reserved are still
being sent: starting a key again from "now" would ask the number for twice its rate until they are done
(Meta answers 130429). So each limiter remembers the TAT it last saw on each key and passes it along: a key
Redis no longer has goes on from there. One process knows only its own reservations and those made before
its last one; what another process on the same number reserved after that is not known.

Caps (a number's messages per minute, hour or day; Evolution's soft 1,000 an hour) are counters in fixed
UTC windows, taken atomically for a whole chunk by a second script (`TAKE`): it grants as many as every
window still has room for and says when the tightest full window ends. What a chunk took but did not send
is given back. A minute cap (or Evolution's hour) makes the sender wait for the next window; a Meta hour or
day cap pauses the campaign with reason `rate_limit` until that window ends.

When Meta still answers 130429 (its own view of the number's throughput is lower than ours), the number's
rate drops by a tenth (at most once a second, down to an eighth) and recovers 3 s after the last 130429. A
single 130429 is most often a moment's bunching, not a rate too high: a fifth off for 10 s cost a 20-second run
a quarter of its rate; a sustained excess still meets a tenth less every second (bench.throughput --inject-130429).

Why it stays one module (about 410 lines): the Lua scripts and `RateLimiter`, their only caller, share the keys'
layout and the order of their arguments, which only make sense read side by side.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import redis.asyncio as aredis

RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local step = 0
local iv = {}
for i = 1, #KEYS do
  -- a number Meta answered 130429 for runs slower for a while (SLOW_DOWN below)
  iv[i] = tonumber(ARGV[i + 1]) / tonumber(redis.call('GET', KEYS[i] .. ':slow') or '1')
  if iv[i] > step then step = iv[i] end
end
local start = now
local number = now  -- what the first key (the number's) allows
local own = now  -- what the others (the campaign's own pace) allow
for i = 1, #KEYS do
  -- a key Redis lost (restarted without its data, flushed) goes on from the TAT the caller last saw on it
  local tat = tonumber(redis.call('GET', KEYS[i]) or ARGV[#KEYS + i + 1])
  if tat > start then start = tat end
  if i == 1 and tat > number then number = tat end
  if i > 1 and tat > own then own = tat end
end
-- The campaign's own pace puts its next slot far past the number's: reserve nothing (a number slot taken that
-- far ahead would hold back every other campaign on the number until then); the caller waits and asks again
if own - number > tonumber(ARGV[2 * #KEYS + 2]) then
  return {string.format('%.0f', start), string.format('%.0f', step)}
end
local tats = {string.format('%.0f', start), string.format('%.0f', step)}
for i = 1, #KEYS do
  local tat = start + (n - 1) * step + iv[i]
  local ttl = math.ceil((tat - now) / 1000) + 60000
  tats[i + 2] = string.format('%.0f', tat)
  redis.call('SET', KEYS[i], tats[i + 2], 'PX', ttl)
end
return tats
"""

TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local want = tonumber(ARGV[1])
local grant = want
local until_ = 0
local which = 0
local keys = {}
-- windows Redis has no counter for (new, or its state was lost): -1, then each one's index and start; the
-- caller seeds them all from Postgres first
local missing = {-1}
for i = 1, #KEYS do
  local window = tonumber(ARGV[2 * i + 1])
  local bucket = math.floor(now / window)
  if redis.call('EXISTS', KEYS[i] .. ':' .. bucket) == 0 then
    missing[#missing + 1] = i
    missing[#missing + 1] = bucket * window
  end
end
if #missing > 1 then return missing end
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  local bucket = math.floor(now / window)
  keys[i] = KEYS[i] .. ':' .. bucket
  local room = limit - tonumber(redis.call('GET', keys[i]) or '0')
  if room < want then
    if room < grant then grant = math.max(room, 0) end
    if room <= 0 and (bucket + 1) * window > until_ then
      until_ = (bucket + 1) * window
      which = i
    end
  end
end
if grant > 0 then
  for i = 1, #KEYS do
    redis.call('INCRBY', keys[i], grant)
    redis.call('EXPIRE', keys[i], tonumber(ARGV[2 * i + 1]) * 2)
  end
end
return {grant, until_, which}
"""

REFUND = """
local t = redis.call('TIME')
local now = tonumber(t[1])
for i = 1, #KEYS do
  local key = KEYS[i] .. ':' .. math.floor(now / tonumber(ARGV[i + 1]))
  if redis.call('EXISTS', key) == 1 then redis.call('DECRBY', key, ARGV[1]) end
end
return 0
"""

SLOW_DOWN = """
if redis.call('SET', KEYS[1] .. ':slowguard', '1', 'NX', 'PX', ARGV[3]) then
  local f = tonumber(redis.call('GET', KEYS[1] .. ':slow') or '1')
  f = math.max(f * tonumber(ARGV[4]), tonumber(ARGV[1]))
  redis.call('SET', KEYS[1] .. ':slow', tostring(f), 'PX', ARGV[2])
  return {1, tostring(f)}
end
-- within the step: the rate stays, but the recovery counts from this 130429
redis.call('PEXPIRE', KEYS[1] .. ':slow', ARGV[2])
return {0, tostring(redis.call('GET', KEYS[1] .. ':slow') or '1')}
"""
DEFER_US = 1_000_000  # a campaign whose own pace is further ahead than this reserves nothing on its number yet
SLOW_FACTOR = 0.9  # each 130429 takes a tenth off the number's rate (one costs 2-4% of a run, not 25%)
SLOW_FLOOR = 0.125  # never below an eighth of the number's rate
SLOW_FOR_MS = 3_000  # back to the full rate after 3 s without a 130429
SLOW_STEP_MS = 1_000  # at most once a second: a burst of 130429s is one signal, not twenty

ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[2])
-- KEYS[2] marks the window as built: without it (Redis lost its state) the caller rebuilds it from Postgres
if redis.call('EXISTS', KEYS[2]) == 0 then return {-1, string.format('%.3f', now - window)} end
local limit = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local admitted = 0
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], now, ARGV[i])
  elseif count < limit then
    redis.call('ZADD', KEYS[1], now, ARGV[i])
    count = count + 1
  else
    break
  end
  admitted = admitted + 1
end
redis.call('EXPIRE', KEYS[1], window + 60)
local until_ = 0
if admitted < #ARGV - 2 then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  until_ = tonumber(oldest[2]) + window
end
return {admitted, string.format('%.3f', until_)}
"""
PORTFOLIO_WINDOW_S = 86400
PORTFOLIO_TIERS = (250, 2_000, 10_000, 100_000)  # Meta's messaging limits; None = unlimited

CHUNK_SECONDS = 0.5
WINDOWS = {"minute": 60, "hour": 3600, "day": 86400}
LABELS = {"minute": "per-minute", "hour": "hourly", "day": "daily"}
META_CONSERVATIVE: dict[str, int | None] = {
    "per_minute": 20,
    "per_hour": 100,
    "per_day": 500,
}  # the seed's figures, as a preset
PRESETS: dict[str, dict[str, int | None]] = {
    "meta-conservative": META_CONSERVATIVE,
    "none": {"per_minute": None, "per_hour": None, "per_day": None},
}
EVOLUTION_INTERVAL_S = 0.5  # Evolution (WhatsApp Web): one message every 500 ms per instance
EVOLUTION_SOFT_PER_HOUR = 1000


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


@dataclass(frozen=True)
class Cap:
    key: str  # without the window suffix
    limit: int
    window_s: int
    pause: bool  # True: the campaign pauses until the window ends; False: the sender waits for it
    label: str  # "daily cap of 500 messages"
    number: str = ""  # the physical number (number_key) whose sends it counts


@dataclass(frozen=True)
class Grant:
    count: int
    until: float = 0.0  # when a window is full: when the latest full window ends (Unix seconds)
    cap: Cap | None = None  # that window's cap


@dataclass(frozen=True)
class PortfolioLimit:
    """Meta's messaging limit: unique recipients per moving 24 h across a business portfolio's numbers."""

    key: str
    limit: int

    @property
    def cap(self) -> Cap:  # how a refusal is reported: it pauses, like an hourly or daily cap
        return Cap(
            self.key,
            self.limit,
            PORTFOLIO_WINDOW_S,
            True,
            f"business portfolio limit of {self.limit} unique recipients per 24 h",
        )


def portfolio_limit(portfolio_id: object | None, limit: int | None) -> PortfolioLimit | None:
    return PortfolioLimit(f"pf:{portfolio_id}", limit) if portfolio_id and limit else None


class LimitUsage:
    """What the shared limits have used so far, read for the preflight (a sync client)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def portfolio(self, limit: PortfolioLimit) -> int:
        """Unique recipients in the last 24 h."""
        return int(self.client.zcount(limit.key, time.time() - PORTFOLIO_WINDOW_S, "+inf"))

    def caps(self, caps: list[Cap]) -> list[tuple[int, int]]:
        """Messages counted in each cap's current window, and when that window ends (Unix s), on Redis'
        clock as TAKE reads them."""
        if not caps:
            return []
        now = int(self.client.time()[0])
        buckets = [now // cap.window_s for cap in caps]
        used = self.client.mget([f"{cap.key}:{b}" for cap, b in zip(caps, buckets, strict=True)])
        return [(int(u or 0), (b + 1) * cap.window_s) for cap, b, u in zip(caps, buckets, used, strict=True)]


def number_key(provider: str, phone_number_id: str) -> str:
    """The physical number, not our row: the same number registered by two organizations shares one budget."""
    return f"{provider}:{phone_number_id}"


def number_limit(key: str, mps: float, headroom: float, provider: str = "meta_cloud") -> Limit:
    """A number's throughput, less the headroom kept for replies and other traffic."""
    rate = max(mps * (1 - headroom), 0.001)
    if provider == "evolution":
        rate = min(rate, 1 / EVOLUTION_INTERVAL_S)
    return Limit(f"rl:number:{key}", 1_000_000 / rate)


def number_caps(
    key: str, provider: str, per_minute: int | None, per_hour: int | None, per_day: int | None
) -> list[Cap]:
    """The number's caps. Meta's hour and day caps pause; Evolution never pauses, it waits."""
    if provider == "evolution" and per_hour is None:
        per_hour = EVOLUTION_SOFT_PER_HOUR
    caps = []
    for name, limit in (("minute", per_minute), ("hour", per_hour), ("day", per_day)):
        if limit:
            pause = name != "minute" and provider != "evolution"
            label = f"{LABELS[name]} cap of {limit} messages"
            caps.append(Cap(f"cap:{key}:{name}", limit, WINDOWS[name], pause, label, number=key))
    return caps


def caps_of_number(number: dict[str, Any]) -> list[Cap]:
    """The caps of a `whatsapp_numbers` row (with its provider and phone_number_id)."""
    return number_caps(
        number_key(number["provider"], number["phone_number_id"]),
        number["provider"],
        number.get("per_minute"),
        number.get("per_hour"),
        number.get("per_day"),
    )


def campaign_limit(campaign_id: str, messages_per_hour: int | None, delay_seconds: float) -> Limit | None:
    """The campaign's own pace across all its batches; None when it sets no cap."""
    interval = max(3600 / messages_per_hour if messages_per_hour else 0.0, delay_seconds)
    return Limit(f"rl:campaign:{campaign_id}", interval * 1_000_000) if interval > 0 else None


def chunk_size(limits: list[Limit], remaining: int) -> int:
    """How many slots to reserve at once: about CHUNK_SECONDS of sending, at least one."""
    step_s = max(limit.interval_us for limit in limits) / 1_000_000
    return max(1, min(remaining, math.floor(CHUNK_SECONDS / step_s) if step_s > 0 else remaining))


class History(Protocol):
    """Where the caps and the portfolio window are rebuilt from when Redis has lost them (limit_history)."""

    def caps_used(self, number_key: str, since: list[float]) -> list[int]: ...
    def portfolio_used(self, portfolio_id: str, since: float) -> dict[str, float]: ...


class RateLimiter:
    def __init__(self, client: aredis.Redis, history: History | None = None) -> None:
        self._client, self._history = client, history
        self._script = client.register_script(RESERVE)
        self._take = client.register_script(TAKE)
        self._slow = client.register_script(SLOW_DOWN)
        self._admit = client.register_script(ADMIT)
        self._refund = client.register_script(REFUND)
        self._tats: dict[str, int] = {}  # the TAT (Redis' clock, µs) last seen on each key: see the module doc

    async def reserve(self, limits: list[Limit], n: int) -> Reservation:
        """`n` consecutive slots on every limit (the number's first). A reservation of no slots (count 0) says
        the campaign's own pace allows its next message only at `start`, over DEFER_US past what the number
        allows: the caller waits until then and asks again."""
        if not limits or n <= 0:
            return Reservation(time.time(), 0.0, max(n, 0))
        keys = [limit.key for limit in limits]
        intervals = [f"{limit.interval_us:.3f}" for limit in limits]
        last_seen = [self._tats.get(key, 0) for key in keys]
        start_us, step_us, *tats = await self._script(keys=keys, args=[n, *intervals, *last_seen, DEFER_US])
        if not tats:  # deferred: nothing reserved before `start`
            return Reservation(int(start_us) / 1_000_000, int(step_us) / 1_000_000, 0)
        self._remember(dict(zip(keys, map(int, tats), strict=True)))
        return Reservation(int(start_us) / 1_000_000, int(step_us) / 1_000_000, n)

    def _remember(self, tats: dict[str, int]) -> None:
        """Keep each key's latest TAT (replies of concurrent calls may come back out of order) while it is
        ahead: one already past adds nothing to "now" if Redis loses the key."""
        now_us = time.time() * 1_000_000
        latest = {key: max(tat, self._tats.get(key, 0)) for key, tat in tats.items()}
        self._tats = {key: tat for key, tat in {**self._tats, **latest}.items() if tat > now_us}

    async def slow_down(self, limit: Limit) -> tuple[bool, float]:
        """Meta said 130429 (throughput): slow this number down by SLOW_FACTOR, down to SLOW_FLOOR; it
        recovers by itself SLOW_FOR_MS after the last one. Returns whether this call lowered the rate (at
        most once per SLOW_STEP_MS) and the factor now in force."""
        changed, factor = await self._slow(keys=[limit.key], args=[SLOW_FLOOR, SLOW_FOR_MS, SLOW_STEP_MS, SLOW_FACTOR])
        return bool(changed), float(factor)

    async def admit(self, portfolio: PortfolioLimit, phones: list[str]) -> Grant:
        """Admit phones in order while the portfolio's 24 h window has room; a phone already in the window
        costs nothing. When one does not fit: the count admitted and when the oldest recipient leaves."""
        if not phones:
            return Grant(0)
        while True:
            count, until = await self._admit(
                keys=[portfolio.key, f"{portfolio.key}:built"], args=[portfolio.limit, PORTFOLIO_WINDOW_S, *phones]
            )
            if int(count) >= 0:
                break
            await self._rebuild_portfolio(portfolio, float(until))
        return Grant(int(count), float(until), portfolio.cap if int(count) < len(phones) else None)

    async def take(self, caps: list[Cap], n: int) -> Grant:
        """Take up to `n` messages from every cap's current window at once (the caps of one number)."""
        if not caps or n <= 0:
            return Grant(max(n, 0))
        args: list[int] = [n]
        for cap in caps:
            args += [cap.limit, cap.window_s]
        while True:
            answer = await self._take(keys=[cap.key for cap in caps], args=args)
            if int(answer[0]) >= 0:
                break
            missing = zip(answer[1::2], answer[2::2], strict=True)
            await self._seed_caps({caps[int(i) - 1]: int(start) for i, start in missing})
        count, until, which = map(int, answer)
        return Grant(count, float(until), caps[which - 1] if which else None)

    async def refund(self, caps: list[Cap], n: int) -> None:
        """Give back what was taken but not sent (a pause, a late slot), if its window is still current."""
        if caps and n > 0:
            await self._refund(keys=[cap.key for cap in caps], args=[n, *(cap.window_s for cap in caps)])

    async def _seed_caps(self, windows: dict[Cap, int]) -> None:
        """Caps' windows (and when each started) with no counter: start each at what Postgres says the number
        sent in it, read in one query (NX: a concurrent seeder or taker that came first wins)."""
        used = [0] * len(windows)
        if self._history:
            number = next(iter(windows)).number
            used = await asyncio.to_thread(self._history.caps_used, number, [float(s) for s in windows.values()])
        async with self._client.pipeline(transaction=False) as pipe:  # one round trip for all the windows
            for (cap, start), count in zip(windows.items(), used, strict=True):
                pipe.set(f"{cap.key}:{start // cap.window_s}", count, nx=True, ex=cap.window_s * 2)
            await pipe.execute()

    async def _rebuild_portfolio(self, portfolio: PortfolioLimit, since: float) -> None:
        """The portfolio's 24 h window is gone from Redis: put back each recipient messaged in it, at the time
        of its last message (GT: never move a newer entry back), then mark the window built."""
        used = {}
        if self._history:
            used = await asyncio.to_thread(self._history.portfolio_used, portfolio.key.removeprefix("pf:"), since)
        if used:
            await self._client.zadd(portfolio.key, used, gt=True)
            await self._client.expire(portfolio.key, PORTFOLIO_WINDOW_S + 60)
        await self._client.set(f"{portfolio.key}:built", 1, ex=PORTFOLIO_WINDOW_S)
