"""One-off runs of the producer and the transform: poll, preview."""
from __future__ import annotations

import json
import sys

import click
from rich.markup import escape

from ops.cli.app import api_failure, check_mapping, main, require
from ops.render import console, err_console, fail
from shared.errors import StockoutSyncError
from shared.messages import publish_stockout
from worker.transform import preview as make_preview


@main.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object (what the poll did), for programs")
def poll(as_json: bool) -> None:
    """Run one poll now and print what it did; exit 1 when the pipeline is paused because Redis lost
    its state (see `recover`)."""
    require("wdt")
    # imported at call time: the pipeline's modules load shared.metrics, which must come after the metrics exporter
    from producer.poll import poll_once
    from shared.runtime import runtime

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
    # imported at call time: the pipeline's modules load shared.metrics, which must come after the metrics exporter
    from ops.trace import letter_times
    from shared import metrics
    from shared.runtime import runtime
    rt = runtime()
    with metrics.wdt_purpose("preview"):
        found = rt.wdt.find_by_no(stockout_no, near=letter_times(rt, stockout_no))
    if found.error is not None:
        api_failure(found.error)
    if found.record is None:
        fail(f"stockout {stockout_no} not found in WDT ({found.line()})", 1)
    err_console.print(f"stockout {escape(stockout_no)}: {escape(found.line())}")
    try:
        payload = make_preview(found.record, rt.mapping)
    except StockoutSyncError as err:
        fail(f"stockout {stockout_no} cannot be mapped: {err}", 1)
    console.print_json(json.dumps({"data": payload}, ensure_ascii=False))
