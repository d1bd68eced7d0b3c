"""A replicated Redis of the test's own: a master, a replica and three Sentinels, as local processes on
free ports, with the short timings a test can wait for (the `ha` profile of compose.yaml uses longer ones)."""
from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from shared.redis.conn import free_port

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def ready_to_fail_over(sentinel: redis.Redis, master: str = MASTER_NAME) -> bool:
    """Whether this Sentinel (a decode_responses client) could fail `master` over now: it knows the other
    two Sentinels, and a replica it takes for a good one (flagged a replica only, its link up). Sentinels
    learn of replicas from the master's INFO every 10 s; a master killed before that has no one to fail
    over to (-failover-abort-no-good-slave)."""
    if int(sentinel.sentinel_master(master)["num-other-sentinels"]) < 2:
        return False
    return any(r.get("is_slave") and not (r.get("is_sdown") or r.get("is_disconnected"))
               and r.get("master-link-status") == "ok" for r in sentinel.sentinel_slaves(master))


class SentinelCluster:
    def __init__(self, directory: Path, password: str) -> None:
        self.dir = directory
        self.password = password
        self.binary = shutil.which("redis-server") or "redis-server"
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """REDIS_URL for the service: the password once, on the first part (kombu's form)."""
        first, *rest = self.sentinel_ports
        return ";".join([f"sentinel://:{self.password}@127.0.0.1:{first}/0",
                         *(f"sentinel://127.0.0.1:{port}" for port in rest)])

    def _start(self, name: str, conf: str, *extra: str) -> None:
        path = self.dir / f"{name}.conf"
        path.write_text(conf)  # Sentinel rewrites its file: it must be writable, and the password stays off argv
        (self.dir / name).mkdir(exist_ok=True)
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the process's life
        self.procs[name] = subprocess.Popen([self.binary, str(path), *extra], stdout=log, stderr=subprocess.STDOUT)

    def _server_conf(self, name: str, port: int) -> str:
        return (f"port {port}\nbind 127.0.0.1\ndir {self.dir / name}\nsave \"\"\nappendonly no\n"
                f"requirepass {self.password}\nmasterauth {self.password}\n")

    def start(self) -> SentinelCluster:
        self._start("master", self._server_conf("master", self.master_port))
        self._start("replica", self._server_conf("replica", self.replica_port)
                    + f"replicaof 127.0.0.1 {self.master_port}\n")
        for i, port in enumerate(self.sentinel_ports):
            self._start(f"sentinel{i}", (
                f"port {port}\nbind 127.0.0.1\ndir {self.dir / f'sentinel{i}'}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel auth-pass {MASTER_NAME} {self.password}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"), "--sentinel")
        self._wait(self._ready, 30, "a replica in sync and three Sentinels that know each other")
        return self

    def _client(self, port: int, **kw) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1, **kw)

    def _ready(self) -> bool:
        replica = self._client(self.replica_port, password=self.password)
        if replica.info("replication").get("master_link_status") != "up":
            return False
        return all(ready_to_fail_over(self._client(port, decode_responses=True)) for port in self.sentinel_ports)

    def master_port_now(self) -> int:
        """The master the Sentinels name now."""
        for port in self.sentinel_ports:
            try:
                return int(self._client(port).sentinel_get_master_addr_by_name(MASTER_NAME)[1])
            except (redis.RedisError, TypeError):
                continue
        raise RuntimeError("no Sentinel answers")

    def kill_master(self) -> None:
        proc = self.procs["master"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def wait_failover(self, timeout: float = 30) -> None:
        self._wait(lambda: self.master_port_now() == self.replica_port, timeout, "the replica promoted")

    @staticmethod
    def _wait(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (redis.RedisError, KeyError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
