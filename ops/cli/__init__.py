"""`stockout-sync`: the one command operators use, a module per command group."""
from __future__ import annotations

from ops.cli import alert, backfill, console, dlq, mapping, reconcile, recover, service, status, sync, trace
from ops.cli.app import main

__all__ = ["alert", "backfill", "console", "dlq", "main", "mapping", "reconcile", "recover", "service", "status",
           "sync", "trace"]
