"""The `stockout-sync` command group and what every command needs before it starts."""
from __future__ import annotations

import os
import sys
from datetime import datetime
from typing import NoReturn

import click
from pydantic import SecretStr, ValidationError

from ops.render import fail
from shared.core.errors import AuthenticationError, StockoutSyncError
from shared.core.logs import configure_logging
from shared.core.settings import Settings, explain, get_settings, masked_url
from shared.core.timeutil import parse_given
from shared.mapping.cache import mapping_cache
from shared.observe import exporter


def check_mapping() -> None:

    try:
        # read into this process's cache, which the pool processes inherit as their last good mapping
        mapping_cache(get_settings().mapping_file).get()
    except Exception as err:  # a readable reason, never a traceback, for a bad mapping file
        fail(str(err))


def parse_time(value: str, name: str) -> datetime:

    try:
        return parse_given(value, name)
    except ValueError as err:
        fail(str(err))


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


def start_metrics(port: int | None, role: str = "") -> None:

    try:
        exporter.start(get_settings(), port, role=role)
    except OSError as err:  # the port is taken: say which, rather than run without metrics
        fail(f"metrics port {port or get_settings().metrics_port}: {err}")


class _Main(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Click runs this group's callback before it parses the sub-command's options, so a
        # sub-command's --help is seen here, while the whole command line is still at hand.
        ctx.meta["help"] = "--help" in args or "-h" in args
        return super().parse_args(ctx, args)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stockout-sync", prog_name="stockout-sync", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Move every 旺店通 stockout into 用友BIP as an other outbound record."""

    if ctx.meta.get("help"):
        return  # help always works, whatever the environment holds
    try:
        get_settings()
    except ValidationError as err:
        fail(f"configuration: {explain(err)}")

    configure_logging(get_settings())


# What each remote system needs; BIP_TENANT_ID only to discover the tenant's addresses.
_CREDENTIALS = {
    "wdt": ("WDT_APP_KEY", "WDT_APP_SECRET", "WDT_SID"),
    "bip": ("BIP_APP_KEY", "BIP_APP_SECRET", "BIP_TENANT_ID"),
}


def require(*apis: str, need_redis: bool = True) -> None:
    """Refuse to start what can never work: an empty credential, or a Redis that does not answer.
    One line naming the variable (never a secret's value), exit 2."""
    settings = get_settings()
    for api in apis:
        for name in _CREDENTIALS[api]:
            if name == "BIP_TENANT_ID" and settings.bip_gateway_url and settings.bip_token_url:
                continue
            value = getattr(settings, name.lower())
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if not str(value).strip():
                fail(f"{name} is empty: set it in the environment or .env "
                     f"({api.upper()} refuses every call without it)")
    if need_redis:
        problem = redis_problem(settings)
        if problem:
            fail(f"REDIS_URL={masked_url(settings.redis_url)!r}: {problem}")


def redis_problem(settings: Settings) -> str | None:
    """Why Redis at REDIS_URL cannot be used right now, in words; None when it answers a PING."""
    import redis

    from shared.redis.conn import connect

    try:
        client = connect(settings.redis_url, settings.redis_ca_certs, master=settings.redis_sentinel_master,
                         sentinel_password=settings.redis_sentinel_password.get_secret_value(),
                         socket_connect_timeout=3, socket_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except redis.AuthenticationError:
        return "Redis refused the password (check the password in REDIS_URL)"
    except (redis.RedisError, OSError, ValueError) as err:
        return f"Redis does not answer ({type(err).__name__}: {err})"
    return None


def check_redis(role: str) -> None:
    """worker and beat: refuse a Redis whose maxmemory-policy may evict our keys (one line, exit 2,
    unless REDIS_ALLOW_EVICTION=true); warn of one without persistence or that will not say; record
    this host's clock against Redis TIME (an error line when it is over a minute off)."""
    import logging

    import redis

    from shared.observe import clock
    from shared.redis.conn import connect
    from shared.redis.durability import inspect

    settings = get_settings()
    client = connect(settings.redis_url, settings.redis_ca_certs, master=settings.redis_sentinel_master,
                     sentinel_password=settings.redis_sentinel_password.get_secret_value(),
                     socket_connect_timeout=3, socket_timeout=3)
    try:
        found = inspect(client)
        problem = found.eviction_problem(allowed=settings.redis_allow_eviction)
        if problem:
            fail(problem)
        reading = clock.record(client, settings.redis_prefix, role)
    except redis.RedisError as err:
        fail(f"REDIS_URL={masked_url(settings.redis_url)!r}: Redis did not answer INFO or TIME ({type(err).__name__})")
    finally:
        client.close()
    log = logging.getLogger("stockout_sync.startup")
    for warning in found.warnings(allowed=settings.redis_allow_eviction):
        log.warning("%s", warning)
    if reading.problem():
        log.error("%s", reading.problem())


def api_failure(err: StockoutSyncError) -> NoReturn:
    """A remote system's refusal as one line an operator can act on: exit 2 for credentials it
    refuses (a configuration error, as at start-up), 1 for anything else."""
    api = err.api.upper() or "error"
    if isinstance(err, AuthenticationError) and err.api in _CREDENTIALS:
        said = f" ({err.code}: {err.api_message})" if err.code or err.api_message else ""
        if "sign" in f"{err.code} {err.api_message}".lower():  # invalid-signature, sign-check-failure
            fail(f"{api} refused the signature{said}: check {api}_APP_SECRET")
        names = " / ".join(n for n in _CREDENTIALS[err.api] if n != "BIP_TENANT_ID")
        fail(f"{api} refused the credentials{said}: check {names}")
    fail(f"{api}: {err}", 1)
