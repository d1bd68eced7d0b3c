"""Long-running services: worker, beat, Flower, the sandbox, and the demo."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from ops.cli.app import check_mapping, check_redis, json_lines_only, main, require, start_metrics
from ops.demo import run_demo
from ops.render import console, fail
from producer.alerts.watch import install as install_alerts
from sandbox import SandboxConfig
from sandbox.server import serve
from shared.core.settings import get_settings
from shared.queue.app import get_app
from shared.redis.keys import BACKFILL_QUEUE, PRODUCER_QUEUE, STOCKOUT_QUEUE


@main.command()
@click.option("--concurrency", type=int, default=None, help="processes or threads (WORKER_CONCURRENCY)")
@click.option("--pool", default=None, help="prefork, threads, solo (WORKER_POOL)")
@click.option("--hostname", default="stockouts@%h", show_default=True,
              help="the worker's node name in Celery and Flower (%h = this host)")
@click.option("--metrics-port", type=int, default=None, help="Prometheus /metrics port (METRICS_PORT; 0 = off)")
def worker(concurrency: int | None, pool: str | None, hostname: str, metrics_port: int | None) -> None:
    """Run a worker that saves stockouts to BIP (queue `stockouts`, then `stockouts.backfill`).

    Refuses a Redis whose maxmemory-policy evicts (REDIS_ALLOW_EVICTION=true to run anyway); while this
    host's clock is off Redis TIME by more than BIP's token window, stockouts wait instead of failing."""
    require("bip")
    check_mapping()
    start_metrics(metrics_port, role="worker")
    check_redis("worker")  # last: its warnings follow every check that may still refuse

    s = get_settings()
    run_celery(
        [
            *json_lines_only(),
            "worker", *WITHOUT_MINGLE,
            "-Q", f"{STOCKOUT_QUEUE},{BACKFILL_QUEUE}",  # live first: see queue_order_strategy
            f"--pool={pool or s.worker_pool}",
            f"--concurrency={concurrency or s.worker_concurrency}",
            f"--hostname={hostname}",
            f"--loglevel={s.log_level}",
        ]
    )


@main.command()
@click.option("--schedule-file", default=None,
              help="where beat keeps its schedule (and, unless STATE_COPY_FILE says, its copy of the state epoch)")
@click.option("--metrics-port", type=int, default=None, help="Prometheus /metrics port (METRICS_PORT; 0 = off)")
def beat(schedule_file: str | None, metrics_port: int | None) -> None:
    """Run beat and the producer: schedules the live poll and the backfill task and runs them, each in a
    process of its own (queue `producer`).

    Refuses a Redis whose maxmemory-policy evicts (REDIS_ALLOW_EVICTION=true to run anyway); every poll
    compares this host's clock with Redis TIME (`status` names a clock over a minute off)."""
    require("wdt")
    check_mapping()
    start_metrics(metrics_port, role="beat")
    check_redis("beat")

    s = get_settings()
    install_alerts(s)
    schedule_file = schedule_file or os.path.join(
        os.environ.get("TMPDIR", "/tmp"), f"stockout-sync-beat-{s.redis_prefix}"
    )
    if not s.state_copy_file:
        # beat's copy of the state epoch and cursor lives beside its schedule unless placed elsewhere
        os.environ["STATE_COPY_FILE"] = f"{schedule_file}.state.json"
        get_settings.cache_clear()
    run_celery(
        [
            *json_lines_only(),
            "worker", "--beat", *WITHOUT_MINGLE,
            "-Q", PRODUCER_QUEUE,
            # the live poll and the backfill task each in a process of their own (neither waits for the
            # other), and a third when the daily reconcile is on: its hours of look-ups never hold up a poll
            f"--concurrency={3 if s.reconcile_daily_at else 2}",
            "--hostname=producer@%h",
            f"--schedule={schedule_file}",
            f"--loglevel={s.log_level}",
        ]
    )


# Mingle asks the other nodes at start-up for their revoked task ids and logical clock, and waits a
# second for answers each start. Nothing here revokes tasks (a stockout is fixed and replayed as a dead
# letter, and every task is idempotent), so the second buys nothing: a start is ready that much sooner.
WITHOUT_MINGLE = ("--without-mingle",)


def run_celery(argv: list[str]) -> NoReturn:
    """Celery's own command, keeping its exit code: `worker_main` and `app.start` both drop it
    (click hands it back as a return value they ignore), so a worker that died of an
    unrecoverable error used to exit 0 and look, to a supervisor, like a clean stop."""
    from celery.bin.celery import celery as command

    command.params[0].default = get_app()  # the --app option, as app.start sets it
    try:
        code = command.main(args=argv, standalone_mode=False)
    finally:
        command.params[0].default = None
    sys.exit(code if isinstance(code, int) else 0)


@main.command()
@click.option("--port", default=5555, type=int, show_default=True, help="port Flower listens on")
@click.option("--address", default="127.0.0.1", show_default=True, help="address Flower listens on")
@click.option("--db", default=lambda: os.environ.get("FLOWER_DB", "flower.db"), show_default="FLOWER_DB or flower.db",
              help="Flower's database file: put it on a volume so failures survive a restart")
@click.option("--persistent/--no-persistent", default=True, show_default=True,
              help="keep tasks in --db across restarts (saved on stop and every minute)")
@click.option("--insecure", is_flag=True, help="allow running without FLOWER_BASIC_AUTH (local use only)")
def flower(port: int, address: str, db: str, persistent: bool, insecure: bool) -> None:
    """Flower on the project's broker, with basic auth from FLOWER_BASIC_AUTH=user:password.

    Its Broker page lists dead_letter beside the workers' queues; a failed task's result is its
    `stockout-sync dlq show` line, and failures `dlq requeue` sent back become REQUEUED."""
    from ops.flower import flower_argv, list_every_queue, mark_requeued, protect_monitoring, reexec_clean

    if not os.environ.get("FLOWER_BASIC_AUTH") and not insecure:
        fail("set FLOWER_BASIC_AUTH=user:password (or pass --insecure for local use)")
    db = os.path.abspath(db)
    # Flower gets the broker and its own settings only: no WDT/BIP secret, no robot URL (ops/flower.py).
    reexec_clean(["flower", f"--port={port}", f"--address={address}", f"--db={db}",
                  "--persistent" if persistent else "--no-persistent", *(["--insecure"] if insecure else [])])
    argv = flower_argv(port, address, db, persistent)
    protect_monitoring()
    list_every_queue()
    mark_requeued()
    # Flower knows brokers by their URL scheme and only reads events and queue lengths, so it runs
    # on kombu's own Redis transport; the hardened one (shared/queue/broker.py) matters to consumers.
    get_app().conf.broker_transport = None
    # The credentials stay in the environment, where Flower reads them, never on the command line.
    get_app().start(argv)


@main.command()
@click.option("--port", default=8700, type=int, show_default=True, help="port the sandbox listens on")
@click.option("--host", default="127.0.0.1", show_default=True, help="address the sandbox listens on")
@click.option("--stockouts", default=0, type=int, help="generate this many stockouts at start")
@click.option("--bad", default=0, type=int, help="of which this many cannot be mapped")
@click.option("--public-url", envvar="SANDBOX_PUBLIC_URL", default=None,
              help="the base other hosts reach it at, as BIP discovery answers it (SANDBOX_PUBLIC_URL; "
                   "compose: http://sandbox:8700); default: the address it listens on")
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="load stockouts and BIP records from this file at start, write them back at the end "
                   "(`demo --keep` leaves one)")
@click.option("--wdt-lookup-needs-window", is_flag=True,
              help="refuse a stockout_no query without start_time/end_time, as some WDT editions do")
@click.option("--wdt-latency-ms", default=0.0, type=click.FloatRange(0, 60_000), show_default=True,
              help="every WDT call answers after this long (a real gateway: a few hundred ms)")
@click.option("--bip-latency-ms", default=0.0, type=click.FloatRange(0, 60_000), show_default=True,
              help="every BIP call answers after this long")
def sandbox(port: int, host: str, stockouts: int, bad: int, public_url: str | None, state_file: Path | None,
            wdt_lookup_needs_window: bool, wdt_latency_ms: float, bip_latency_ms: float) -> None:
    """Serve the sandbox of both APIs (for the demo, tests and benchmarks); `GET /_sandbox/` lists its
    controls, `POST /_sandbox/latency` changes the latencies while it runs."""

    config = SandboxConfig(wdt_lookup_needs_window=wdt_lookup_needs_window, wdt_latency_ms=wdt_latency_ms,
                           bip_latency_ms=bip_latency_ms)
    serve(config, host=host, port=port, public_url=public_url or None, stockouts=stockouts, bad=bad,
          state_file=state_file)


@main.command()
@click.option("--stockouts", default=3000, type=int, show_default=True, help="stockouts the sandbox starts with")
@click.option("--bad", default=12, type=int, show_default=True, help="of which this many cannot be mapped")
@click.option("--keep", is_flag=True,
              help="leave the Redis state, save the sandbox's data and print how to restart against both, "
                   "with the commands to try next")
@click.option("--prefix", default=None, help="the run's Redis key prefix (default: demo<epoch seconds>)")
@click.option("--console", "console_port", type=click.IntRange(1, 65535), default=None,
              help="after the summary, serve the operator console on the demo on this port until Ctrl-C")
def demo(stockouts: int, bad: int, keep: bool, prefix: str | None, console_port: int | None) -> None:
    """The whole pipeline against the sandbox: real Redis, a real worker and the poll, then a summary
    and the commands to try next (`--keep` leaves everything to try them on; `--console` opens the
    operator console on it)."""

    sys.exit(run_demo(stockouts=stockouts, bad=bad, console=console, keep=keep, prefix=prefix,
                      console_port=console_port))
