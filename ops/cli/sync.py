"""One-off runs of the producer and the transform: poll, preview."""
from __future__ import annotations

import json
import sys

import click
from rich.markup import escape

from ops.cli.app import api_failure, check_mapping, main, require
from ops.preview import preview as make_preview
from ops.render import console, err_console, fail
from producer.poll import poll_once
from shared.core.errors import StockoutSyncError
from shared.queue.publisher import publish_stockout
from shared.runtime import runtime


@main.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object (what the poll did), for programs")
def poll(as_json: bool) -> None:
    """Run one poll now and print what it did; exit 1 when the pipeline is paused because Redis lost
    its state (see `recover`)."""
    require("wdt")
    check_mapping()

    try:
        summary = poll_once(runtime(), publish_stockout, trips_breaker=False)
    except StockoutSyncError as err:
        api_failure(err)
    if as_json:
        click.echo(summary.model_dump_json(indent=2))
    else:
        console.print(summary.line())
    if summary.skipped.startswith("paused:"):
        sys.exit(1)


@main.command()
@click.argument("stockout_no")
def preview(stockout_no: str) -> None:
    """Fetch one stockout from WDT and print the BIP payload it would become (or the mapping error).

    Looked up as `trace` does: from the times a dead letter knows, then in 30-day windows back to
    WDT_LOOKUP_HORIZON_DAYS; the calls it took go to stderr."""
    require("wdt")
    check_mapping()
    try:
        shown = make_preview(runtime(), stockout_no)
    except StockoutSyncError as err:
        api_failure(err)
    if not shown.found:
        fail(f"stockout {stockout_no} not found in WDT ({shown.lookup})", 1)
    err_console.print(f"stockout {escape(stockout_no)}: {escape(shown.lookup)}")
    if shown.error:
        fail(f"stockout {stockout_no} cannot be mapped: {shown.error}", 1)
    console.print_json(json.dumps(shown.payload, ensure_ascii=False))
