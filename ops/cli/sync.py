"""One-off runs of the producer and the transform: poll, backfill, preview."""
from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ops.cli.app import check_mapping, main, parse_time
from ops.render import console, err_console, fail
from shared.errors import StockoutSyncError
from shared.messages import publish_stockout
from worker.transform import preview as make_preview

if TYPE_CHECKING:  # for the annotations only: the pipeline's modules load at call time (see below)
    from producer.poll import PollSummary


@main.command()
def poll() -> None:
    """Run one poll now and print what it did."""
    # imported at call time: the pipeline's modules load shared.metrics, which must come after the metrics exporter
    from producer.poll import poll_once
    from shared.runtime import runtime

    check_mapping()

    summary = poll_once(runtime(), publish_stockout)
    console.print(summary.line())


@main.command()
@click.option("--since", required=True, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]'")
@click.option("--until", required=True, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]'")
def backfill(since: str, until: str) -> None:
    """Publish every stockout modified in a past range (safe beside beat; does not move the cursor)."""
    # imported at call time: the pipeline's modules load shared.metrics, which must come after the metrics exporter
    from producer.poll import backfill as run_backfill
    from shared.runtime import runtime

    check_mapping()


    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    if end <= start:
        fail("--until must be after --since")
    total_s = (end - start).total_seconds()
    with Progress(
        TextColumn("[bold]backfill"),
        BarColumn(),
        TextColumn("{task.fields[pages]} pages · {task.fields[stockouts]} stockouts"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task("backfill", total=total_s, pages=0, stockouts=0)

        def on_progress(summary: PollSummary) -> None:
            progress.update(task, pages=summary.pages, stockouts=summary.fetched)

        def on_slice(slice_end: datetime) -> None:
            progress.update(task, completed=(slice_end - start).total_seconds())

        summary = run_backfill(runtime(), publish_stockout, start, end, on_progress=on_progress, on_slice=on_slice)
    console.print(summary.line())


@main.command()
@click.argument("stockout_no")
def preview(stockout_no: str) -> None:
    """Fetch one stockout from WDT and print the BIP payload it would become (or the mapping error)."""
    # imported at call time: the pipeline's modules load shared.metrics, which must come after the metrics exporter
    from shared.runtime import runtime


    rt = runtime()
    try:
        raw = rt.wdt.get_by_no(stockout_no)
    except StockoutSyncError as err:
        fail(f"WDT: {err}")
    if raw is None:
        fail(f"stockout {stockout_no} not found in WDT", 1)
    try:
        payload = make_preview(raw, rt.mapping)
    except StockoutSyncError as err:
        fail(f"stockout {stockout_no} cannot be mapped: {err}", 1)
    console.print_json(json.dumps({"data": payload}, ensure_ascii=False))
