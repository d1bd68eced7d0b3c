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


def _json_lines_only() -> list[str]:
    """With LOG_FORMAT=json: keep the process's output one JSON object per line.

    Celery writes its banner and its shutdown notices straight to stdout, around logging, while the
    logs go to stderr. So in JSON mode the banner is switched off (`--quiet`, returned for Celery's
    argv) and stdout goes to /dev/null: the service itself never prints, it logs."""
    if get_settings().log_format != "json":
        return []
    devnull = os.open(os.devnull, os.O_WRONLY)
    sys.stdout.flush()
    os.dup2(devnull, 1)
    os.close(devnull)
    return ["--quiet"]


def _start_metrics(port: int | None) -> None:
    from shared import metrics_exporter

    try:
        metrics_exporter.start(get_settings(), port)
    except OSError as err:  # the port is taken: say which, rather than run without metrics
        _fail(f"metrics port {port or get_settings().metrics_port}: {err}")


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
@click.option("--metrics-port", type=int, default=None, help="Prometheus /metrics port (METRICS_PORT; 0 = off)")
def worker(concurrency, pool, hostname, metrics_port) -> None:
    """Run a worker that saves stockouts to BIP (queue `stockouts`)."""
    _check_mapping()
    _start_metrics(metrics_port)
    from shared.celery_app import STOCKOUT_QUEUE, app

    s = get_settings()
    app.worker_main(
        [
            *_json_lines_only(),
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
@click.option("--metrics-port", type=int, default=None, help="Prometheus /metrics port (METRICS_PORT; 0 = off)")
def beat(schedule_file, metrics_port) -> None:
    """Run beat and the producer: one process that schedules polls and runs them (queue `producer`)."""
    _check_mapping()
    _start_metrics(metrics_port)
    from shared.celery_app import PRODUCER_QUEUE, app

    s = get_settings()
    schedule_file = schedule_file or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"stockout-sync-beat-{s.redis_prefix}")
    app.worker_main(
        [
            *_json_lines_only(),
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
    # Flower knows brokers by their URL scheme and only reads events and queue lengths, so it runs
    # on kombu's own Redis transport; the hardened one (shared/broker.py) matters to consumers.
    app.conf.broker_transport = None
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


# -- operating it: status, reconcile ----------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for programs")
@click.option("--timeout", default=1.0, type=float, show_default=True, help="seconds to wait for the workers to answer")
@click.option("--health", type=click.Choice(["worker", "beat"]), default=None,
              help="check only this host's worker or beat process (a container health check)")
def status(as_json, timeout, health) -> None:
    """Where the sync stands; exits 1 when something needs attention (lag, dead letters, no worker)."""
    import redis

    from shared import status as report_status
    from shared.runtime import runtime

    from shared.redis_conn import reachable

    rt = runtime()
    # a quick ping first: the service's own client retries a lost connection for many seconds
    if not reachable(rt.settings.redis_url, timeout=max(timeout, 1.0)):
        _fail("Redis does not answer at REDIS_URL")
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
        _fail(f"Redis: {type(err).__name__}: {err}")
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        _print_status(report)
    sys.exit(1 if report.problems else 0)


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600)):
        if abs(value) < limit:
            return f"{value / size:.0f} {unit}"
    return f"{value / 86400:.1f} d"


def _print_status(report) -> None:
    from producer.poll import PollSummary

    table = Table(title=f"stockout-sync status at {report.now} (Beijing)", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    if report.cursor:
        table.add_row("cursor", f"{report.cursor} (lag {_seconds(report.lag_s)}; attention over {_seconds(report.max_lag_s)})")
    else:
        table.add_row("cursor", "not set: no poll has completed")
    if report.last_poll:
        line = PollSummary.model_validate(report.last_poll).line()
        table.add_row("last poll", f"{report.last_poll.get('started_at', '')} ({_seconds(report.last_poll_age_s)} ago): {escape(line)}")
    else:
        table.add_row("last poll", "none")
    table.add_row("queues", " · ".join(f"{name} {depth}" for name, depth in report.queues.items()))
    table.add_row("in flight", f"{report.in_flight} (delivered to a worker, not yet acknowledged)")
    table.add_row("synced", f"{report.synced} (stockouts marked done by the workers)")
    table.add_row("dead letters", str(report.dead_letters))
    for group in report.dead_letters_by_reason:
        table.add_row("", f"{group.count} × {escape(group.reason)} — e.g. {escape(group.example)}")
    token = report.bip_token
    if token.expires_at:
        renew = f"; shared copy renewed in {_seconds(token.renew_in_s)}" if token.renew_in_s is not None else ""
        table.add_row("BIP token", f"expires {token.expires_at} (in {_seconds(token.expires_in_s)}{renew})")
    else:
        table.add_row("BIP token", "cached, expiry unknown" if token.cached else "none cached (fetched by the next save)")
    for limiter in report.rate_limits:
        state = "free now" if limiter.free_now else f"{limiter.booked_ahead_s:.2f} s booked ahead, next slot in {limiter.next_slot_in_s:.2f} s"
        table.add_row(f"rate limit {limiter.name}", f"{limiter.rate_per_s:g}/s: {state}")
    if report.workers is None:
        table.add_row("workers", "could not ask (broker unreachable?)")
    else:
        alive = ", ".join(f"{escape(w.hostname)} ({', '.join(w.queues)})" for w in report.workers)
        table.add_row("workers", alive or "none answered")
    console.print(table)
    if report.problems:
        console.print("[bold red]needs attention:[/bold red]")
        for problem in report.problems:
            console.print(f"  • {escape(problem)}")
    else:
        console.print("[green]all good[/green]")


@main.command()
@click.option("--since", required=True, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]' (WDT modification time)")
@click.option("--until", required=True, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]'")
@click.option("--requeue-missing", is_flag=True, help="publish the stockouts missing in BIP again (not dead letters)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for programs")
def reconcile(since, until, requeue_missing, as_json) -> None:
    """Compare WDT, what this service marked synced, and BIP; exits 1 on any mismatch."""
    _check_mapping()
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from shared.errors import StockoutSyncError
    from shared.messages import publish_stockout
    from shared.reconcile import Reconcile
    from shared.runtime import runtime

    start, end = _parse_time(since, "--since"), _parse_time(until, "--until")
    if end <= start:
        _fail("--until must be after --since")
    job = Reconcile(runtime())
    total_s = (end - start).total_seconds()
    try:
        with Progress(
            TextColumn("[bold]reconcile"), BarColumn(),
            TextColumn("{task.fields[pages]} pages · {task.fields[fetched]} stockouts · {task.fields[mismatches]} mismatches"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
        ) as progress:
            bar = progress.add_task("reconcile", total=total_s, pages=0, fetched=0, mismatches=0)
            report = job.run(
                start, end,
                on_page=lambda r: progress.update(bar, pages=r.pages, fetched=r.fetched, mismatches=r.mismatches),
                on_slice=lambda slice_end: progress.update(bar, completed=(slice_end - start).total_seconds()),
            )
        if requeue_missing:
            job.requeue_missing(report, publish_stockout)
    except StockoutSyncError as err:
        _fail(str(err))
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        _print_reconcile(report, requeue_missing)
    sys.exit(1 if report.mismatches else 0)


RECONCILE_ROWS = 50


def _print_reconcile(report, requeued: bool) -> None:
    console.print(
        f"reconcile {report.since} → {report.until}: {report.fetched} read from WDT, {report.eligible} to sync, "
        f"{report.in_bip} in BIP; {len(report.missing)} missing in BIP, {len(report.duplicated)} present twice, "
        f"{len(report.changed)} changed in WDT since synced ({report.pages} pages, {report.duration_s:.1f} s)"
    )

    def show(title, columns, rows) -> None:
        if not rows:
            return
        table = Table(title=f"{title}: {len(rows)}")
        for n, column in enumerate(columns):  # ids and times whole, the words wrap
            table.add_column(column, no_wrap=n < len(columns) - 1, overflow="fold")
        for row in rows[:RECONCILE_ROWS]:
            table.add_row(*(escape(str(v)) for v in row))
        console.print(table)
        if len(rows) > RECONCILE_ROWS:
            console.print(f"… and {len(rows) - RECONCILE_ROWS} more (--json lists all)")

    show("missing in BIP", ("stockout_id", "order_no", "modified", "here", "BIP id once"),
         [(m.stockout_id, m.order_no, m.modified, m.state, m.bip_id) for m in report.missing])
    show("present twice in BIP", ("stockout_id", "order_no", "BIP records"),
         [(d.stockout_id, d.order_no, ", ".join(f"{r.id} ({r.code})" for r in d.records)) for d in report.duplicated])
    show("changed in WDT since synced", ("stockout_id", "order_no", "modified", "BIP written", "why"),
         [(c.stockout_id, c.order_no, c.modified, c.bip_written, c.why) for c in report.changed])
    dead = sum(1 for m in report.missing if m.state == "dead_letter")
    if requeued:
        console.print(f"requeued {len(report.requeued)}: {' '.join(report.requeued)}")
        if any(m.state == "done" for m in report.missing):
            console.print("note: BIP remembers each resubmitCheckKey; a record deleted in BIP may be answered as "
                          "already saved and stay missing — run reconcile again to see")
    if dead:
        console.print(f"{dead} of the missing are dead letters: `stockout-sync dlq list`, then `dlq requeue`")
    if report.unmarked:
        console.print(f"{report.unmarked} in BIP without a done mark here (harmless: a redelivery finds them saved)")


if __name__ == "__main__":
    main()
