"""Everything the CLI prints: the consoles, the one error line, and the status and reconcile tables."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # for the annotations only: ops.reconcile loads shared.metrics, which must come after the exporter
    from ops.reconcile import Report
    from ops.status import Status
    from shared.deadletters import HistoryEntry

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[red]error:[/red] {escape(message)}")
    sys.exit(code)


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600)):
        if abs(value) < limit:
            return f"{value / size:.0f} {unit}"
    return f"{value / 86400:.1f} d"


def print_status(report: Status) -> None:
    # imported at call time: the pipeline's modules load shared.metrics, which must come after the metrics exporter
    from producer.poll import PollSummary


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
    table.add_row("queues", " · ".join(f"{name} {depth}" for name, depth in report.queues.items()))
    table.add_row("in flight", f"{report.in_flight} (delivered to a worker, not yet acknowledged)")
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



RECONCILE_ROWS = 50


def print_reconcile(report: Report, requeued: bool) -> None:
    console.print(
        f"reconcile {report.since} → {report.until}: {report.fetched} read from WDT, {report.eligible} to sync, "
        f"{report.in_bip} in BIP; {len(report.missing)} missing in BIP, {len(report.duplicated)} present twice, "
        f"{len(report.changed)} changed in WDT since synced ({report.pages} pages, {report.duration_s:.1f} s)"
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


def print_history(history: Sequence[HistoryEntry]) -> None:
    """A dead letter's story, oldest first: each failure with its time and reason, each requeue."""
    if not history:
        return
    console.print(f"[bold]history[/bold] ({len(history)})")
    for entry in history:
        console.print(f"  {escape(entry.line())}")
