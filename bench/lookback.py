"""Figure 9: WDT calls per poll in steady state, 10,000 new stockouts an hour, the default 1-hour
lookback. The real `poll_once` runs in this process against the sandbox's gateway (pages from
`bench.feed`), its clock stepped a poll interval at a time, so an hour of polls takes seconds; the
calls are counted by purpose (`stockout_sync_wdt_calls`). Before issue 12 every poll re-read the
whole lookback: (lookback + interval) × rate ÷ page size pages.
"""

from __future__ import annotations

from datetime import timedelta
from fractions import Fraction
from math import ceil

from bench.common import Context, Row, service_env
from bench.feed import VirtualFeed, serve_feed
from shared.core.timeutil import now_beijing

PER_HOUR = 10_000
POLLS = 60  # an hour of polls after the first hour
TARGET = 1.5


def run(ctx: Context) -> list[Row]:
    from producer.poll import poll_once
    from sandbox import Sandbox, SandboxConfig
    from shared.core import metrics
    from shared.core.settings import Settings
    from shared.runtime import Runtime

    start = now_beijing().replace(microsecond=0) - timedelta(hours=4)
    feed = VirtualFeed(PER_HOUR * 3, start, per_second=Fraction(PER_HOUR, 3600))
    sb = Sandbox(SandboxConfig()).start()
    serve_feed(sb, feed)
    try:
        env = service_env(
            sb,
            redis_url=ctx.redis_url,
            prefix=ctx.prefix("f8"),
            wdt_rate_per_minute=6_000_000,
            initial_since=_wire(start + timedelta(minutes=5)),
        )
        settings = Settings(
            _env_file=None, **{k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields}
        )
        rt = Runtime(settings)
        interval = timedelta(seconds=settings.poll_interval_s)
        now = start + timedelta(hours=1, minutes=5)  # the first poll catches up an hour (not counted)
        poll_once(rt, _discard, now=now)

        def calls() -> dict[str, float]:
            return {p: metrics.WDT_CALLS.labels(p)._value.get() for p in ("poll", "lookback")}

        before, published, polls = calls(), 0, 0
        for _ in range(POLLS):
            now += interval
            published += poll_once(rt, _discard, now=now).published
            polls += 1
        after = calls()
    finally:
        sb.stop()
    spent = {p: after[p] - before[p] for p in after}
    per_poll = sum(spent.values()) / polls
    new_per_poll = published / polls
    pages = ceil(new_per_poll / settings.wdt_page_size)
    ratio = per_poll / pages
    exact = per_poll / (new_per_poll / settings.wdt_page_size)
    old = ceil((settings.lookback_s + settings.poll_interval_s) * PER_HOUR / 3600 / settings.wdt_page_size) + 1
    return [
        Row(
            "9. WDT calls per poll ÷ pages of new data (10,000/h, 1 h lookback, steady state)",
            ratio,
            f"≤ {TARGET}",
            ratio <= TARGET,
            f"{per_poll:.2f} calls per poll ({spent['poll'] / polls:.2f} reading new slices, "
            f"{spent['lookback'] / polls:.2f} checking the lookback's counts every {settings.lookback_check_s:.0f} s) "
            f"for {new_per_poll:.0f} new stockouts = {pages} pages of {settings.wdt_page_size} "
            f"({exact:.2f} × the exact {new_per_poll / settings.wdt_page_size:.2f}); "
            f"re-reading the whole lookback would cost ~{old} calls per poll",
            fmt="{:.2f}",
        )
    ]


def _discard(raw: dict, key: str) -> None:
    """Publishing is not what this figure measures: the messages go nowhere."""


def _wire(value) -> str:
    from shared.core.timeutil import format_wire

    return format_wire(value)
