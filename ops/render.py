"""Everything the CLI prints: the consoles, the one error line, and the status and reconcile tables."""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ops.status import BackfillView, Status
from producer.poll import PollSummary
from producer.reconcile.run import Report
from shared.deadletters.model import HistoryEntry

# Piped output (a file, grep, a log collector) is not wrapped: rich would fold it at 80 columns when the
# stream is not a terminal, splitting a line ("12 of\nthem unmappable") or a table row in two.
PIPED_WIDTH = 10_000


def make_console(*, stderr: bool = False) -> Console:
    """A console for stdout or stderr: the terminal's width on a TTY, no wrapping when piped."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPED_WIDTH if piped else None)


console = make_console()
err_console = make_console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    # soft_wrap: one line however narrow the terminal, so logs and scripts see the whole of it
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    sys.exit(code)


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600)):
        if abs(value) < limit:
            return f"{value / size:.0f} {unit}"
    return f"{value / 86400:.1f} d"


def print_status(report: Status) -> None:

    table = Table(title=f"stockout-sync status at {report.now} (Beijing)", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    if report.cursor:
        table.add_row(
            "cursor", f"{report.cursor} (lag {seconds(report.lag_s)}; attention over {seconds(report.max_lag_s)})"
        )
    else:
        table.add_row("cursor", "not set: no poll has completed")
    if report.last_poll:
        line = PollSummary.model_validate(report.last_poll).line()
        table.add_row(
            "last poll",
            f"{report.last_poll.get('started_at', '')} ({seconds(report.last_poll_age_s)} ago): {escape(line)}",
        )
    else:
        table.add_row("last poll", "none")
    if report.beat_heartbeat_age_s is None:
        table.add_row("beat", "no poll has run here yet")
    else:
        table.add_row("beat", f"{'alive' if report.beat_alive else '[red]not alive[/red]'}: last poll "
                              f"{seconds(report.beat_heartbeat_age_s)} ago")
    table.add_row("queues", " · ".join(f"{name} {depth}" for name, depth in report.queues.items()))
    table.add_row("in flight", f"{report.in_flight} (delivered to a worker, not yet acknowledged)")
    table.add_row("backlog", f"{report.backlog} messages (backfills pause at {report.high_water})")
    for view in report.backfills:
        table.add_row("backfill", backfill_line(view))
    table.add_row("synced", f"{report.synced} (stockouts marked done by the workers)")
    table.add_row("dead letters", str(report.dead_letters))
    for group in report.dead_letters_by_reason:
        table.add_row("", f"{group.count} × {escape(group.reason)} — e.g. {escape(group.example)}")
    token = report.bip_token
    if token.expires_at:
        renew = f"; shared copy renewed in {seconds(token.renew_in_s)}" if token.renew_in_s is not None else ""
        table.add_row("BIP token", f"expires {token.expires_at} (in {seconds(token.expires_in_s)}{renew})")
    else:
        table.add_row(
            "BIP token", "cached, expiry unknown" if token.cached else "none cached (fetched by the next save)"
        )
    for limiter in report.rate_limits:
        state = (
            "free now"
            if limiter.free_now
            else f"{limiter.booked_ahead_s:.2f} s booked ahead, next slot in {limiter.next_slot_in_s:.2f} s"
        )
        adapted = ""
        if limiter.ceiling_per_s and limiter.rate_per_s < limiter.ceiling_per_s:
            ago = f", last {seconds(limiter.since_refusal_s)} ago" if limiter.since_refusal_s is not None else ""
            adapted = f" (lowered from {limiter.ceiling_per_s:g}/s after {limiter.refusals} refusal(s){ago})"
        table.add_row(f"rate limit {limiter.name}", f"{limiter.rate_per_s:.3g}/s{adapted}: {state}")
    if report.breaker.scopes:
        for scope in report.breaker.scopes:
            table.add_row(f"paused: {scope['api']}",
                          f"[red]{scope['state']}[/red] since {scope['since']}: {escape(scope['cause'])}")
    else:
        table.add_row("circuit breaker", "closed")
    table.add_row("last reconcile", reconcile_line(report.last_reconcile))
    if report.mapping_problem is not None:
        table.add_row("mapping", f"[red]{escape(report.mapping_problem.line())}[/red]")
    if report.redis is not None:
        table.add_row("redis", escape(report.redis.line()))
    if report.clocks:
        table.add_row("clocks", escape(", ".join(f"{c.who} {c.skew_s:+.1f} s" for c in report.clocks))
                      + " (against Redis TIME)")
    if report.workers is None:
        table.add_row("workers", "could not ask (broker unreachable?)")
    else:
        alive = ", ".join(f"{escape(w.hostname)} ({', '.join(w.queues)})" for w in report.workers)
        table.add_row("workers", alive or "none answered")
    console.print(table)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    if report.problems:
        console.print("[bold red]needs attention:[/bold red]")
        for problem in report.problems:
            console.print(f"  • {escape(problem)}")
    else:
        console.print("[green]all good[/green]")



def backfill_line(view: BackfillView) -> str:
    job = view.job
    eta = f", ETA {seconds(view.eta_s)}" if view.eta_s is not None and not job.finished else ""
    return (f"{job.id} {job.state} {job.since} → {job.until}: {view.progress:.0%} (cursor {job.cursor or '—'}), "
            f"{job.published} published, {job.already_done} already done, {job.already_queued} already queued{eta}")


def print_backfills(views: Sequence[BackfillView]) -> None:
    table = Table(title="backfill jobs")
    for column in ("id", "state", "range (Beijing)", "progress", "published", "already done/queued", "ETA"):
        table.add_column(column)
    for view in views:
        job = view.job
        table.add_row(job.id, job.state, f"{job.since} → {job.until}", f"{view.progress:.0%}", str(job.published),
                      f"{job.already_done}/{job.already_queued}",
                      "" if job.finished else seconds(view.eta_s))
    console.print(table)


RECONCILE_ROWS = 50


def reconcile_line(last: dict | None) -> str:
    """The newest daily reconcile in one line (its whole report: `LINDEX <prefix>:reconcile:reports 0`)."""
    if not last:
        return "none stored (RECONCILE_DAILY_AT runs one a day)"
    checks = last.get("checks") or {}
    unverified = [name for name, check in checks.items()
                  if isinstance(check, dict) and check.get("state") != "verified"]
    return escape(
        f"{last.get('since', '')} → {last.get('until', '')} (finished {last.get('finished_at', '')}): "
        f"{last.get('mismatches', 0)} mismatches ({len(last.get('missing') or [])} missing, "
        f"{len(last.get('duplicated') or [])} twice, {len(last.get('changed') or [])} changed); "
        + (f"not verified: {', '.join(unverified)}" if unverified else "all checks verified")
    )


CHECK_NAMES = {"missing": "missing in BIP", "duplicates": "present twice in BIP",
               "changed": "changed in WDT since synced"}


def print_reconcile(report: Report) -> None:
    console.print(
        f"reconcile {report.since} → {report.until}: {report.fetched} read from WDT, {report.eligible} to sync, "
        f"{report.in_bip} proven in BIP; {len(report.missing)} missing in BIP, {len(report.duplicated)} present twice, "
        f"{len(report.changed)} changed in WDT since synced, {len(report.unknown)} unknown "
        f"({report.pages} pages, BIP calls: {report.bip_calls['list']} list, {report.bip_calls['detail']} detail, "
        f"{report.bip_calls['code']} by code; {report.duration_s:.1f} s)"
    )

    def show(title: str, columns: Sequence[str], rows: Sequence[tuple[object, ...]]) -> None:
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

    show("missing in BIP", ("stockout_id", "order_no", "modified", "here", "BIP id once", "proof"),
         [(m.stockout_id, m.order_no, m.modified, m.state, m.bip_id, m.proof) for m in report.missing])
    show("present twice in BIP", ("stockout_id", "order_no", "BIP records"),
         [(d.stockout_id, d.order_no, ", ".join(f"{r.id} ({r.code})" for r in d.records)) for d in report.duplicated])
    show("changed in WDT since synced", ("stockout_id", "order_no", "modified", "BIP written", "why"),
         [(c.stockout_id, c.order_no, c.modified, c.bip_written, c.why) for c in report.changed])
    show("unknown: could not be proven present or absent (never requeued)",
         ("stockout_id", "order_no", "here", "BIP id", "why"),
         [(u.stockout_id, u.order_no, u.state, u.bip_id, u.why) for u in report.unknown])
    console.print("[bold]checks[/bold]")
    for name, check in report.checks:
        if check.state == "verified":
            console.print(f"  {CHECK_NAMES[name]}: [green]verified[/green] — {escape(check.why)}")
        else:
            console.print(f"  {CHECK_NAMES[name]}: [yellow]NOT verified[/yellow] — {escape(check.why)}")
    dead = sum(1 for m in report.missing if m.state == "dead_letter")
    if dead:
        console.print(f"{dead} of the missing are dead letters: `stockout-sync dlq list`, then `dlq requeue`")
    if report.unmarked:
        console.print(f"{report.unmarked} in BIP without a done mark here (harmless: a redelivery finds them saved)")
    verdict = {0: "[green]verified, nothing missing, twice or changed[/green] (exit 0)",
               1: "[red]verified mismatches found[/red] (exit 1)",
               3: "[yellow]nothing proven wrong, but not everything could be verified[/yellow] (exit 3)"}
    console.print(verdict[report.exit_code])


def print_requeue(report: Report) -> None:
    if report.requeued:
        console.print(f"requeued {len(report.requeued)}: {' '.join(report.requeued)}")
    else:
        console.print("nothing requeued: nothing is proven missing (dead letters aside)")
    for sid, why in report.requeue_skipped.items():
        console.print(f"not requeued {escape(sid)}: {escape(why)}")
    if report.unknown:
        console.print(f"{len(report.unknown)} unknown stockout(s) were not requeued: run reconcile again later")


def print_history(history: Sequence[HistoryEntry]) -> None:
    """A dead letter's story, oldest first: each failure with its time and reason, each requeue."""
    if not history:
        return
    console.print(f"[bold]history[/bold] ({len(history)})")
    for entry in history:
        console.print(f"  {escape(entry.line())}")
