"""`python -m bench` (`make bench`): every figure of issue 6, one table, `bench-results.json`, and exit
status 1 when a figure misses its target.

    python -m bench                       # all figures, default pool and concurrency
    python -m bench --only 1,5            # some of them
    python -m bench --pools prefork:8,threads:8,threads:16   # figures 1 and 2 for each pool too
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.common import ROOT, Context, Row

FIGURES = {
    "1": ("overhead", "pipeline ÷ no-op task"),
    "2": ("concurrency", "I/O concurrency at 200 ms"),
    "3": ("ratelimit", "shared BIP rate limit"),
    "4": ("producer", "producer rate and memory"),
    "5": ("memory", "Redis bytes per stockout"),
    "6": ("freshness", "WDT → BIP p95"),
    "7": ("dlq", "dlq requeue --all at scale"),
    "8": ("backfill", "backfill memory and live freshness"),
    "9": ("lookback", "WDT calls per poll"),
    "10": ("adaptive", "adaptive rate limit against unknown server limits"),
    "11": ("console", "console pages at 10,000 dead letters"),
}


def machine(redis_url: str) -> dict:
    import redis

    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = client.info("server")["redis_version"]
    finally:
        client.close()
    from shared.core.settings import Settings

    defaults = Settings(_env_file=None)
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "redis": redis_version,
        "worker_pool": defaults.worker_pool,
        "worker_concurrency": defaults.worker_concurrency,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="figures to run, e.g. 1,3 (default: all)")
    parser.add_argument("--pools", default="", help="also run figures 1 and 2 for these pool:concurrency pairs")
    parser.add_argument("--out", default=str(ROOT / "bench-results.json"))
    args = parser.parse_args(argv)
    wanted = [f.strip() for f in args.only.split(",") if f.strip()] or list(FIGURES)
    console = Console()
    ctx = Context.create()
    info = machine(ctx.redis_url)
    console.print(
        f"bench on {info['nproc']} × {info['cpu']}, Python {info['python']}, Redis {info['redis']}; "
        f"workers: {info['worker_pool']} × {info['worker_concurrency']}; logs in {ctx.workdir}"
    )
    started = time.monotonic()
    rows: list[Row] = []
    try:
        import importlib

        for key in wanted:
            module_name, title = FIGURES[key]
            module = importlib.import_module(f"bench.{module_name}")
            with console.status(f"figure {key}: {title}…"):
                t = time.monotonic()
                try:
                    got = module.run(ctx)
                except Exception as err:  # one broken figure must not hide the others
                    got = [Row(f"{key}. {title}", float("nan"), "", False, f"error: {type(err).__name__}: {err}")]
                rows.extend(got)
            console.print(f"figure {key} done in {time.monotonic() - t:.0f} s")
        for spec in [s for s in args.pools.split(",") if s.strip()]:
            pool, _, concurrency = spec.partition(":")
            for module_name in ("overhead", "concurrency"):
                module = importlib.import_module(f"bench.{module_name}")
                with console.status(f"{module_name} with {spec}…"):
                    got = module.run(
                        ctx, label=f"{pool}{concurrency}", pool=pool, concurrency=int(concurrency or 0) or None
                    )
                for row in got:  # a comparison for choosing the defaults, not a target of the run
                    row.detail = f"({'meets' if row.passed else 'misses'} {row.target}) {row.detail}"
                    row.passed = None
                rows.extend(got)
    finally:
        ctx.close()
    elapsed = time.monotonic() - started

    table = Table(title=f"stockout-sync bench ({elapsed:.0f} s)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_column("result")
    for row in rows:
        verdict = "[green]pass[/green]" if row.passed else "[red]FAIL[/red]" if row.passed is False else "info"
        table.add_row(escape(row.figure), row.shown(), escape(row.target), verdict)
    console.print(table)
    for row in rows:
        console.print(f"[dim]{escape(row.figure)}: {escape(row.detail)}[/dim]")
    Path(args.out).write_text(json.dumps(
        {"machine": info, "seconds": round(elapsed, 1), "figures": [row.as_dict() for row in rows]},
        ensure_ascii=False, indent=2, default=str,
    ) + "\n")
    failed = [row for row in rows if row.passed is False]
    console.print(
        f"results in {args.out}; "
        + (f"[red]{len(failed)} figure(s) missed[/red]" if failed else "[green]every target met[/green]")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
