"""`status`: where the sync stands, and the containers' health check."""
from __future__ import annotations

import sys

import click
import redis
from rich.markup import escape

from ops import status as report_status
from ops.cli.app import main
from ops.render import console, err_console, fail, print_status
from shared.redis.conn import reachable
from shared.runtime import runtime


@main.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for programs")
@click.option("--timeout", default=1.0, type=float, show_default=True, help="seconds to wait for the workers to answer")
@click.option("--health", type=click.Choice(["worker", "beat"]), default=None,
              help="check only this host's worker or beat process (a container health check)")
def status(as_json: bool, timeout: float, health: report_status.Role | None) -> None:
    """Where the sync stands; exits 1 when something needs attention (lag, dead letters, no worker, an
    evicting Redis, a clock over a minute off); warns of Redis without persistence."""



    rt = runtime()
    # a quick ping first: the service's own client retries a lost connection for many seconds
    if not reachable(rt.settings.redis_url, timeout=max(timeout, 1.0), **rt.settings.sentinel_options()):
        fail("Redis does not answer at REDIS_URL")
    try:
        if health:
            found = report_status.health(rt, health, timeout_s=timeout)
            for problem in found:
                err_console.print(f"[red]unhealthy:[/red] {escape(problem)}")
            if not found:
                console.print(f"{health}: healthy")
            sys.exit(1 if found else 0)
        report = report_status.gather(rt, timeout_s=timeout)
    except redis.RedisError as err:
        fail(f"Redis: {type(err).__name__}: {err}")
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        print_status(report)
    sys.exit(1 if report.problems else 0)
