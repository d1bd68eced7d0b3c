"""`reconcile`: WDT, our marks and BIP compared over a range, every answer from BIP verified."""
from __future__ import annotations

import sys

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ops.cli.app import api_failure, check_mapping, main, parse_time, require
from ops.render import err_console, fail, print_reconcile, print_requeue
from producer.reconcile.run import Reconcile
from shared.core.errors import StockoutSyncError
from shared.queue.publisher import publish_stockout
from shared.runtime import runtime

EXIT_HELP = """\b
Exit codes: 0 every check verified and nothing found; 1 a verified mismatch
(missing, present twice, changed); 3 nothing proven wrong, but something could
not be verified (BIP's list ignored the filter or omits fields, a detail call
failed, the --max-calls budget ran out); 2 bad arguments or configuration."""


@main.command(epilog=EXIT_HELP)
@click.option("--since", required=True, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]' (WDT modification time)")
@click.option("--until", required=True, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]'")
@click.option("--requeue-missing", is_flag=True,
              help="publish again what is proven missing in BIP (not dead letters, never the unknown); asks first")
@click.option("--yes", is_flag=True, help="with --requeue-missing: do not ask for confirmation")
@click.option("--max-calls", type=click.IntRange(min=0), default=None,
              help="at most this many per-stockout BIP look-ups (detail, code); the rest is reported unknown")
@click.option("--sample", is_flag=True,
              help="with --max-calls: look up a random sample across the range, not the first N")
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for programs")
def reconcile(since: str, until: str, requeue_missing: bool, yes: bool, max_calls: int | None, sample: bool,
              as_json: bool) -> None:
    """Compare WDT, what this service marked synced, and BIP; says what it could and could not verify."""
    require("wdt", "bip")
    check_mapping()
    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    if end <= start:
        fail("--until must be after --since")
    if sample and max_calls is None:
        fail("--sample needs --max-calls N (the size of the sample)")
    job = Reconcile(runtime(), max_calls=max_calls, sample=sample, keep_raw=requeue_missing)
    total_s = (end - start).total_seconds()
    try:
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
        ) as progress:
            bar = progress.add_task("WDT range", total=total_s, info="")
            probes: list[TaskID] = []

            def on_probe(done: int, total: int) -> None:
                # the look-ups by id go through the shared BIP rate limiter: at 40 a minute this is the long part
                if not probes:
                    probes.append(progress.add_task("BIP by id", total=total, info="detail / code look-ups"))
                progress.update(probes[0], completed=done)

            report = job.run(
                start, end,
                on_page=lambda r: progress.update(
                    bar, info=f"{r.pages} pages · {r.fetched} stockouts · {r.mismatches} mismatches so far"),
                on_slice=lambda slice_end: progress.update(bar, completed=(slice_end - start).total_seconds()),
                on_probe=on_probe,
            )
    except StockoutSyncError as err:
        api_failure(err)
    if not as_json:
        print_reconcile(report)
    candidates = [m for m in report.missing if m.state != "dead_letter"]
    acted = False
    if requeue_missing and candidates:
        ids = " ".join(m.stockout_id for m in candidates)
        question = f"publish {len(candidates)} stockout(s) proven missing in BIP again ({ids})?"
        try:
            confirmed = yes or click.confirm(question, err=True)
        except click.Abort:  # no terminal to answer on: as good as "no"
            confirmed = False
        if confirmed:
            try:
                sent = job.requeue_missing(report, publish_stockout)
                if sent:
                    from ops.console.audit import record_cli_change

                    record_cli_change(job.rt.redis, job.rt.settings.redis_prefix, "reconcile.requeue",
                                      count=len(sent), detail=f"reconcile {report.since} → {report.until}: "
                                      "proven missing in BIP, published through the mapping in force", ids=sent)
            except StockoutSyncError as err:
                fail(str(err))
            acted = True
        else:
            err_console.print("nothing requeued")
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    elif requeue_missing and (acted or not candidates):
        print_requeue(report)
    sys.exit(report.exit_code)
