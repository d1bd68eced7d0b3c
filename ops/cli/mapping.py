"""`mapping check` (the file alone, or a dry run over a WDT range) and `mapping show` (as loaded)."""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ops.cli.app import api_failure, main, parse_time, require
from ops.cli.dlq import ascii_safe
from ops.mapping_check import check_range
from ops.render import console, err_console, fail
from shared.core.errors import StockoutSyncError
from shared.core.settings import get_settings
from shared.mapping.cache import mapping_cache
from shared.mapping.model import Fixed, Mapping, MappingFileError
from shared.runtime import runtime

if TYPE_CHECKING:  # annotations only: ops.mapping_check loads the pipeline, which loads shared.core.metrics
    from ops.mapping_check import CheckReport

EXAMPLES_SHOWN = 3  # order numbers printed per group; --json has up to mapping_check.EXAMPLES
SHOWN_CHARS = 80  # a name (entry, order number) as printed
SHOWN_MESSAGE_CHARS = 240


@main.group()
def mapping() -> None:
    """Check the mapping file (alone, or over past stockouts before going live) and show it as loaded."""


def _load() -> tuple[Mapping, Any]:
    cache = mapping_cache(get_settings().mapping_file)
    try:
        return cache.get(), cache
    except MappingFileError as err:
        fail(str(err))
    except OSError as err:
        fail(f"{cache.path}: {err}")


@mapping.command("check")
@click.option("--since", default=None, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]': dry-run WDT's stockouts from here")
@click.option("--until", default=None, help="Beijing time, 'yyyy-MM-dd[ HH:mm:ss]' (with --since)")
@click.option("--json", "as_json", is_flag=True, help="one JSON document, for programs")
def check(since: str | None, until: str | None, as_json: bool) -> None:
    """Without a range: validate the file as start-up does (exit 2 when it is invalid).

    With --since/--until: read that range from WDT (paged, through the shared rate limiter) and run
    every stockout through the filters and the transform without saving anything; print what would
    fail, grouped by the mapping entry to add, and how many would be filtered out or pass. Exit 1
    when anything would fail."""
    if (since is None) != (until is None):
        fail("mapping check needs both --since and --until, or neither (to check the file alone)")
    if since is None:
        _check_file(as_json)
        return
    assert until is not None
    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    if end <= start:
        fail(f"--until {until!r} must be after --since {since!r}")
    require("wdt")  # the limiter WDT's calls go through lives in Redis
    _load()
    rt = runtime()
    try:
        if err_console.is_terminal and not as_json:
            with Progress(TextColumn("[bold]mapping check"), BarColumn(), TextColumn("{task.fields[line]}"),
                          TimeElapsedColumn(), console=err_console, transient=True) as progress:
                task = progress.add_task("check", total=None, line="")

                def on_slice(n: int, total: int, report: CheckReport) -> None:
                    progress.update(task, total=total, completed=n,
                                    line=f"{report.fetched} read · {report.failed} would fail")

                report = check_range(rt, start, end, on_slice=on_slice)
        else:
            report = check_range(rt, start, end)
    except StockoutSyncError as err:
        api_failure(err)
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        _print_report(report)
    raise SystemExit(report.exit_code)


def _check_file(as_json: bool) -> None:
    path = get_settings().mapping_file
    try:
        m = mapping_cache(path).get()
    except (MappingFileError, OSError) as err:
        problems = err.problems if isinstance(err, MappingFileError) else [str(err)]
        if as_json:
            click.echo(json.dumps({"mapping_file": str(path), "valid": False, "problems": problems},
                                  ensure_ascii=False, indent=2))
            raise SystemExit(2) from None
        fail(str(err))
    if as_json:
        click.echo(json.dumps({"mapping_file": str(path), "valid": True, "fingerprint": m.fingerprint()}, indent=2))
        return
    console.print(f"{escape(str(path))}: valid (fingerprint {m.fingerprint()}): {len(m.warehouses)} warehouses, "
                  f"{len(m.bustypes)} bustypes by order type, {len(m.fields)} header and {len(m.line_fields)} "
                  "line fields of the tenant's own. Over past stockouts: mapping check --since … --until …")


def _shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """Text from WDT as the terminal may show it: control characters escaped, bounded, markup escaped."""
    text = ascii_safe(text)
    return escape(text if len(text) <= limit else text[: limit - 1] + "…")


def _print_report(report: CheckReport) -> None:
    console.print(f"mapping check of {escape(report.mapping_file)} (fingerprint {report.fingerprint}) over "
                  f"{report.since} → {report.until} (Beijing), {report.duration_s:.1f} s")
    console.print(f"read {report.fetched} stockouts: {report.passed} would pass, {report.filtered_out} filtered "
                  f"out, {report.failed} would fail")
    if not report.groups:
        return
    console.print("would fail, by the mapping entry to add or change:")
    for group in report.groups:
        names = ", ".join(_shown(f.order_no or f.stockout_id) for f in group.stockouts[:EXAMPLES_SHOWN])
        noun = "stockout" if group.count == 1 else "stockouts"
        console.print(f"  {_shown(group.entry)}: {group.count} {noun}, e.g. {names}", soft_wrap=True)
        console.print(f"    {_shown(group.stockouts[0].message, SHOWN_MESSAGE_CHARS)}", soft_wrap=True, style="dim")


@mapping.command("show")
@click.option("--json", "as_json", is_flag=True, help="one JSON document, for programs")
def show(as_json: bool) -> None:
    """The mapping as loaded, every default filled in, its fingerprint and since when it is in force."""
    m, cache = _load()
    info = {"mapping_file": str(cache.path), "fingerprint": m.fingerprint(), "in_force_since": cache.in_force_since,
            "loaded_at": cache.loaded_at}
    if as_json:
        click.echo(json.dumps({**info, "mapping": m.model_dump(mode="json")}, ensure_ascii=False, indent=2))
        return
    console.print(escape(f"# {info['mapping_file']}, fingerprint {info['fingerprint']}\n"
                         f"# in force since {info['in_force_since']} (Beijing; the file's last change, which every "
                         "process reads within a second)\n# defaults filled in; a key shown commented out is not set"),
                  highlight=False)
    console.print(escape(toml_text(m.model_dump(mode="json"))), highlight=False, soft_wrap=True)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):  # a Fixed value
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string


def toml_text(data: dict[str, Any], path: str = "") -> str:
    """A model dump as TOML: scalars under their table, sub-tables after; None as a comment."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for name, value in data.items():
        if isinstance(value, dict) and set(value) != set(Fixed.model_fields):
            tables.append((f"{path}.{_key(name)}" if path else _key(name), value))
        elif value is None:
            lines.append(f"# {_key(name)} = (not set)")
        else:
            lines.append(f"{_key(name)} = {_value(value)}")
    out = ([f"[{path}]"] if path and (lines or not tables) else []) + lines
    text = "\n".join(out)
    for sub, table in tables:
        text += ("\n\n" if text else "") + toml_text(table, sub)
    return text
