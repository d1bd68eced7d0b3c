"""Figure 10: the adaptive rate limit. The sandbox silently allows R calls in any second (a sliding
window, answering 310046 / 1012 beyond it); the service keeps its default ceilings (BIP 20/s, WDT
60 a minute, 1200 for R=3) and must learn R: achieved ≥ 0.85 × R, refusals ≤ 5 % of calls, no dead letter."""
from __future__ import annotations

from datetime import timedelta

from bench.common import Context, Row, run_producer, service_env
from bench.pipeline import drain, fill, generate
from shared.core.timeutil import now_beijing

ACHIEVED = 0.85
REFUSED = 0.05
BIP_RUNS = {1.0: 50, 3.0: 120, 20.0: 400}  # R → stockouts to save (about 40–50 s of saving at R)
# R → (stockouts to read at 5 a page, WDT_RATE_PER_MINUTE): the default ceiling (60 a minute) for
# R ≤ 1; R=3 needs a ceiling above it (1200 a minute), as a tenant with a larger quota would set
WDT_RUNS = {1.0: (400, 60), 0.5: (250, 60), 3.0: (400, 1200)}
WDT_PAGE = 5


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    for limit, n in BIP_RUNS.items():
        rows.extend(bip_run(ctx, limit, n))
    for limit, (n, ceiling) in WDT_RUNS.items():
        rows.extend(wdt_run(ctx, limit, n, ceiling))
    return rows


def bip_run(ctx: Context, limit: float, n: int) -> list[Row]:
    from sandbox import Sandbox, SandboxConfig

    name = f"f7bip{limit:g}"
    sb = Sandbox(SandboxConfig(bip_rate_per_s=limit, rate_window_s=1.0)).start()
    try:
        generate(sb, n)
        # production defaults for the ceiling (BIP_RATE_PER_SECOND=20); WDT out of the way
        env = service_env(sb, redis_url=ctx.redis_url, prefix=ctx.prefix(name), wdt_rate_per_minute=600_000)
        published = fill(env)["published"]
        result = drain(ctx, sb, env, name, published, workers=2, timeout=published / limit * 3 + 90)
        r = ctx.client(env["REDIS_URL"])
        try:
            dead = r.llen(f"{env['REDIS_PREFIX']}:dead_letter")
        finally:
            r.close()
    finally:
        sb.stop()
    calls = result.counters["bip_save_calls"]
    refused = result.counters["bip_rate_limited"]
    return rows_for(f"BIP R={limit:g}/s", limit, result.saves_rate, refused, calls, dead,
                    f"{published} stockouts, {calls} save calls, {result.seconds:.0f} s")


def wdt_run(ctx: Context, limit: float, n: int, ceiling_per_minute: float) -> list[Row]:
    from sandbox import Sandbox, SandboxConfig

    name = f"f7wdt{limit:g}"
    # a window of at least a second holding at least one call: R=0.5 is one call in any two seconds
    sb = Sandbox(SandboxConfig(wdt_rate_per_min=limit * 60, rate_window_s=max(1.0, 1 / limit))).start()
    try:
        now = now_beijing()
        sb.generate(n, start=now - timedelta(hours=3), end=now - timedelta(hours=1))
        # small pages for many calls
        env = service_env(sb, redis_url=ctx.redis_url, prefix=ctx.prefix(name), wdt_page_size=WDT_PAGE,
                          wdt_rate_per_minute=ceiling_per_minute)
        summary = run_producer(env, now - timedelta(hours=3, minutes=1), now - timedelta(minutes=59),
                               timeout=n / WDT_PAGE / limit * 4 + 90)
    finally:
        sb.stop()
    counters = sb.counters()
    calls, refused = counters["wdt_calls"], counters["wdt_rate_limited"]
    achieved = (calls - refused) / summary["seconds"]
    return rows_for(f"WDT R={limit:g}/s", limit, achieved, refused, calls, 0,
                    f"{summary['pages']} pages, {calls} calls in {summary['seconds']:.0f} s (the producer's backfill; "
                    f"WDT_RATE_PER_MINUTE={ceiling_per_minute:g})")


def rows_for(what: str, limit: float, achieved: float, refused: int, calls: int, dead: int, detail: str) -> list[Row]:
    ratio = achieved / limit
    share = refused / calls if calls else 0.0
    return [
        Row(f"10. adaptive: {what}, achieved ÷ R", ratio, f"≥ {ACHIEVED}", ratio >= ACHIEVED,
            f"{achieved:.2f} calls/s accepted; {detail}"),
        Row(f"10. adaptive: {what}, refused ÷ calls", share, f"≤ {REFUSED:.0%}", share <= REFUSED,
            f"{refused} of {calls} calls refused", fmt="{:.1%}"),
        Row(f"10. adaptive: {what}, dead letters", dead, "= 0", dead == 0, "rate-limit replies are waits",
            fmt="{:.0f}"),
    ]
