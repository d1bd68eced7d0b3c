"""Starting and stopping the service's own processes (worker, beat) — for the demo, the tests and the
benchmarks, which all run the real thing rather than an imitation of it."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

from shared.redis.conn import connect
from shared.redis.keys import Keys

T = TypeVar("T")


def service_env(**overrides: object) -> dict[str, str]:
    env = dict(os.environ.items())
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ops.cli", *args]


def start(args: list[str], env: dict[str, str], log_path: Path | None = None) -> subprocess.Popen:
    # The child gets its own copy of the log's descriptor, so ours is closed once it has started.
    with open(log_path, "ab") if log_path else contextlib.nullcontext(subprocess.DEVNULL) as out:
        # Own process group, so stopping it also stops its pool children.
        return subprocess.Popen(_cli(*args), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def start_worker(env: dict[str, str], *, concurrency: int | None = None, pool: str | None = None,
                 hostname: str = "stockouts@%h", log_path: Path | None = None) -> subprocess.Popen:
    args = ["worker", f"--hostname={hostname}"]
    if concurrency:
        args.append(f"--concurrency={concurrency}")
    if pool:
        args.append(f"--pool={pool}")
    return start(args, env, log_path)


def start_beat(env: dict[str, str], *, schedule_file: Path, log_path: Path | None = None) -> subprocess.Popen:
    return start(["beat", f"--schedule-file={schedule_file}"], env, log_path)


def stop(*procs: subprocess.Popen, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Ask each process group to stop, all at once (a warm shutdown takes a while; they take it
    side by side), then kill what has not stopped by the timeout."""
    asked = [proc for proc in procs if proc.poll() is None]
    for proc in asked:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    deadline = time.monotonic() + timeout
    for proc in asked:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def wait_for_consumer(redis_url: str, prefix: str, queue: str, *, timeout: float = 120.0,
                      proc: subprocess.Popen | None = None,
                      ca_certs: str = "", master: str = "") -> None:
    """Until a worker has declared its queue binding in the broker (it is then consuming).

    A process that exits ends the wait at once, so the long default only matters on a busy machine."""
    client = connect(redis_url, ca_certs, master=master)
    deadline = time.monotonic() + timeout
    key = Keys(prefix).binding(queue)
    try:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before consuming {queue}")
            if client.exists(key):
                return
            time.sleep(0.2)
    finally:
        client.close()
    raise TimeoutError(f"no consumer on {queue} after {timeout} s")


def wait_until(
    predicate: Callable[[], T],
    timeout: float | None = None,
    interval: float = 0.2,
    message: str = "condition",
    *,
    progress: Callable[[], Hashable] | None = None,
    stall: float = 30.0,
) -> T:
    """Poll `predicate` until it returns something true (which is returned).

    Without `progress`: give up after `timeout` s (default 60). With `progress` (a measure of the work:
    saves, calls, queue lengths…): wait as long as its value keeps changing, give up after `stall` s
    without a change, or after `timeout` s in all (default 600) — see docs/design.md, "Waiting in tests"."""
    started = time.monotonic()
    cap = timeout if timeout is not None else (600.0 if progress else 60.0)
    last = progress() if progress else None
    moved = started
    while True:
        value = predicate()
        if value:
            return value
        now = time.monotonic()
        if progress is not None:
            seen = progress()
            if seen != last:
                last, moved = seen, now
            elif now - moved >= stall:
                raise TimeoutError(f"no progress for {stall:g} s (after {now - started:.0f} s) waiting for "
                                   f"{message}; last progress: {last!r}")
        if now - started >= cap:
            detail = f"; last progress: {last!r}" if progress else ""
            raise TimeoutError(f"timed out after {cap:g} s waiting for {message}{detail}")
        time.sleep(interval)


def delete_prefix(url: str, prefix: str, ca_certs: str = "") -> None:
    """Remove every key under `prefix:` (a demo's or a benchmark's own), without blocking Redis."""
    client = connect(url, ca_certs)
    try:
        keys = list(client.scan_iter(match=Keys(prefix).everything, count=2000))
        for i in range(0, len(keys), 1000):
            client.unlink(*keys[i : i + 1000])
    except Exception:  # cleaning up is best effort: never hide the run's own result
        pass
    finally:
        client.close()

