"""Figure 5: Redis memory per synced stockout, after the queue has drained (what the state costs to
keep for STATE_TTL_DAYS). INFO memory is server-wide, so this figure runs on a redis-server of its
own (same binary as the shared one, default configuration): other users of a shared server would
move `used_memory` by more than the whole figure.
"""
from __future__ import annotations

import time
from collections import defaultdict
from datetime import timedelta

from bench.common import Context, PrivateRedis, Processes, Row, service_env, wait_until
from bench.pipeline import fill, generate

TARGET = 100
N = 3000
WARM_UP = 200
EARLIER = (timedelta(hours=6), timedelta(hours=5))


def run(ctx: Context) -> list[Row]:
    from sandbox import Sandbox, SandboxConfig

    try:
        server = PrivateRedis(ctx.workdir)
    except FileNotFoundError:
        return [Row("5. Redis bytes per synced stockout", float("nan"), f"≤ {TARGET}", None,
                    "skipped: no redis-server binary for a private server")]
    sb = Sandbox(SandboxConfig()).start()
    procs = Processes(ctx, "f5")
    r = ctx.client(server.url)
    try:
        prefix = "f5"
        env = service_env(sb, redis_url=server.url, prefix=prefix,
                          bip_rate_per_second=100_000, wdt_rate_per_minute=600_000)
        queue, unacked = f"{prefix}:stockouts", f"{prefix}:unacked"

        def drained(n: int) -> bool:
            return sb.counters()["bip_saves"] >= n and r.llen(queue) == 0 and r.hlen(unacked) == 0

        # Warm up first: every pool process has opened its connections (~20 KB of client buffers
        # each) and fetched the token before the baseline, so the delta is the stockouts' alone.
        generate(sb, WARM_UP, EARLIER)
        procs.worker(env)
        warm = fill(env, EARLIER)["published"]
        wait_until(lambda: drained(warm), 120, interval=0.2, message="the warm-up")
        time.sleep(1)
        before = r.info("memory")
        generate(sb, N)
        n = fill(env)["published"]
        wait_until(lambda: drained(warm + n), 240, interval=0.2, message=f"{n} saves")
        time.sleep(1)  # the last acks
        after = r.info("memory")
        per = (after["used_memory"] - before["used_memory"]) / n
        info = {k: (after[k] - before[k]) / n for k in ("used_memory_dataset", "mem_clients_normal")}
        breakdown = _by_kind(r, prefix, n + warm)
    finally:
        procs.stop_all()
        r.close()
        sb.stop()
        server.close()
    return [Row(
        "5. Redis bytes per synced stockout (used_memory delta ÷ N, drained)",
        per,
        f"≤ {TARGET}",
        per <= TARGET,
        f"{n} stockouts on redis-server {server.version}; per stockout: dataset {info['used_memory_dataset']:.1f} B, "
        f"client buffers {info['mem_clients_normal']:.1f} B; by key (MEMORY USAGE ÷ all {n + warm}): {breakdown}",
        fmt="{:.1f}",
    )]


def _by_kind(r, prefix: str, n: int) -> str:
    """Where the bytes are, per kind of key, and anything per stockout that should not be there."""
    sizes: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        name = key.decode()[len(prefix) + 1 :]
        kind = name.split(":", 1)[0] if not name.startswith("_kombu") else "_kombu"
        if kind == "mark":
            kind = f"mark ({r.object('encoding', key).decode()})"
        sizes[kind] += r.memory_usage(key, samples=0) or 0
        counts[kind] += 1
    parts = [
        f"{kind} {sizes[kind] / n:.1f} B in {counts[kind]} key(s)" for kind in sorted(sizes, key=lambda k: -sizes[k])
    ]
    return ", ".join(parts)
