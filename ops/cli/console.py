"""The operator console in the browser (`console`, `console hash-password`) and its audit trail (`audit`)."""
from __future__ import annotations

import json
import sys

import click
from rich.markup import escape
from rich.table import Table

from ops.cli.app import main, require
from ops.console.auth import UsersFileError, hash_password, load_users
from ops.render import console as out
from ops.render import err_console, fail
from shared.core.settings import get_settings

MIN_SECRET_KEY = 32


@main.group(invoke_without_command=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8800, show_default=True, help="where it listens")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="where it listens; another address only behind TLS and a network you trust")
@click.option("--https-only", is_flag=True, help="send the session cookie over HTTPS only (behind a TLS proxy)")
@click.pass_context
def console(ctx: click.Context, port: int, host: str, https_only: bool) -> None:
    """Serve the operator console: overview, dead letters with requeue, trace, backfill, reconcile, mapping.

    Needs CONSOLE_SECRET_KEY (signs the session cookies) and CONSOLE_USERS_FILE (`user:role:hash`
    lines; make a hash with `stockout-sync console hash-password`). See docs/console.md."""
    if ctx.invoked_subcommand is not None:
        return
    require()
    s = get_settings()
    secret = s.console_secret_key.get_secret_value()
    if len(secret) < MIN_SECRET_KEY:
        fail(f"CONSOLE_SECRET_KEY is {'empty' if not secret else 'too short'}: set at least {MIN_SECRET_KEY} "
             "random characters, e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    try:
        users = load_users(s.console_users_file)
    except UsersFileError as err:
        fail(str(err))
    import uvicorn

    # loaded only when the console runs: Starlette and Jinja2 would slow every command
    from ops.console.app import create_app
    from shared.runtime import runtime
    app = create_app(runtime(), users, secret_key=secret, refresh_s=s.console_refresh_s, https_only=https_only)
    out.print(f"console on http://{host}:{port}/ ({len(users)} user(s) from {s.console_users_file})")
    if host not in ("127.0.0.1", "::1", "localhost") and not https_only:
        err_console.print(f"listening on {host} over plain HTTP: put TLS in front and use --https-only, "
                          "or keep it to a network you trust")
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)


@console.command("hash-password")
def hash_password_command() -> None:
    """Read a password (asked twice on a terminal, else one line of stdin) and print its hash for
    CONSOLE_USERS_FILE: add the line `name:role:<hash>` (role viewer or operator)."""
    if sys.stdin.isatty():
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        fail("a console password needs 8 characters at least")
    click.echo(hash_password(password))


@main.command()
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="newest entries shown")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line, newest first")
def audit(limit: int, as_json: bool) -> None:
    """The console's audit trail: who changed what, when, and how many (newest first)."""
    require()
    from ops.console.audit import AuditTrail
    from shared.runtime import runtime

    rt = runtime()
    trail = AuditTrail(rt.redis, rt.settings.redis_prefix)
    entries = trail.recent(limit)
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry.model_dump(), ensure_ascii=False))
        return
    table = Table(title=f"audit trail: {trail.count()} change(s), newest {len(entries)} shown")
    for column in ("when (Beijing)", "who", "what", "how many", "detail"):
        table.add_column(column, overflow="fold")
    for e in entries:
        ids = f" [{' '.join(e.ids)}]" if e.ids else ""
        table.add_row(e.at, escape(f"{e.who} ({e.role})"), e.action, str(e.count), escape(e.detail + ids))
    out.print(table)
