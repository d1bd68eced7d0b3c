"""`stockout-sync backfill`: record, list, show, cancel and follow backfill jobs, with guard rails
(ops/backfill.py: a range cut at now, a long one asked for, the whole --until day, a job waiting for
a live beat)."""
from __future__ import annotations

import json
import re
import time

import click
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ops.backfill import beat_walks, plan, start_backfill
from ops.cli.app import check_mapping, main, require
from ops.console.audit import record_cli_change
from ops.render import backfill_line, console, err_console, fail, print_backfills, seconds
from ops.status import backfill_views
from producer.backfill.jobs import JobStore, job_dict, job_json
from shared.core.settings import get_settings
from shared.core.timeutil import format_wire
from shared.runtime import Runtime, runtime

DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@main.group(invoke_without_command=True)
@click.option("--since", default=None, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]' (a date alone: its 00:00:00)")
@click.option("--until", default=None,
              help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]'; a date alone includes that whole day (to 23:59:59); "
                   "a time after now is cut at now, with a warning")
@click.option("--yes", is_flag=True, help="do not ask when the range is longer than BACKFILL_MAX_DAYS")
@click.option("--follow", is_flag=True, help="show a progress bar until the job ends (Ctrl-C leaves it running)")
@click.option("--json", "as_json", is_flag=True, help="print the job as one JSON object")
@click.pass_context
def backfill(ctx: click.Context, since: str | None, until: str | None, yes: bool, follow: bool, as_json: bool) -> None:
    """Record a backfill job for a past range; the producer (beat) walks it slice by slice.

    Nothing has to stay open: the job lives in Redis and resumes after any restart; without a live
    beat (no poll for two intervals) it waits for one, and says so. A range longer than
    BACKFILL_MAX_DAYS (365) asks first. See also `backfill list`, `backfill show ID`, `backfill cancel ID`."""
    if ctx.invoked_subcommand is not None:
        return
    if since is None or until is None:
        fail("backfill needs --since and --until (or one of: list, show ID, cancel ID)")
    require()  # the job is recorded in Redis; beat, which walks it, checks the WDT credentials
    check_mapping()
    try:
        planned = plan(since, until, max_days=get_settings().backfill_max_days)
    except ValueError as err:
        fail(str(err))
    if planned.cut:
        err_console.print(f"[yellow]warning:[/yellow] {escape(planned.cut)}", soft_wrap=True)
    rt = runtime()
    if planned.too_long and not yes and not click.confirm(
            f"backfill {planned.days:.0f} days ({format_wire(planned.start)} → {format_wire(planned.end)}), more "
            f"than BACKFILL_MAX_DAYS={rt.settings.backfill_max_days:g}?", err=True):
        fail("nothing recorded (--yes records it without asking)", 1)
    job = start_backfill(rt, planned)
    record_cli_change(rt.redis, rt.settings.redis_prefix, "backfill.start", count=1,
                      detail=f"{job.since} → {job.until}", ids=[job.id])
    alive, walks = beat_walks(rt)
    if as_json:
        click.echo(job_json(job, beat_alive=alive))
    else:
        console.print(f"backfill job {job.id} recorded: {job.since} → {job.until}; {walks}. "
                      f"Watch: stockout-sync backfill show {job.id}")
    if follow:
        _follow(rt, job.id)


@backfill.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON array of the jobs, for programs")
def backfill_list(as_json: bool) -> None:
    """Every backfill job, oldest first, with its progress and ETA."""
    views = backfill_views(runtime())
    if as_json:
        click.echo(json.dumps([job_dict(view.job, eta_s=view.eta_s) for view in views], ensure_ascii=False, indent=2))
    else:
        print_backfills(views)


@backfill.command("show")
@click.argument("job_id")
@click.option("--follow", is_flag=True, help="show a progress bar until the job ends")
@click.option("--json", "as_json", is_flag=True, help="print the job as one JSON object")
def backfill_show(job_id: str, follow: bool, as_json: bool) -> None:
    """One job: range, slice cursor, counts, state, ETA from the measured drain rate."""
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
    rt = runtime()
    job = JobStore(rt.redis, rt.settings.redis_prefix).cancel(job_id)
    if job is None:
        fail(f"no backfill job {job_id!r} (see `stockout-sync backfill list`)", 1)
    record_cli_change(rt.redis, rt.settings.redis_prefix, "backfill.cancel", count=1,
                      detail=f"{job.since} → {job.until} at cursor {job.cursor or '—'}", ids=[job.id])
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
