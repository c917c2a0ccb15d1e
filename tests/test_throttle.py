"""Rate limits: the same rules in Redis (shared by processes) and in memory."""

from __future__ import annotations

import multiprocessing
import time
import uuid

import pytest
import redis

from outreach.throttle import Limits, LocalThrottle, RedisThrottle, acquire

REDIS = "redis://127.0.0.1:6379/14"


def _granted_in(seconds: float, account: str, limits: Limits) -> list[float]:
    throttle, times, start = RedisThrottle(REDIS), [], time.time()
    while time.time() - start < seconds:
        if acquire(throttle, account, limits, max_wait=seconds):
            times.append(time.time())
    return times


def _worker(account: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(_granted_in(2.0, account, Limits(second=5)))


def test_per_second_rate_holds_across_processes() -> None:
    account = f"test-{uuid.uuid4().hex}"
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [multiprocessing.Process(target=_worker, args=(account, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    times = sorted(t for _ in procs for t in queue.get(timeout=30))
    for p in procs:
        p.join()
    assert len(times) >= 9  # three processes, each asking for two seconds
    assert (len(times) - 1) / (times[-1] - times[0]) <= 5.2  # 5 a second between them all
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) > 0.15  # evenly spaced (0.2 s), not bursts


def test_minute_cap_and_the_wait_it_reports() -> None:
    throttle, account = RedisThrottle(REDIS), f"test-{uuid.uuid4().hex}"
    limits = Limits(minute=3)
    assert [throttle.take(account, limits) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = throttle.take(account, limits)
    assert 0 < wait <= 60
    assert not acquire(throttle, account, limits, max_wait=0.1)


def test_local_throttle_spaces_tokens() -> None:
    now = [1000.0]
    throttle = LocalThrottle(clock=lambda: now[0])
    limits = Limits(second=2, day=3)
    assert throttle.take("a", limits) == 0.0
    assert throttle.take("a", limits) == pytest.approx(0.5)
    now[0] += 0.5
    assert throttle.take("a", limits) == 0.0
    now[0] += 0.5
    assert throttle.take("a", limits) == 0.0
    now[0] += 0.5
    assert throttle.take("a", limits) > 3600  # the day's three are used


def test_campaign_limits_only_lower_the_account_limits() -> None:
    account = Limits(second=10, day=1000)
    assert account.tighter({"second": 2}) == Limits(second=2, day=1000)
    assert account.tighter({"second": 50, "hour": 100}) == Limits(second=10, hour=100, day=1000)
    assert account.tighter(None) == account
    assert Limits().unlimited


@pytest.fixture(autouse=True)
def _clean_redis() -> None:
    redis.Redis.from_url(REDIS).flushdb()
