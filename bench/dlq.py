"""Figure 7: `stockout-sync dlq requeue --all` of 10,000 dead letters, timed as the operator runs it
(the real command in its own process), with Redis PING latency sampled throughout: the same Redis
runs the broker, the locks and the rate limits, so a requeue must never stall it."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

from bench.common import ROOT, Context, Row

N = 10_000
TARGET_S = 30.0
TARGET_PING_MS = 20.0


def run(ctx: Context) -> list[Row]:
    prefix = ctx.prefix("f7")
    env = {**os.environ, "REDIS_URL": ctx.redis_url, "REDIS_PREFIX": prefix, "LOG_LEVEL": "WARNING"}
    client = ctx.client()
    setup_s = _fill(ctx, prefix, N)
    per_letter = _bytes_per_letter(client, prefix, N)
    with Pinger(ctx) as pinger:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "ops.cli", "dlq", "requeue", "--all", "--yes"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        took = time.monotonic() - started
    if done.returncode != 0 or f"requeued {N}" not in done.stdout:
        raise RuntimeError(f"dlq requeue failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-2000:]}")
    left = client.zcard(f"{prefix}:dlq:index"), client.llen(f"{prefix}:dead_letter")
    queued = client.llen(f"{prefix}:stockouts")
    client.close()
    pings, p99 = sorted(pinger.pings), pinger.p99()
    detail = (f"{N} letters (set up in {setup_s:.0f} s; Redis bytes per letter: {per_letter}); "
              f"{queued} messages on stockouts after, {left[0]} letters and "
              f"{left[1]} queue copies left; {len(pings)} PINGs: p50 {pings[len(pings) // 2]:.2f} ms, "
              f"max {pings[-1]:.1f} ms")
    purge_s, purge_p99 = _purge_all(ctx, prefix, env)
    return [
        Row(f"7. dlq requeue --all of {N} letters (s, the command's wall time)", took, f"< {TARGET_S:.0f}",
            took < TARGET_S and queued == N and left == (0, 0), detail, fmt="{:.1f}"),
        Row("7. Redis PING p99 during that requeue (ms)", p99, f"< {TARGET_PING_MS:.0f}", p99 < TARGET_PING_MS,
            "PING every 5 ms from another connection", fmt="{:.2f}"),
        Row(f"7. dlq purge --all --yes of {N} letters (s; PING p99 ms in the detail)", purge_s, f"< {TARGET_S:.0f}",
            purge_s < TARGET_S and purge_p99 < TARGET_PING_MS, f"Redis PING p99 {purge_p99:.2f} ms meanwhile",
            fmt="{:.1f}"),
    ]


def _purge_all(ctx: Context, prefix: str, env: dict[str, str]) -> tuple[float, float]:
    """The same for purge, on a fresh set of letters."""
    client = ctx.client()
    client.delete(f"{prefix}:stockouts")
    _fill(ctx, prefix, N)
    with Pinger(ctx) as pinger:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "ops.cli", "dlq", "purge", "--all", "--yes"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        took = time.monotonic() - started
    left = client.zcard(f"{prefix}:dlq:index") + client.llen(f"{prefix}:dead_letter")
    client.close()
    if done.returncode != 0 or f"purged {N}" not in done.stdout or left:
        raise RuntimeError(f"dlq purge failed ({done.returncode}, {left} left): {done.stdout[-500:]} "
                           f"{done.stderr[-2000:]}")
    return took, pinger.p99()


class Pinger:
    """PING from a connection of its own every 5 ms while the block runs."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.pings: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = self.ctx.client()
        while not self._stop.is_set():
            t = time.perf_counter()
            client.ping()
            self.pings.append((time.perf_counter() - t) * 1000)
            self._stop.wait(0.005)
        client.close()

    def __enter__(self) -> Pinger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def p99(self) -> float:
        pings = sorted(self.pings)
        return pings[int(len(pings) * 0.99)] if pings else float("nan")


def _fill(ctx: Context, prefix: str, n: int) -> float:
    """`n` letters as workers write them (record, index, queue copy), realistic stockouts inside."""
    from sandbox.data import generate_stockouts
    from shared.core.errors import APIConnectionError
    from shared.deadletters.model import DeadLetter, stage_of
    from shared.deadletters.store import DeadLetterStore
    from shared.queue.publisher import queue_entry
    from shared.redis.keys import DEAD_LETTER_QUEUE

    started = time.monotonic()
    client = ctx.client()
    store = DeadLetterStore(client, prefix, ttl_s=30 * 86400, keep_personal_data=False)
    batch = generate_stockouts(n, first_id=7_000_000, seed=7)
    failure = APIConnectionError("bip POST /yonbip/scm/othoutrecord/single/save: HTTP 502", api="bip", http_status=502)
    for raw in batch.stockouts:
        sid = raw["stockout_id"]
        message_id = f"dlq-{uuid.uuid4()}"
        letter = DeadLetter.new(sid, failure, stage=stage_of(failure), stockout=raw, attempts=6, message_id=message_id)
        store.put(letter)
        store.push_copy(sid, queue_entry(store.clean(raw), sid, message_id, DEAD_LETTER_QUEUE))
    client.close()
    return time.monotonic() - started


def _bytes_per_letter(client, prefix: str, n: int) -> str:
    """What a letter costs, by key: its record, its queue copy, and the indexes that make claims O(1)."""
    sample = list(client.scan_iter(match=f"{prefix}:dlq:rec:7*", count=1000))[:200]
    record = sum(client.memory_usage(k, samples=0) or 0 for k in sample) / max(1, len(sample))
    sizes = {name: (client.memory_usage(f"{prefix}:{key}", samples=0) or 0) / n for name, key in
             (("queue copy", "dead_letter"), ("exact-copy index", "dlq:entries"), ("time index", "dlq:index"),
              ("order index", "dlq:orders"))}
    return ", ".join([f"record {record:.0f}"] + [f"{name} {size:.0f}" for name, size in sizes.items()])
