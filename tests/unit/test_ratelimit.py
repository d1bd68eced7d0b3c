"""The shared rate limiter against a real Redis: its limit holds across threads and processes."""
from __future__ import annotations

import multiprocessing
import threading
import time
import uuid

import pytest
import redis

from shared.core.errors import RateLimitError
from shared.redis.ratelimit import Adaptive, RateLimiter

RATE = 20.0
P = f"tx{uuid.uuid4().hex[:8]}"  # this run's own keys


def test_try_acquire_grants_the_burst_then_reports_the_wait(redis_client):
    limiter = RateLimiter(redis_client, "t1", RATE, burst=3, prefix=P)
    assert [limiter.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.try_acquire()
    assert 0 < wait <= 1 / RATE
    assert limiter.try_acquire() == pytest.approx(wait, abs=0.01)  # a refusal books nothing
    assert redis_client.exists(f"{P}:rl:t1")
    assert 0 < redis_client.pttl(f"{P}:rl:t1") <= 3 * 1000 / RATE + 2


def test_acquire_sleeps_the_exact_wait(redis_client):
    limiter = RateLimiter(redis_client, "t2", 10, prefix=P)
    assert limiter.acquire() == 0.0
    start = time.monotonic()
    waited = limiter.acquire()
    elapsed = time.monotonic() - start
    assert 0.08 < waited <= 0.1 and elapsed == pytest.approx(waited, abs=0.03)


def test_acquire_with_timeout_refuses_without_booking(redis_client):
    limiter = RateLimiter(redis_client, "t3", 1, prefix=P)
    limiter.acquire()
    with pytest.raises(RateLimitError) as info:
        limiter.acquire(timeout_s=0.1)
    assert 0.8 < info.value.retry_after <= 1.0
    # the refused call took no slot: the next one is still due in under a second
    assert limiter.try_acquire() <= 1.0
    limiter.reset()
    assert limiter.try_acquire() == 0.0


def test_idle_limiter_does_not_bank_more_than_the_burst(redis_client):
    limiter = RateLimiter(redis_client, "t4", 50, burst=2, prefix=P)
    time.sleep(0.2)  # 10 intervals idle
    assert [limiter.try_acquire() == 0.0 for _ in range(3)] == [True, True, False]


def test_rejects_nonsense():
    with pytest.raises(ValueError):
        RateLimiter(None, "n", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RateLimiter(None, "n", 1, burst=0)  # type: ignore[arg-type]


def _check_rate(stamps: list[float], burst: int) -> None:
    stamps = sorted(stamps)
    elapsed = stamps[-1] - stamps[0]
    allowed = RATE * elapsed + burst + 1  # +1: the first grant opens the interval
    assert len(stamps) <= allowed, (len(stamps), elapsed)
    assert len(stamps) >= 0.85 * RATE * elapsed, (len(stamps), elapsed)
    # no second anywhere saw more than rate + burst (slack for the sleep's own jitter)
    for i, t in enumerate(stamps):
        in_window = sum(1 for u in stamps[i:] if u - t < 1.0)
        assert in_window <= RATE + burst + 1, (t, in_window)


@pytest.mark.parametrize("burst", [1, 5])
def test_threads_share_the_limit(redis_url, burst):
    stamps: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 2.5

    def worker():
        client = redis.Redis.from_url(redis_url)
        limiter = RateLimiter(client, "threads", RATE, burst=burst, prefix=P)
        while time.monotonic() < stop_at:
            limiter.acquire()
            with lock:
                stamps.append(time.time())
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _check_rate(stamps, burst)


def _process_worker(url: str, prefix: str, stop_at: float, queue) -> None:
    client = redis.Redis.from_url(url)
    limiter = RateLimiter(client, "procs", RATE, burst=2, prefix=prefix)
    stamps = []
    while time.time() < stop_at:
        limiter.acquire()
        stamps.append(time.time())
    queue.put(stamps)


def test_processes_share_the_limit(redis_url):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    stop_at = time.time() + 4.0  # spawn start-up takes a moment; the rate is judged on the grants
    procs = [ctx.Process(target=_process_worker, args=(redis_url, P, stop_at, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    stamps = [t for _ in procs for t in queue.get(timeout=30)]
    for p in procs:
        p.join(timeout=10)
    assert len(stamps) > 20
    _check_rate(stamps, 2)


# ---- the adaptive rate (AIMD) -----------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.waits: list[float] = []
        self.refusals: list[bool] = []

    def waited(self, name: str, seconds: float) -> None:
        self.waits.append(seconds)

    def refusal(self, name: str, *, lowered: bool) -> None:
        self.refusals.append(lowered)


def test_no_refusal_means_the_ceiling(redis_client):
    limiter = RateLimiter(redis_client, "a1", 20, prefix=P)
    state = limiter.state()
    assert state.rate_per_s == 20 and state.epoch == 0 and state.since_refusal_s is None


def test_a_refusal_lowers_the_shared_rate_to_what_the_server_accepted(redis_client):
    seen = Recorder()
    limiter = RateLimiter(redis_client, "a2", 20, prefix=P, observer=seen)
    for _ in range(5):  # 5 calls in a quarter second, all accepted
        limiter.acquire()
    limiter.refused()  # the fifth was refused: the server took 4 in the last second
    state = limiter.state()
    assert state.epoch == 1 and state.refused_rate_per_s == 4
    assert state.rate_per_s == pytest.approx(0.9 * 4, rel=0.05)
    # another process sees the same rate: it lives in Redis
    other = RateLimiter(redis.Redis(connection_pool=redis_client.connection_pool), "a2", 20, prefix=P)
    assert other.state().rate_per_s == pytest.approx(state.rate_per_s, rel=0.05)
    assert seen.refusals == [True]
    assert len(seen.waits) == 5


def test_refusals_of_calls_granted_before_the_decrease_do_not_lower_it_again(redis_client):
    limiter = RateLimiter(redis_client, "a3", 20, prefix=P)
    for _ in range(4):
        limiter.acquire()
    limiter.refused()
    lowered = limiter.state().rate_per_s
    limiter.refused()  # the same (old) grant again: a refusal already answered
    assert limiter.state().epoch == 1 and limiter.state().rate_per_s == pytest.approx(lowered, rel=0.01)


def test_without_an_estimate_the_rate_is_halved(redis_client):
    limiter = RateLimiter(redis_client, "a4", 10, prefix=P)
    limiter.acquire()
    redis_client.delete(limiter.grants_key)  # nothing known of what the server accepted
    limiter.refused()
    assert limiter.state().rate_per_s == pytest.approx(5, rel=0.02)


def test_the_rate_probes_back_up_slowly_and_never_past_the_ceiling(redis_client):
    limiter = RateLimiter(redis_client, "a5", 10, prefix=P, adaptive=Adaptive(slow=0.1, doubling_s=0.1))
    limiter.acquire()
    redis_client.delete(limiter.grants_key)
    limiter.refused()  # 5/s, the refused rate was 10: fast to 9 (in 0.085 s), then +1/s a second
    time.sleep(0.3)
    assert 9 <= limiter.state().rate_per_s < 9.6
    time.sleep(1.0)
    assert limiter.state().rate_per_s == 10


def test_waiting_callers_book_again_at_the_lowered_rate(redis_client):
    limiter = RateLimiter(redis_client, "a6", 4, prefix=P)
    limiter.acquire()
    redis_client.delete(limiter.grants_key)
    done: list[float] = []

    def late() -> None:
        own = RateLimiter(redis.Redis(connection_pool=redis_client.connection_pool), "a6", 4, prefix=P)
        own.acquire()  # booked for 0.25 s from now at 4/s
        done.append(time.monotonic())

    started = time.monotonic()
    thread = threading.Thread(target=late)
    thread.start()
    time.sleep(0.05)
    limiter._local.grant = (0, "")  # this thread's grant was the refused one (epoch 0)
    limiter.refused()  # 2/s: the booked slot is void
    thread.join()
    assert done[0] - started >= 0.45  # one new interval (0.5 s) after the refusal, not 0.25 s
