"""Dead letters: list, show, requeue, purge."""
from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from ops.cli.app import main, require
from ops.render import console, err_console, fail, print_history
from shared.deadletters.store import DeadLetterStore
from shared.queue.events import announce_requeued
from shared.queue.publisher import publish_stockout
from shared.runtime import runtime

SHOWN_IDS = 50  # ids printed after a requeue; a requeue of thousands prints the count
CONFIRM_OVER = 10  # a --reason/--code requeue matching more letters than this asks first, as --all does


def ascii_safe(text: str) -> str:
    """Control characters as escapes (a raw entry may hold anything, including terminal codes)."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


@main.group()
def dlq() -> None:
    """Dead letters: list, show, requeue, purge."""


def _dlq_store() -> DeadLetterStore:
    require()
    rt = runtime()
    store = DeadLetterStore(rt.redis, rt.settings.redis_prefix)
    store.expire()  # letters past DLQ_TTL_DAYS go before anyone reads them
    return store


def _select(
    store: DeadLetterStore, ids: tuple[str, ...], all_: bool, reason: str | None, code: str | None
) -> tuple[list[str], list[str]]:
    """The letters named, and the names no letter answers to (said, never taken for success)."""
    if ids:
        named = [(i, store.find_order(i) or i) for i in ids]  # an order number names its letter too
        known = {sid for _, sid in named if store.get(sid) is not None}
        return list(dict.fromkeys(sid for _, sid in named if sid in known)), [i for i, sid in named if sid not in known]
    if reason or code:
        return store.select(reason=reason, code=code), []
    if all_:
        return store.ids(), []  # oldest first: each letter's queue copy is then at the end of the list
    fail("name dead letters by id or order number, or use --all / --reason / --code")


def _unknown(names: list[str]) -> None:
    if names:
        err_console.print(f"[red]no dead letter for[/red] {escape(' '.join(names))} "
                          "(see `stockout-sync dlq list`)", soft_wrap=True)


@dlq.command("list")
@click.option("--reason", default=None, help="text the reason contains")
@click.option("--code", default=None, help="the remote system's error code")
@click.option("--json", "as_json", is_flag=True, help="a JSON list of the whole letters, for programs")
def dlq_list(reason: str | None, code: str | None, as_json: bool) -> None:
    """List dead letters (all, or those matching --reason / --code)."""
    store = _dlq_store()
    letters = [letter for letter in store.iter_all() if letter.matches(reason=reason, code=code)]
    if as_json:
        click.echo(json.dumps([letter.model_dump(mode="json") for letter in letters], ensure_ascii=False, indent=2))
        return
    table = Table(title=f"dead letters: {len(letters)} (queue length {store.queue_length()})")
    for column in ("stockout_id", "order_no", "stage", "reason", "attempts", "last failed (Beijing)"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        reason = letter.reason if letter.malformed else (
            f"{letter.error_class}{' ' + letter.code if letter.code else ''}: {letter.message}")
        table.add_row(escape(letter.stockout_id), escape(letter.order_no), letter.stage, escape(reason),
                      str(letter.attempts), letter.last_failed_at)
    console.print(table)


@dlq.command("show")
@click.argument("stockout_id_or_order_no")
@click.option("--json", "as_json", is_flag=True, help="the letter as one JSON object, for programs")
def dlq_show(stockout_id_or_order_no: str, as_json: bool) -> None:
    """One dead letter, by stockout id or WDT order number."""
    store = _dlq_store()
    name = stockout_id_or_order_no
    letter = store.get(name) or store.get(store.find_order(name) or "")
    if letter is None:
        fail(f"no dead letter for stockout or order {name}", 1)
    if as_json:
        click.echo(letter.model_dump_json(indent=2))
        return
    table = Table(show_header=False, title=f"dead letter {letter.stockout_id}")
    table.add_row("reason", escape(letter.reason))
    for key, value in letter.model_dump(exclude={"stockout", "history", "raw"}).items():
        table.add_row(key, "" if value is None else escape(str(value)))
    console.print(table)
    print_history(letter.history)
    if letter.malformed:
        # control characters escaped, so the terminal shows the bytes as they are
        console.print(f"[bold]the entry as it was on queue {escape(letter.queue)}[/bold] (not UTF-8 bytes as \\xNN)")
        console.print(escape(ascii_safe(letter.raw)), soft_wrap=True, markup=False)
        return
    console.print("[bold]stockout as WDT sent it[/bold]")
    console.print_json(json.dumps(letter.stockout, ensure_ascii=False))


@dlq.command("requeue")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="every dead letter (asks first)")
@click.option("--reason", default=None, help="those whose reason contains this text")
@click.option("--code", default=None, help="those with this remote error code")
@click.option("--yes", is_flag=True, help=f"do not ask (--all, or --reason/--code matching over {CONFIRM_OVER})")
def dlq_requeue(ids: tuple[str, ...], all_: bool, reason: str | None, code: str | None, yes: bool) -> None:
    """Send dead letters back through the current mapping.

    Names no letter answers to are listed and the command exits 1 (the others are still requeued).
    `--all`, and `--reason`/`--code` matching more than 10 letters, ask first. Malformed messages are
    refused (there is no stockout in them to sync): each gets a line, and the command exits 1 when it
    refused some and requeued nothing."""
    store = _dlq_store()
    chosen, unknown = _select(store, ids, all_, reason, code)
    _unknown(unknown)
    if not ids and chosen and (all_ or len(chosen) > CONFIRM_OVER) and not yes and \
            not click.confirm(f"requeue {len(chosen)} dead letter(s) through the current mapping?"):
        fail("nothing requeued", 1)
    refused = store.sort_out(chosen)[1]
    for sid in refused:
        console.print(f"not requeued {escape(sid)}: a malformed message has nothing to sync; "
                      "`dlq show` it, fix what wrote it, then `dlq purge` it")
    done = store.requeue([sid for sid in chosen if sid not in set(refused)], publish_stockout,
                         on_sent=lambda letters: announce_requeued(letter.task_id for letter in letters))
    _audit(store, "dlq.requeue", done, _words(ids, all_, reason, code) + " through the mapping in force")
    console.print(f"requeued {len(done)}" + (f": {' '.join(done)}" if len(done) <= SHOWN_IDS else ""))
    if unknown or (refused and not done):
        raise SystemExit(1)


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="every dead letter")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def dlq_purge(ids: tuple[str, ...], all_: bool, yes: bool) -> None:
    """Delete dead letters for good. Names no letter answers to are listed and the command exits 1
    (the others are still purged)."""
    store = _dlq_store()
    chosen, unknown = _select(store, ids, all_, None, None)
    _unknown(unknown)
    if chosen and not yes and not click.confirm(f"delete {len(chosen)} dead letter(s) for good?"):
        fail("nothing deleted", 1)
    purged = store.purge(chosen)
    _audit(store, "dlq.purge", purged, _words(ids, all_, None, None) + ", deleted for good")
    console.print(f"purged {len(purged)}")
    if unknown:
        raise SystemExit(1)


def _words(ids: tuple[str, ...], all_: bool, reason: str | None, code: str | None) -> str:
    if ids:
        return f"{len(ids)} named letter(s)"
    said = ", ".join(f"{k} = {v!r}" for k, v in (("reason", reason), ("code", code)) if v)
    return f"the letters whose {said}" if said else "every dead letter"


def _audit(store: DeadLetterStore, action: str, done: list[str], detail: str) -> None:
    from ops.console.audit import record_cli_change

    if done:
        record_cli_change(store.r, store.p, action, count=len(done), detail=detail, ids=done)
