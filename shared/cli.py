"""`stockout-sync`: the one command operators use."""
from __future__ import annotations

import json
import os
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared.settings import get_settings

console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[red]error:[/red] {escape(message)}")
    sys.exit(code)


def _check_mapping() -> None:
    from worker.mapping import load_mapping

    try:
        load_mapping(get_settings().mapping_file)
    except Exception as err:  # a readable reason, never a traceback, for a bad mapping file
        _fail(str(err))


def _parse_time(value: str, name: str):
    from shared.timeutil import parse_wire

    try:
        parsed = parse_wire(value)
    except ValueError:
        parsed = None
    if parsed is None:
        _fail(f"{name}={value!r}: expected 'yyyy-MM-dd' or 'yyyy-MM-dd HH:mm:ss' (Beijing time)")
    return parsed


@click.group()
def main() -> None:
    """Move every 旺店通 stockout into 用友BIP as an other outbound record."""
    from pydantic import ValidationError

    try:
        get_settings()
    except ValidationError as err:
        _fail(f"configuration: {err}")
    from shared.logs import configure_logging

    configure_logging(get_settings())


@main.command()
@click.option("--concurrency", type=int, default=None, help="processes or threads (WORKER_CONCURRENCY)")
@click.option("--pool", default=None, help="prefork, threads, solo (WORKER_POOL)")
@click.option("--hostname", default="stockouts@%h")
def worker(concurrency, pool, hostname) -> None:
    """Run a worker that saves stockouts to BIP (queue `stockouts`)."""
    _check_mapping()
    from shared.celery_app import STOCKOUT_QUEUE, app

    s = get_settings()
    app.worker_main(
        [
            "worker",
            "-Q", STOCKOUT_QUEUE,
            f"--pool={pool or s.worker_pool}",
            f"--concurrency={concurrency or s.worker_concurrency}",
            f"--hostname={hostname}",
            f"--loglevel={s.log_level}",
        ]
    )


@main.command()
@click.option("--schedule-file", default=None, help="where beat keeps its schedule state")
def beat(schedule_file) -> None:
    """Run beat and the producer: one process that schedules polls and runs them (queue `producer`)."""
    _check_mapping()
    from shared.celery_app import PRODUCER_QUEUE, app

    s = get_settings()
    schedule_file = schedule_file or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"stockout-sync-beat-{s.redis_prefix}")
    app.worker_main(
        [
            "worker", "--beat",
            "-Q", PRODUCER_QUEUE,
            "--concurrency=1",
            "--hostname=producer@%h",
            f"--schedule={schedule_file}",
            f"--loglevel={s.log_level}",
        ]
    )


@main.command()
def poll() -> None:
    """Run one poll now and print what it did."""
    _check_mapping()
    from producer.poll import poll_once
    from shared.messages import publish_stockout
    from shared.runtime import runtime

    summary = poll_once(runtime(), publish_stockout)
    console.print(summary.line())


@main.command()
@click.option("--since", required=True, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]'")
@click.option("--until", required=True, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]'")
def backfill(since, until) -> None:
    """Publish every stockout modified in a past range (safe beside beat; does not move the cursor)."""
    _check_mapping()
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from producer.poll import backfill as run_backfill
    from shared.messages import publish_stockout
    from shared.runtime import runtime

    start, end = _parse_time(since, "--since"), _parse_time(until, "--until")
    if end <= start:
        _fail("--until must be after --since")
    total_s = (end - start).total_seconds()
    with Progress(
        TextColumn("[bold]backfill"), BarColumn(), TextColumn("{task.fields[pages]} pages · {task.fields[stockouts]} stockouts"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
    ) as progress:
        task = progress.add_task("backfill", total=total_s, pages=0, stockouts=0)

        def on_progress(summary, window_end=None) -> None:
            progress.update(task, pages=summary.pages, stockouts=summary.fetched)

        def on_slice(slice_end) -> None:
            progress.update(task, completed=(slice_end - start).total_seconds())

        summary = run_backfill(runtime(), publish_stockout, start, end, on_progress=on_progress, on_slice=on_slice)
    console.print(summary.line())


@main.command()
@click.argument("stockout_no")
def preview(stockout_no) -> None:
    """Fetch one stockout from WDT and print the BIP payload it would become (or the mapping error)."""
    from shared.errors import StockoutSyncError
    from shared.runtime import runtime
    from worker.transform import preview as make_preview

    rt = runtime()
    try:
        raw = rt.wdt.get_by_no(stockout_no)
    except StockoutSyncError as err:
        _fail(f"WDT: {err}")
    if raw is None:
        _fail(f"stockout {stockout_no} not found in WDT", 1)
    try:
        payload = make_preview(raw, rt.mapping)
    except StockoutSyncError as err:
        _fail(f"stockout {stockout_no} cannot be mapped: {err}", 1)
    console.print_json(json.dumps({"data": payload}, ensure_ascii=False))


# -- dead letters -----------------------------------------------------------------------------
@main.group()
def dlq() -> None:
    """Dead letters: list, show, requeue, purge."""


def _dlq_store():
    from shared.runtime import runtime
    from worker.deadletter import DeadLetterStore

    rt = runtime()
    return DeadLetterStore(rt.redis, rt.settings.redis_prefix)


def _select(store, ids, all_, reason, code):
    from worker.deadletter import matches

    if ids:
        return list(ids)
    if all_ or reason or code:
        return [l.stockout_id for l in store.all() if matches(l, reason=reason, code=code)]
    _fail("name dead letters by id, or use --all / --reason / --code")


@dlq.command("list")
@click.option("--reason", default=None, help="text the reason contains")
@click.option("--code", default=None, help="the remote system's error code")
@click.option("--json", "as_json", is_flag=True)
def dlq_list(reason, code, as_json) -> None:
    from worker.deadletter import as_json as letters_json
    from worker.deadletter import matches

    store = _dlq_store()
    letters = [l for l in store.all() if matches(l, reason=reason, code=code)]
    if as_json:
        click.echo(letters_json(letters))
        return
    table = Table(title=f"dead letters: {len(letters)} (queue length {store.queue_length()})")
    for column in ("stockout_id", "order_no", "stage", "reason", "attempts", "last failed (Beijing)"):
        table.add_column(column, overflow="fold")
    for l in letters:
        reason = f"{l.error_class}{' ' + l.code if l.code else ''}: {l.message}"
        table.add_row(escape(l.stockout_id), escape(l.order_no), l.stage, escape(reason), str(l.attempts), l.last_failed_at)
    console.print(table)


@dlq.command("show")
@click.argument("stockout_id")
@click.option("--json", "as_json", is_flag=True)
def dlq_show(stockout_id, as_json) -> None:
    letter = _dlq_store().get(stockout_id)
    if letter is None:
        _fail(f"no dead letter for stockout {stockout_id}", 1)
    if as_json:
        click.echo(letter.model_dump_json(indent=2))
        return
    table = Table(show_header=False, title=f"dead letter {stockout_id}")
    for key, value in letter.model_dump(exclude={"stockout"}).items():
        table.add_row(key, "" if value is None else escape(str(value)))
    console.print(table)
    console.print("[bold]stockout as WDT sent it[/bold]")
    console.print_json(json.dumps(letter.stockout, ensure_ascii=False))


@dlq.command("requeue")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True)
@click.option("--reason", default=None)
@click.option("--code", default=None)
def dlq_requeue(ids, all_, reason, code) -> None:
    """Send dead letters back through the current mapping."""
    from shared.messages import publish_stockout

    store = _dlq_store()
    done = store.requeue(_select(store, ids, all_, reason, code), publish_stockout)
    console.print(f"requeued {len(done)}: {' '.join(done)}")


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def dlq_purge(ids, all_, yes) -> None:
    """Delete dead letters for good."""
    store = _dlq_store()
    chosen = _select(store, ids, all_, None, None)
    if not yes and not click.confirm(f"delete {len(chosen)} dead letter(s) for good?"):
        _fail("nothing deleted", 1)
    console.print(f"purged {len(store.purge(chosen))}")


# -- Flower, sandbox, demo ----------------------------------------------------------------------
@main.command()
@click.option("--port", default=5555, type=int)
@click.option("--address", default="127.0.0.1")
@click.option("--insecure", is_flag=True, help="allow running without FLOWER_BASIC_AUTH (local use only)")
def flower(port, address, insecure) -> None:
    """Flower on the project's broker, with basic auth from FLOWER_BASIC_AUTH=user:password."""
    from shared.celery_app import app

    if not os.environ.get("FLOWER_BASIC_AUTH") and not insecure:
        _fail("set FLOWER_BASIC_AUTH=user:password (or pass --insecure for local use)")
    # The credentials stay in the environment, where Flower reads them, never on the command line.
    app.start(["flower", f"--port={port}", f"--address={address}"])


@main.command()
@click.option("--port", default=8700, type=int)
@click.option("--host", default="127.0.0.1")
@click.option("--stockouts", default=0, type=int, help="generate this many stockouts at start")
@click.option("--bad", default=0, type=int, help="of which this many cannot be mapped")
def sandbox(port, host, stockouts, bad) -> None:
    """Serve the sandbox of both APIs (for the demo, tests and benchmarks)."""
    from sandbox import SandboxConfig
    from sandbox.server import serve

    serve(SandboxConfig(), host=host, port=port, stockouts=stockouts, bad=bad)


@main.command()
@click.option("--stockouts", default=3000, type=int)
@click.option("--bad", default=12, type=int)
def demo(stockouts, bad) -> None:
    """The whole pipeline against the sandbox: real Redis, a real worker and the poll, then a summary."""
    from shared.demo import run_demo

    sys.exit(run_demo(stockouts=stockouts, bad=bad, console=console))


if __name__ == "__main__":
    main()
