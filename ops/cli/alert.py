"""`alert test`: one test message to every configured channel, and each channel's answer."""
from __future__ import annotations

import sys

import click
from rich.markup import escape

from ops.cli.app import main
from ops.render import console, fail
from producer.alerts.channels import sender_from_settings
from producer.alerts.watch import probe_alert
from shared.core.settings import get_settings


@main.group()
def alert() -> None:
    """Alerts to the webhook and group robots (ALERT_* variables; see docs/alerts.md)."""


@alert.command("test")
@click.option("--budget", default=None, type=float, help="seconds per channel, retries included (ALERT_SEND_BUDGET_S)")
def alert_test(budget: float | None) -> None:
    """Send one test message to every configured channel and print each answer; exit 1 if one failed."""
    settings = get_settings()
    sender = sender_from_settings(settings)
    if budget is not None:
        sender.budget_s = budget
        sender.timeout_s = min(sender.timeout_s, budget / 2)
    if not sender.channels:
        fail("no alert channel configured: set ALERT_WEBHOOK_URL, ALERT_DINGTALK_URL, ALERT_WECOM_URL "
             "or ALERT_FEISHU_URL")
    message = probe_alert()
    message.prefix = settings.redis_prefix
    replies = sender.send(message)
    for reply in replies:
        verdict = "[green]ok[/green]" if reply.ok else "[red]failed[/red]"
        console.print(f"{reply.channel}: {verdict} after {reply.attempts} attempt(s): {escape(reply.detail)}")
    sys.exit(0 if all(reply.ok for reply in replies) else 1)
