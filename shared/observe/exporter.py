"""The `/metrics` endpoint of a worker or beat process (METRICS_PORT; 0 = off), in prometheus_client's
multiprocess mode, started before anything counts (instruments are made on first use).
Why: docs/design.md, "Metrics across processes"."""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily

from shared.core import metrics
from shared.core.settings import Settings
from shared.observe.gauges import PipelineCollector, process_family  # imports no counters: safe before `start`

log = logging.getLogger("stockout_sync.metrics")


def start(settings: Settings, port: int | None = None, *, role: str = "") -> int:
    """Serve `/metrics` for this process and the children it will fork; the port, or 0 when off.
    `role` (worker, beat) adds `stockout_sync_process_up{role}`, which the "no worker" rules miss."""
    port = settings.metrics_port if port is None else port
    if not port:
        return 0
    if metrics.made():
        raise RuntimeError(f"metrics exporter started after {metrics.made()[0]} was counted: it would not be exported")
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
    registry.register(PipelineCollector(settings))  # the pipeline's state, read from Redis per scrape
    if role:
        registry.register(_Role(role))
    start_http_server(port, addr=settings.metrics_address, registry=registry)
    log.info("metrics on http://%s:%d/metrics", settings.metrics_address, port)
    return port


class _Role:
    def __init__(self, role: str) -> None:
        self.role = role

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield process_family(self.role)
