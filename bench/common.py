"""What every figure needs: Redis, an environment per run, the service's processes, rate sampling."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from ops.processes import delete_prefix, start_beat, start_worker, stop, wait_for_consumer, wait_until
from shared.core.timeutil import format_wire
from shared.redis.conn import free_port, resolve_redis_url

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    figure: str
    value: float
    target: str
    passed: bool | None  # None: information, not a target
    detail: str = ""
    fmt: str = "{:.3f}"

    def shown(self) -> str:
        return self.fmt.format(self.value)

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("fmt")
        data["shown"] = self.shown()
        if data["value"] != data["value"]:  # NaN is not JSON
            data["value"] = None
        return data


@dataclass
class Context:
    """One bench run: its Redis, its prefixes (all removed at the end) and its log directory."""

    redis_url: str
    workdir: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    prefixes: list[str] = field(default_factory=list)
    _embedded: object = None

    @classmethod
    def create(cls) -> Context:
        url, embedded = resolve_redis_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        ctx = cls(url, Path(tempfile.mkdtemp(prefix="stockout-sync-bench-")))
        ctx._embedded = embedded
        return ctx

    def prefix(self, name: str) -> str:
        p = f"bench{self.run_id}{name}"
        self.prefixes.append(p)
        return p

    def client(self, url: str | None = None) -> redis.Redis:
        return redis.Redis.from_url(url or self.redis_url)

    def close(self) -> None:
        for p in self.prefixes:
            delete_prefix(self.redis_url, p)
        if self._embedded is not None:
            self._embedded.close()


def service_env(sb, *, redis_url: str, prefix: str, **settings: object) -> dict[str, str]:
    """The service's environment against `sb`: production defaults unless a figure says otherwise."""
    from ops.demo import sandbox_env

    defaults = {"log_level": "INFO", "log_format": "text"}
    return sandbox_env(sb, redis_url=redis_url, prefix=prefix, **{**defaults, **settings})


class Processes:
    """The worker, beat and no-op worker processes of one figure; `stop_all` ends exactly these."""

    def __init__(self, ctx: Context, name: str) -> None:
        self.ctx, self.name = ctx, name
        self.procs: list[subprocess.Popen] = []

    def log(self, what: str) -> Path:
        return self.ctx.workdir / f"{self.name}-{what}.log"

    def worker(self, env: dict[str, str], *, n: int = 1, wait: bool = True, **options) -> list[subprocess.Popen]:
        started = []
        for i in range(n):
            proc = start_worker(env, hostname=f"{self.name}{i}@%h", log_path=self.log(f"worker{i}"), **options)
            self.procs.append(proc)
            started.append(proc)
        if wait:
            for proc in started:
                wait_for_consumer(env["REDIS_URL"], env["REDIS_PREFIX"], "stockouts", proc=proc, timeout=90)
        return started

    def noop_worker(
        self, env: dict[str, str], *, pool: str | None = None, concurrency: int | None = None
    ) -> subprocess.Popen:
        args = [sys.executable, "-m", "bench.noop", "worker"]
        if pool:
            args.append(f"--pool={pool}")
        if concurrency:
            args.append(f"--concurrency={concurrency}")
        with open(self.log("noop"), "ab") as out:  # the child has its own copy of the descriptor
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=ROOT)
        self.procs.append(proc)
        return proc

    def beat(self, env: dict[str, str]) -> subprocess.Popen:
        proc = start_beat(env, schedule_file=self.ctx.workdir / f"{self.name}-beat.schedule", log_path=self.log("beat"))
        self.procs.append(proc)
        wait_for_consumer(env["REDIS_URL"], env["REDIS_PREFIX"], "producer", proc=proc, timeout=90)
        return proc

    def stop_all(self) -> None:
        stop(*self.procs)
        self.procs.clear()


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its descendants (a prefork worker is a parent and its pool)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / 2**20


def run_producer(env: dict[str, str], since, until, *, timeout: float = 240) -> dict:
    """`bench.producer_run` in its own process: the producer alone, as `stockout-sync backfill` runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.producer_run", format_wire(since), format_wire(until)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"producer run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class Sampler:
    """Samples `read()` (a count that grows as work completes) every `every` seconds in a thread."""

    def __init__(self, read: Callable[[], int], every: float = 0.01) -> None:
        self.read, self.every = read, every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.read()))
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def last(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def rate(self, total: int, lo: float = 0.1, hi: float = 0.9) -> float:
        """Completions per second between `lo` and `hi` of `total`: the steady state, without the
        start-up of the processes or the tail of the last few tasks."""
        t1 = v1 = t2 = v2 = None
        for t, v in self.samples:
            if t1 is None and v >= lo * total:
                t1, v1 = t, v
            if v >= hi * total:
                t2, v2 = t, v
                break
        if t1 is None or t2 is None or t2 <= t1:
            return 0.0
        return (v2 - v1) / (t2 - t1)


class PrivateRedis:
    """A redis-server of our own, with default configuration, for figures that read server-wide
    numbers (INFO memory) that other users of a shared server would disturb."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        )
        client = redis.Redis.from_url(self.url)
        try:
            wait_until(lambda: _ping(client), 10, interval=0.05, message="private redis-server")
            self.version = client.info("server")["redis_version"]
        finally:
            client.close()

    def close(self) -> None:
        stop(self.proc, timeout=5)


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
