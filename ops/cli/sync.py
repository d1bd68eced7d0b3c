"""One-off runs of the producer and the transform: poll, backfill jobs, preview."""
from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ops.cli.app import api_failure, check_mapping, main, parse_time, require
from ops.render import backfill_line, console, err_console, fail, print_backfills, seconds
from ops.status import backfill_views
from producer.jobs import JobStore, job_json
from shared.errors import StockoutSyncError
from shared.messages import publish_stockout
from shared.stats import saved as saved_count
from worker.transform import preview as make_preview

if TYPE_CHECKING:  # for the annotations only: the pipeline's modules load at call time (see below)
    from shared.runtime import Runtime


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


@main.group(invoke_without_command=True)
@click.option("--since", default=None, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]'")
@click.option("--until", default=None, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]'")
@click.option("--follow", is_flag=True, help="show a progress bar until the job ends (Ctrl-C leaves it running)")
@click.option("--json", "as_json", is_flag=True, help="print the job as one JSON object")
@click.pass_context
def backfill(ctx: click.Context, since: str | None, until: str | None, follow: bool, as_json: bool) -> None:
    """Record a backfill job for a past range; the producer (beat) walks it slice by slice.

    Nothing has to stay open: the job lives in Redis and resumes after any restart. See also
    `backfill list`, `backfill show ID`, `backfill cancel ID`."""
    if ctx.invoked_subcommand is not None:
        return
    if since is None or until is None:
        fail("backfill needs --since and --until (or one of: list, show ID, cancel ID)")
    require()  # the job is recorded in Redis; beat, which walks it, checks the WDT credentials
    # imported at call time: the pipeline's modules load shared.metrics, which must come after the metrics exporter
    from shared.runtime import runtime

    check_mapping()
    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    if end <= start:
        fail(f"--until {until!r} must be after --since {since!r}")
    rt = runtime()
    job = JobStore(rt.redis, rt.settings.redis_prefix).create(
        start, end, slice_s=int(rt.settings.slice_days * 86400), synced=saved_count(rt.redis, rt.settings.redis_prefix))
    if as_json:
        click.echo(job_json(job))
    else:
        console.print(f"backfill job {job.id} recorded: {job.since} → {job.until}; the producer (beat) walks it "
                      f"now. Watch: stockout-sync backfill show {job.id}")
    if follow:
        _follow(rt, job.id)


@backfill.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def backfill_list(as_json: bool) -> None:
    """Every backfill job, oldest first, with its progress and ETA."""
    from shared.runtime import runtime

    views = backfill_views(runtime())
    if as_json:
        for view in views:
            click.echo(job_json(view.job, eta_s=view.eta_s))
    else:
        print_backfills(views)


@backfill.command("show")
@click.argument("job_id")
@click.option("--follow", is_flag=True, help="show a progress bar until the job ends")
@click.option("--json", "as_json", is_flag=True, help="print the job as one JSON object")
def backfill_show(job_id: str, follow: bool, as_json: bool) -> None:
    """One job: range, slice cursor, counts, state, ETA from the measured drain rate."""
    from shared.runtime import runtime

    rt = runtime()
    job = JobStore(rt.redis, rt.settings.redis_prefix).get(job_id)
    if job is None:
        fail(f"no backfill job {job_id!r} (see `stockout-sync backfill list`)", 1)
    if follow:
        _follow(rt, job_id)
        job = JobStore(rt.redis, rt.settings.redis_prefix).get(job_id) or job
    view = backfill_views(rt, [job])[0]
    if as_json:
        click.echo(job_json(job, eta_s=view.eta_s))
    else:
        console.print(backfill_line(view))


@backfill.command("cancel")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="print the job as one JSON object")
def backfill_cancel(job_id: str, as_json: bool) -> None:
    """Stop a job: the producer publishes nothing more for it (messages already queued are still saved)."""
    from shared.runtime import runtime

    rt = runtime()
    job = JobStore(rt.redis, rt.settings.redis_prefix).cancel(job_id)
    if job is None:
        fail(f"no backfill job {job_id!r} (see `stockout-sync backfill list`)", 1)
    if as_json:
        click.echo(job_json(job))
    else:
        console.print(f"backfill job {job.id} {job.state} at cursor {job.cursor or '—'}")


def _follow(rt: Runtime, job_id: str) -> None:
    """A progress bar over the job's range until it ends; the job goes on if this is interrupted."""
    store = JobStore(rt.redis, rt.settings.redis_prefix)
    with Progress(
        TextColumn(f"[bold]backfill {job_id}"), BarColumn(), TextColumn("{task.fields[line]}"), TimeElapsedColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task("backfill", total=1.0, line="")
        while True:
            job = store.get(job_id)
            if job is None:
                return
            view = backfill_views(rt, [job])[0]
            eta = f" · ETA {seconds(view.eta_s)}" if view.eta_s is not None and not job.finished else ""
            progress.update(task, completed=view.progress,
                            line=f"{job.published} published · {job.already_done} already done{eta} · {job.state}")
            if job.finished:
                return
            time.sleep(1.0)


@main.command()
@click.argument("stockout_no")
def preview(stockout_no: str) -> None:
    """Fetch one stockout from WDT and print the BIP payload it would become (or the mapping error)."""
    require("wdt")
    check_mapping()
    # imported at call time: the pipeline's modules load shared.metrics, which must come after the metrics exporter
    from shared import metrics
    from shared.runtime import runtime
    rt = runtime()
    try:
        with metrics.wdt_purpose("preview"):
            raw = rt.wdt.get_by_no(stockout_no)
    except StockoutSyncError as err:
        api_failure(err)
    if raw is None:
        fail(f"stockout {stockout_no} not found in WDT", 1)
    try:
        payload = make_preview(raw, rt.mapping)
    except StockoutSyncError as err:
        fail(f"stockout {stockout_no} cannot be mapped: {err}", 1)
    console.print_json(json.dumps({"data": payload}, ensure_ascii=False))
