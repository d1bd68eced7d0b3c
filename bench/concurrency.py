"""Figure 2: I/O concurrency. With BIP answering each save in 200 ms and no rate limit, a worker of
concurrency C can at best save C / 0.2 s stockouts a second; how close does it get?"""
from __future__ import annotations

from bench.common import Context, Row, service_env
from bench.pipeline import drain, fill, generate
from shared.core.settings import Settings

TARGET = 0.85
LATENCY_S = 0.2
SECONDS = 10


def run(ctx: Context, *, label: str = "", pool: str | None = None, concurrency: int | None = None) -> list[Row]:
    from sandbox import Sandbox, SandboxConfig

    defaults = Settings(_env_file=None)
    pool_name = pool or defaults.worker_pool
    c = concurrency or defaults.worker_concurrency
    ideal = c / LATENCY_S
    sb = Sandbox(SandboxConfig(bip_latency_ms=LATENCY_S * 1000)).start()
    try:
        generate(sb, int(ideal * SECONDS))
        env = service_env(sb, redis_url=ctx.redis_url, prefix=ctx.prefix(f"f2{label}"),
                          bip_rate_per_second=100_000, wdt_rate_per_minute=600_000)
        n = fill(env)["published"]
        options = {k: v for k, v in (("pool", pool), ("concurrency", concurrency)) if v}
        result = drain(ctx, sb, env, f"f2{label}", n, **options)
    finally:
        sb.stop()
    ratio = result.saves_rate / ideal
    return [Row(
        f"2. I/O concurrency: throughput ÷ (concurrency ÷ 0.2 s) ({pool_name}, {c})",
        ratio,
        f"≥ {TARGET}",
        ratio >= TARGET,
        f"{result.saves_rate:.1f} saves/s of an ideal {ideal:.0f}/s with each save taking {LATENCY_S * 1000:.0f} ms; "
        f"{n} stockouts; worker RSS {result.worker_rss_mb:.0f} MB",
    )]
