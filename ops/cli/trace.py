"""`stockout-sync trace`: where one stockout is, on one screen."""
from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from ops.cli.app import main
from ops.render import console, fail, print_history
from ops.trace import Trace, trace
from shared.runtime import runtime

BIP_FIELDS = ("id", "code", "vouchdate", "org", "warehouse", "bustype", "status", "defines!define1")


@main.command("trace")
@click.argument("order_no_or_stockout_id")
@click.option("--json", "as_json", is_flag=True, help="the whole trace as one JSON object")
def trace_command(order_no_or_stockout_id: str, as_json: bool) -> None:
    """Everything known about one stockout: our marks, lock, messages (both queues), dead letter and
    BIP record first, read without WDT; then WDT, asked from the times we know in 30-day windows back
    to WDT_LOOKUP_HORIZON_DAYS (the calls it took are shown). Exit 1 when nothing knows it."""
    found = trace(runtime(), order_no_or_stockout_id.strip())
    if as_json:
        click.echo(json.dumps(found.model_dump(mode="json"), ensure_ascii=False, indent=2))
    else:
        show(found)
    if not found.known:
        raise SystemExit(1)


def show(t: Trace) -> None:
    table = Table(title=f"stockout {escape(t.stockout_id)}" + (f" · order {escape(t.order_no)}" if t.order_no else ""),
                  show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("verdict", f"[bold]{t.verdict}[/bold]: {escape(t.summary)}")
    w = t.wdt
    if w.error:
        table.add_row("WDT", f"[red]could not ask[/red]: {escape(w.error)} ({w.calls} call(s))")
    elif w.found:
        verdict = ("synced by the filters" if w.passes_filters else f"skipped by the filters: {w.filter_reason}"
                   if w.passes_filters is False else w.filter_reason)
        table.add_row("WDT", f"status {w.status} · type {w.order_type} · warehouse {escape(w.warehouse_no)} · "
                             f"modified {w.modified} · consigned {w.consign_time} · {escape(verdict)} · "
                             f"{escape(w.lookup)}")
    else:
        table.add_row("WDT", escape(w.lookup) if w.asked else "not asked: no order number known")
    table.add_row("our mark", escape(t.mark_meaning))
    expires = f" (expires in {t.lock_ttl_s} s)" if t.lock_ttl_s else ""
    lock = f"task {t.lock_holder}{expires}" if t.lock_holder else "free"
    table.add_row("lock", escape(lock))
    for task in t.tasks:
        retries = f", retry {task.retries}" if task.retries else ""
        table.add_row("task", escape(f"{task.task_id}: {task.state}{retries} — {task.where}"))
    if not t.tasks:
        scanned = ", ".join(f"{n} {q}" for q, n in t.scanned.items())
        table.add_row("tasks", f"none in Redis (scanned {escape(scanned)}; "
                               "no result backend: Flower has finished ones)")
    letter = t.dead_letter or t.requeued_letter
    if t.dead_letter:
        table.add_row("dead letter", escape(f"{t.dead_letter.reason} · attempts {t.dead_letter.attempts} · "
                                            f"first failed {t.dead_letter.first_failed_at}"))
    elif t.requeued_letter:
        table.add_row("dead letter", escape(f"none now; requeued after: {t.requeued_letter.reason}"))
    if t.bip:
        shown = " · ".join(f"{k} {t.bip[k]}" for k in BIP_FIELDS if t.bip.get(k) not in (None, ""))
        lines = t.bip.get("othOutRecords") or []
        by = f" · found by {t.bip_found_by}" if t.bip_found_by != "id" else ""
        table.add_row("BIP record", escape(f"{shown} · {len(lines)} line(s){by}"))
    elif t.bip_error:
        table.add_row("BIP record", f"[red]{escape(t.bip_error)}[/red]")
    console.print(table)
    if letter:
        print_history(letter.history)
    if not t.known:
        fail(f"{t.query}: {t.verdict}: {t.summary}", 1)
