"""Dead letters: list, show, requeue, purge."""
from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from ops.cli.app import main
from ops.render import console, fail
from shared.deadletters import DeadLetterStore
from shared.messages import publish_stockout


@main.group()
def dlq() -> None:
    """Dead letters: list, show, requeue, purge."""


def _dlq_store() -> DeadLetterStore:
    # imported at call time: the pipeline's modules load shared.metrics, which must come after the metrics exporter
    from shared.runtime import runtime

    rt = runtime()
    return DeadLetterStore(rt.redis, rt.settings.redis_prefix)


def _select(
    store: DeadLetterStore, ids: tuple[str, ...], all_: bool, reason: str | None, code: str | None
) -> list[str]:
    if ids:
        return list(ids)
    if all_ or reason or code:
        return [letter.stockout_id for letter in store.all() if letter.matches(reason=reason, code=code)]
    fail("name dead letters by id, or use --all / --reason / --code")


@dlq.command("list")
@click.option("--reason", default=None, help="text the reason contains")
@click.option("--code", default=None, help="the remote system's error code")
@click.option("--json", "as_json", is_flag=True)
def dlq_list(reason: str | None, code: str | None, as_json: bool) -> None:
    store = _dlq_store()
    letters = [letter for letter in store.all() if letter.matches(reason=reason, code=code)]
    if as_json:
        click.echo(json.dumps([letter.model_dump(mode="json") for letter in letters], ensure_ascii=False, indent=2))
        return
    table = Table(title=f"dead letters: {len(letters)} (queue length {store.queue_length()})")
    for column in ("stockout_id", "order_no", "stage", "reason", "attempts", "last failed (Beijing)"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        reason = f"{letter.error_class}{' ' + letter.code if letter.code else ''}: {letter.message}"
        table.add_row(escape(letter.stockout_id), escape(letter.order_no), letter.stage, escape(reason),
                      str(letter.attempts), letter.last_failed_at)
    console.print(table)


@dlq.command("show")
@click.argument("stockout_id")
@click.option("--json", "as_json", is_flag=True)
def dlq_show(stockout_id: str, as_json: bool) -> None:
    letter = _dlq_store().get(stockout_id)
    if letter is None:
        fail(f"no dead letter for stockout {stockout_id}", 1)
    if as_json:
        click.echo(letter.model_dump_json(indent=2))
        return
    table = Table(show_header=False, title=f"dead letter {stockout_id}")
    for key, value in letter.model_dump(exclude={"stockout"}).items():
        table.add_row(key, "" if value is None else escape(str(value)))
    console.print(table)
    console.print("[bold]stockout as WDT sent it[/bold]")
    console.print_json(json.dumps(letter.stockout, ensure_ascii=False))


@dlq.command("requeue")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True)
@click.option("--reason", default=None)
@click.option("--code", default=None)
def dlq_requeue(ids: tuple[str, ...], all_: bool, reason: str | None, code: str | None) -> None:
    """Send dead letters back through the current mapping."""
    store = _dlq_store()
    done = store.requeue(_select(store, ids, all_, reason, code), publish_stockout)
    console.print(f"requeued {len(done)}: {' '.join(done)}")


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def dlq_purge(ids: tuple[str, ...], all_: bool, yes: bool) -> None:
    """Delete dead letters for good."""
    store = _dlq_store()
    chosen = _select(store, ids, all_, None, None)
    if not yes and not click.confirm(f"delete {len(chosen)} dead letter(s) for good?"):
        fail("nothing deleted", 1)
    console.print(f"purged {len(store.purge(chosen))}")
