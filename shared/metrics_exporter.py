"""The `/metrics` endpoint of a worker or beat process (METRICS_PORT; 0 = off).

Why prometheus_client's multiprocess mode rather than one exporter per process: a prefork worker
runs its tasks in child processes that billiard replaces at will, so per-child ports would come and
go. Instead every process writes its counters to mmap files in one directory
(PROMETHEUS_MULTIPROC_DIR) and the parent, which owns the one port, adds them up at each scrape.
The files of a child that exited stay, so totals never go backwards when a child is replaced.

prometheus_client chooses between in-memory and file-backed values when it is first imported, so
`start` runs in the worker and beat commands before the Celery app imports the tasks (and with them
`shared.metrics`). Each exporter gets a fresh directory of its own unless the operator names one.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile

from shared.settings import Settings

log = logging.getLogger("stockout_sync.metrics")


def start(settings: Settings, port: int | None = None) -> int:
    """Serve `/metrics` for this process and the children it will fork; the port, or 0 when off."""
    port = settings.metrics_port if port is None else port
    if not port:
        return 0
    if "shared.metrics" in sys.modules:
        raise RuntimeError(
            "metrics exporter started after shared.metrics was imported: its counters would not be exported"
        )
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
    else:
        directory = made = tempfile.mkdtemp(prefix="stockout-sync-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
        owner = os.getpid()

        def remove_directory() -> None:
            # forked children inherit atexit handlers; only the process that made the directory removes it
            if os.getpid() == owner:
                shutil.rmtree(made, ignore_errors=True)

        atexit.register(remove_directory)

    from prometheus_client import CollectorRegistry, start_http_server, values
    from prometheus_client.multiprocess import MultiProcessCollector

    values.ValueClass = values.get_value_class()  # in case something imported prometheus_client already
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    start_http_server(port, addr=settings.metrics_address, registry=registry)
    log.info("metrics on http://%s:%d/metrics", settings.metrics_address, port)
    return port
