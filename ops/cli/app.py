"""The `stockout-sync` command group and what every command needs before it starts."""
from __future__ import annotations

import os
import sys
from datetime import datetime

import click
from pydantic import ValidationError

from ops.render import fail
from shared import metrics_exporter
from shared.logs import configure_logging
from shared.mapping import load_mapping
from shared.settings import get_settings
from shared.timeutil import parse_wire


def check_mapping() -> None:

    try:
        load_mapping(get_settings().mapping_file)
    except Exception as err:  # a readable reason, never a traceback, for a bad mapping file
        fail(str(err))


def parse_time(value: str, name: str) -> datetime:

    try:
        parsed = parse_wire(value)
    except ValueError:
        parsed = None
    if parsed is None:
        fail(f"{name}={value!r}: expected 'yyyy-MM-dd' or 'yyyy-MM-dd HH:mm:ss' (Beijing time)")
    return parsed


def json_lines_only() -> list[str]:
    """With LOG_FORMAT=json: keep the process's output one JSON object per line.

    Celery writes its banner and its shutdown notices straight to stdout, around logging, while the
    logs go to stderr. So in JSON mode the banner is switched off (`--quiet`, returned for Celery's
    argv) and stdout goes to /dev/null: the service itself never prints, it logs."""
    if get_settings().log_format != "json":
        return []
    devnull = os.open(os.devnull, os.O_WRONLY)
    sys.stdout.flush()
    os.dup2(devnull, 1)
    os.close(devnull)
    return ["--quiet"]


def start_metrics(port: int | None) -> None:

    try:
        metrics_exporter.start(get_settings(), port)
    except OSError as err:  # the port is taken: say which, rather than run without metrics
        fail(f"metrics port {port or get_settings().metrics_port}: {err}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stockout-sync", prog_name="stockout-sync", message="%(prog)s %(version)s")
def main() -> None:
    """Move every 旺店通 stockout into 用友BIP as an other outbound record."""

    try:
        get_settings()
    except ValidationError as err:
        fail(f"configuration: {err}")

    configure_logging(get_settings())
