"""`stockout-sync`: the one command operators use, a module per command group."""
from __future__ import annotations

from ops.cli import alert, console, dlq, mapping, reconcile, service, status, sync, trace
from ops.cli.app import main

__all__ = ["alert", "console", "dlq", "main", "mapping", "reconcile", "service", "status", "sync", "trace"]
