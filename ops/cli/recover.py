"""`recover`: rebuild a state Redis lost (or replaced) from BIP, then let the pipeline run again."""
from __future__ import annotations

import click
from rich.markup import escape

from ops.cli.app import api_failure, check_mapping, main, parse_time, require
from ops.render import console, err_console, fail
from producer.recover import recover as run_recover
from shared.core.errors import StockoutSyncError
from shared.core.timeutil import now_beijing
from shared.queue.publisher import publish_stockout
from shared.runtime import runtime


@main.command()
@click.option("--since", required=True,
              help="Beijing time 'yyyy-MM-dd[ HH:mm:ss]' (WDT modification time): before the oldest stockout "
                   "that may be queued or in flight, e.g. the start of a running backfill, or cursor − lookback")
@click.option("--until", default=None, help="Beijing time; default now")
@click.option("--cursor", default=None,
              help="where polling goes on from, minus the lookback; default --until (it only moves forwards)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for programs")
def recover(since: str, until: str | None, cursor: str | None, as_json: bool) -> None:
    """New: after Redis lost its state (`status` names the `state` pause), rebuild the done marks of
    stockouts in the range from BIP's verified answers, publish those proven absent, restore the
    cursor and the epoch, and let the pipeline run again. Every later save of an older stockout first
    proves absence in BIP. Exit 0 done, 1 some stockouts unknown (they prove absence before saving)."""
    require("wdt", "bip")
    check_mapping()
    start = parse_time(since, "--since")
    end = parse_time(until, "--until") if until else now_beijing().replace(microsecond=0)
    if end <= start:
        fail("--until must be after --since")
    go_on = parse_time(cursor, "--cursor") if cursor else None
    err_console.print(f"recovering {escape(since)} → {end:%Y-%m-%d %H:%M:%S} (Beijing) from BIP…")
    try:
        result = run_recover(runtime(), start, end, publish=publish_stockout, cursor=go_on)
    except StockoutSyncError as err:
        api_failure(err)
    if as_json:
        click.echo(result.model_dump_json(indent=2))
    else:
        console.print(f"state recovered for {result.since} → {result.until} (Beijing): {result.fetched} stockouts "
                      f"read, {result.marked_done} done marks rebuilt from BIP, {len(result.requeued)} proven absent "
                      f"and published, {result.unknown_total} unknown")
        if result.unknown:
            console.print("unknown (each proves absence in BIP before it is saved): "
                          + escape(" ".join(result.unknown)))
        console.print(f"epoch {result.epoch}, cursor {result.cursor}; "
                      f"{'the pause is over' if result.closed else 'the pipeline was not paused'}")
    raise SystemExit(1 if result.unknown_total else 0)
