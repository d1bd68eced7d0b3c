"""Figure 1: what our pipeline costs on top of Celery itself.

End-to-end stockouts/s (real producer, real worker processes, real Redis, the sandbox over HTTP
answering at once) divided by the rate of a no-op task carrying the same stockout, on the same
broker with the same worker settings, in the same run.

Measured in rounds, each a no-op run straight followed by a pipeline run, and the figure is the
median of the rounds' ratios: on a shared machine other work comes and goes, a round's two halves
see much the same of it, and the median drops the round it hit hardest.
"""
from __future__ import annotations

import statistics

from bench.common import Context, Row, service_env
from bench.pipeline import drain, fill, generate, noop_drain

TARGET = 0.5
N = 1200
ROUNDS = 3


def run(ctx: Context, *, label: str = "", pool: str | None = None, concurrency: int | None = None) -> list[Row]:
    from sandbox import Sandbox, SandboxConfig

    options = {k: v for k, v in (("pool", pool), ("concurrency", concurrency)) if v}
    settings = {"bip_rate_per_second": 100_000, "wdt_rate_per_minute": 600_000}
    noops, ours = [], []
    sb = Sandbox(SandboxConfig()).start()
    try:
        stockouts = generate(sb, N)
        for i in range(ROUNDS):
            env = service_env(sb, redis_url=ctx.redis_url, prefix=ctx.prefix(f"f1n{label}{i}"), **settings)
            noops.append(noop_drain(ctx, env, f"f1-noop{label}{i}", stockouts, **options))
            sb.bip.clear()  # the same stockouts again, as new records (not replays)
            env = service_env(sb, redis_url=ctx.redis_url, prefix=ctx.prefix(f"f1p{label}{i}"), **settings)
            n = fill(env)["published"]
            ours.append(drain(ctx, sb, env, f"f1-sync{label}{i}", n, **options))
    finally:
        sb.stop()
    ratios = [d.rate / n.rate if n.rate else 0.0 for d, n in zip(ours, noops, strict=False)]
    ratio = statistics.median(ratios)
    what = (f"{pool or 'default pool'}, {concurrency or 'default'} concurrency" if options
            else "default pool and concurrency")
    return [Row(
        f"1. overhead: pipeline ÷ no-op task ({what})",
        ratio,
        f"≥ {TARGET}",
        ratio >= TARGET,
        f"median of {ROUNDS} rounds of {ours[0].n} stockouts: "
        + "; ".join(f"{d.rate:.0f}/s ÷ {n.rate:.0f}/s = {r:.2f}" for d, n, r in zip(ours, noops, ratios, strict=False))
        + f"; worker RSS {max(d.worker_rss_mb for d in ours):.0f} MB"
        f" (no-op {max(n.worker_rss_mb for n in noops):.0f} MB);"
        f" duplicates {max(d.counters.get('duplicate_stockouts', 0) for d in ours)}",
    )]
