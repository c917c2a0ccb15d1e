"""Sending rates shared by every worker: per SMTP account, per second, minute, hour and day.

Providers cap an account, not a process, so the counters live in Redis when there is one (every
worker on every machine takes its tokens from the same place); the embedded default, one worker
in one process, keeps them in memory. The per-second rate is a GCRA (messages evenly spaced, no
bursts); minutes, hours and days are fixed windows on the Redis server's clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis

WINDOWS = (("minute", 60), ("hour", 3600), ("day", 86400))


@dataclass(frozen=True)
class Limits:
    """Messages allowed per second, minute, hour and day; 0 means no limit."""

    second: float = 0
    minute: int = 0
    hour: int = 0
    day: int = 0

    @property
    def unlimited(self) -> bool:
        return not (self.second or self.minute or self.hour or self.day)

    def tighter(self, other: dict[str, Any] | None) -> Limits:
        """These limits, lowered where `other` (a campaign's own) is lower."""
        if not other:
            return self
        merged = {}
        for name in ("second", "minute", "hour", "day"):
            mine, theirs = getattr(self, name), other.get(name) or 0
            merged[name] = min(v for v in (mine, theirs) if v) if (mine or theirs) else 0
        return Limits(**merged)

    def describe(self) -> str:
        parts = [f"{getattr(self, n):g}/{n}" for n in ("second", "minute", "hour", "day")]
        return ", ".join(p for p in parts if not p.startswith("0/")) or "no limit"


class Throttle(Protocol):
    def take(self, account: str, limits: Limits) -> float:
        """Take one token: 0.0 if granted now, else the seconds to wait before asking again."""
        ...


_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local prefix = KEYS[1]
local interval = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local size, limit = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local slot = math.floor(now / size)
  local used = tonumber(redis.call('GET', prefix .. ':' .. size .. ':' .. slot) or '0')
  if used >= limit then return tostring((slot + 1) * size - now) end
end
if interval > 0 then
  local tat = tonumber(redis.call('GET', prefix .. ':tat') or '0')
  if tat > now then return tostring(tat - now) end
  local ttl = math.ceil(interval * 1000) + 1000
  redis.call('SET', prefix .. ':tat', tostring(now + interval), 'PX', ttl)
end
for i = 2, #ARGV, 2 do
  local size = tonumber(ARGV[i])
  local key = prefix .. ':' .. size .. ':' .. math.floor(now / size)
  redis.call('INCR', key)
  redis.call('EXPIRE', key, size + 60)
end
return '0'
"""


class RedisThrottle:
    """Tokens from Redis, atomically (one Lua script), on the Redis server's clock."""

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url)
        self._script = self._redis.register_script(_SCRIPT)

    def take(self, account: str, limits: Limits) -> float:
        args: list[float] = [1 / limits.second if limits.second else 0]
        for name, size in WINDOWS:
            if getattr(limits, name):
                args += [size, getattr(limits, name)]
        return float(self._script(keys=[f"outreach:rate:{account}"], args=args))


class LocalThrottle:
    """The same rules in memory, for one process (the embedded default)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}
        self._used: dict[tuple[str, int, int], int] = {}

    def take(self, account: str, limits: Limits) -> float:
        with self._lock:
            now = self._clock()
            windows = [(size, getattr(limits, name)) for name, size in WINDOWS]
            for size, limit in windows:
                slot = int(now // size)
                if limit and self._used.get((account, size, slot), 0) >= limit:
                    return (slot + 1) * size - now
            if limits.second:
                tat = self._tat.get(account, 0.0)
                if tat > now:
                    return tat - now
                self._tat[account] = now + 1 / limits.second
            for size, limit in windows:
                if limit:
                    key = (account, size, int(now // size))
                    self._used[key] = self._used.get(key, 0) + 1
            return 0.0


def acquire(
    throttle: Throttle,
    account: str,
    limits: Limits,
    *,
    max_wait: float,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait for a token, at most `max_wait` seconds; False if none came (a day's cap reached)."""
    if limits.unlimited:
        return True
    waited = 0.0
    while True:
        wait = throttle.take(account, limits)
        if wait <= 0:
            return True
        if waited + wait > max_wait:
            return False
        sleep(wait)
        waited += wait
