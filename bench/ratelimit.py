"""Figure 3: the BIP rate limit, shared by every worker process through Redis. Two worker processes,
BIP_RATE_PER_SECOND=20, and the sandbox refusing anything over 20/s: the achieved rate should be
the limit, and the sandbox should never have to refuse a call."""
from __future__ import annotations

from bench.common import Context, Row, service_env
from bench.pipeline import drain, fill, generate

LIMIT = 20.0
TARGET = 0.95
N = 300


def run(ctx: Context) -> list[Row]:
    from sandbox import Sandbox, SandboxConfig

    sb = Sandbox(SandboxConfig(bip_rate_per_s=LIMIT)).start()
    try:
        generate(sb, N)
        env = service_env(sb, redis_url=ctx.redis_url, prefix=ctx.prefix("f3"),
                          bip_rate_per_second=LIMIT, wdt_rate_per_minute=600_000)
        n = fill(env)["published"]
        result = drain(ctx, sb, env, "f3", n, workers=2, timeout=n / LIMIT * 3 + 60)
    finally:
        sb.stop()
    ratio = result.saves_rate / LIMIT
    refused = result.counters["bip_rate_limited"]
    return [
        Row(
            "3. rate limit: achieved ÷ BIP_RATE_PER_SECOND (2 workers, 20/s)",
            ratio,
            f"≥ {TARGET}",
            ratio >= TARGET,
            f"{result.saves_rate:.2f} saves/s with the limit at {LIMIT:.0f}/s; {n} stockouts; "
            f"{result.counters['bip_save_calls']} save calls",
        ),
        Row(
            "3. rate limit: calls the sandbox refused (bip_rate_limited)",
            refused,
            "= 0",
            refused == 0,
            "the sandbox enforces 20/s with a token bucket of 20",
            fmt="{:.0f}",
        ),
    ]
