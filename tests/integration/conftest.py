"""Integration fixtures: the sandbox over HTTP, the service configured against it, real worker processes."""
from __future__ import annotations

import os
from pathlib import Path

import kombu.pools
import pytest

from ops.processes import start_beat, start_worker, stop, wait_for_consumer
from tests.integration.faults import RESULTS


@pytest.fixture
def sandbox():
    from sandbox import Sandbox, SandboxConfig

    sb = Sandbox(SandboxConfig()).start()
    yield sb
    sb.stop()


def reset_service_caches() -> None:
    """Make this process read the environment again: settings, Celery config, per-process runtime."""
    import shared.runtime
    from shared.core.settings import get_settings
    from shared.queue.app import app, celery_config

    get_settings.cache_clear()
    app.conf.update(celery_config(get_settings()))
    # kombu remembers per connection which queues it declared; after a FLUSHDB those bindings are
    # gone, so fresh connections must declare them again or messages would go nowhere.
    kombu.pools.reset()
    app._pool = None
    app.amqp._producer_pool = None
    shared.runtime._runtime = None


@pytest.fixture
def service(sandbox, redis_url, monkeypatch):
    """The service's environment pointing at the sandbox, in this process and for the processes it starts."""
    from ops.demo import sandbox_env

    env = sandbox_env(sandbox, redis_url=redis_url, prefix=os.environ["REDIS_PREFIX"])
    use_env(monkeypatch, env)
    yield env
    monkeypatch.undo()
    reset_service_caches()


def use_env(monkeypatch, env: dict[str, str]) -> None:
    """Point this process's service (settings, Celery app, runtime) at `env`."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_service_caches()


def live_from_now(monkeypatch, processes, env: dict[str, str]) -> dict[str, str]:
    """`env` for this process and the processes a test starts, the live cursor starting a minute ago."""
    from datetime import timedelta

    from shared.core.timeutil import format_wire, now_beijing

    extra = {**env, "INITIAL_SINCE": format_wire(now_beijing() - timedelta(minutes=1))}
    use_env(monkeypatch, extra)
    processes.env = {**processes.env, **extra}
    return processes.env


LOG_TAIL = 60


class Processes:
    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.procs = []

    def worker(self, *, concurrency: int = 4, pool: str | None = None, name: str = "w1", env: dict | None = None):
        proc = start_worker({**self.env, **(env or {})}, concurrency=concurrency, pool=pool,
                            hostname=f"{name}@%h", log_path=self.logdir / f"{name}.log")
        self.procs.append(proc)
        wait_for_consumer(self.env["REDIS_URL"], self.env["REDIS_PREFIX"], "stockouts", proc=proc,
                          ca_certs=self.env.get("REDIS_CA_CERTS", ""), master=self.env.get("REDIS_SENTINEL_MASTER", ""))
        return proc

    def beat(self, name: str = "beat", env: dict | None = None):
        proc = start_beat(
            {**self.env, **(env or {})}, schedule_file=self.logdir / f"{name}.schedule",
            log_path=self.logdir / f"{name}.log",
        )
        self.procs.append(proc)
        wait_for_consumer(self.env["REDIS_URL"], self.env["REDIS_PREFIX"], "producer", proc=proc,
                          ca_certs=self.env.get("REDIS_CA_CERTS", ""))
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logdir.glob("*.log")))

    def stop_all(self) -> None:
        stop(*self.procs)


@pytest.fixture
def processes(service, tmp_path):
    procs = Processes(service, tmp_path)
    yield procs
    procs.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A fault test's reliability row rides on its report: under xdist the table is printed by the
    controller, which ran no test itself."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        report.user_properties.extend(("reliability", row) for row in RESULTS)
        RESULTS.clear()
    # a failed test shows what its worker and beat processes said: a flake seen once in CI is
    # explained by its own logs, not by a rerun that passes
    procs = getattr(item, "funcargs", {}).get("processes")
    if report.failed and isinstance(procs, Processes):
        for path in sorted(procs.logdir.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()
            report.sections.append((f"{path.name} (last {min(len(lines), LOG_TAIL)} lines)",
                                    "\n".join(lines[-LOG_TAIL:])))
