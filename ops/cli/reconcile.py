"""`reconcile`: WDT, our marks and BIP compared over a range."""
from __future__ import annotations

import sys

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ops.cli.app import check_mapping, main, parse_time
from ops.render import err_console, fail, print_reconcile
from shared.errors import StockoutSyncError
from shared.messages import publish_stockout


@main.command()
@click.option("--since", required=True, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]' (WDT modification time)")
@click.option("--until", required=True, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]'")
@click.option("--requeue-missing", is_flag=True, help="publish the stockouts missing in BIP again (not dead letters)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for programs")
def reconcile(since: str, until: str, requeue_missing: bool, as_json: bool) -> None:
    """Compare WDT, what this service marked synced, and BIP; exits 1 on any mismatch."""
    # imported at call time: the pipeline's modules load shared.metrics, which must come after the metrics exporter
    from ops.reconcile import Reconcile
    from shared.runtime import runtime

    check_mapping()


    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    if end <= start:
        fail("--until must be after --since")
    job = Reconcile(runtime())
    total_s = (end - start).total_seconds()
    try:
        with Progress(
            TextColumn("[bold]reconcile"),
            BarColumn(),
            TextColumn(
                "{task.fields[pages]} pages · {task.fields[fetched]} stockouts · {task.fields[mismatches]} mismatches"
            ),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
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
        fail(str(err))
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        print_reconcile(report, requeue_missing)
    sys.exit(1 if report.mismatches else 0)
