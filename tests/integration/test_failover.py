"""Redis Sentinel for real: a master, a replica and three Sentinels as local processes; the master is
SIGKILLed while 1,000 stockouts sync; Sentinel promotes the replica, the broker and our state client
follow it, and the sandbox's BIP ends with every stockout once. The pause is printed, not asserted
tightly (a shared machine's timing is not the code's), except against a generous ceiling."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import redis

from ops.processes import wait_until
from producer.poll import poll_once
from shared.core.timeutil import format_wire, now_beijing
from shared.deadletters.store import DeadLetterStore
from shared.queue.publisher import publish_stockout
from shared.redis.conn import connect
from shared.runtime import runtime
from tests.cli import cli
from tests.integration.conftest import Processes, use_env
from tests.integration.faults import eligible, outcome, recent, saved
from tests.integration.sentinel_cluster import MASTER_NAME, SentinelCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STOCKOUTS = 1170  # about 1,000 of them eligible (status 95/110)
# Short redelivery, so messages whose ack the failover lost come back within the test.
FAST_REDELIVERY = {"BROKER_VISIBILITY_TIMEOUT_S": "15", "TASK_TIME_LIMIT_S": "10", "RETRY_BACKOFF_MAX_S": "2"}
PAUSE_TARGET_S = 30


class ProgressWatch:
    """Samples the sandbox's save count; the longest stretch without a new save is the pause."""

    def __init__(self, sandbox) -> None:
        self.sandbox = sandbox
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.samples.append((time.monotonic(), self.sandbox.counters()["bip_saves"]))

    def __enter__(self) -> ProgressWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def longest_pause_after(self, since: float, until_count: int) -> float:
        """Seconds from `since` (the kill) to the first save after it, or the longest gap after `since`
        while saves were still to come."""
        longest, last_change, last_count = 0.0, since, None
        for at, count in self.samples:
            if at < since:
                last_count = count
                continue
            if count != last_count:
                longest = max(longest, at - last_change)
                last_change, last_count = at, count
            if count >= until_count:
                break
        return longest


def test_master_killed_mid_sync_sentinel_promotes_the_replica_nothing_lost_or_doubled(
        sandbox, service, tmp_path, monkeypatch):
    (tmp_path / "ha").mkdir()
    cluster = SentinelCluster(tmp_path / "ha", password="failover-pw").start()
    env = {**service, "REDIS_URL": cluster.url, "REDIS_SENTINEL_MASTER": MASTER_NAME, **FAST_REDELIVERY}
    use_env(monkeypatch, env)
    procs = Processes(env, tmp_path)
    client = connect(cluster.url, master=MASTER_NAME, socket_timeout=5, socket_connect_timeout=2,
                     retry_on_error=[redis.ConnectionError])
    letters = DeadLetterStore(client, "t")
    try:
        expected = eligible(recent(sandbox, STOCKOUTS))
        assert len(expected) >= 950
        sandbox.set_faults(bip={"latency_ms": 30})  # a save takes a while: the kill lands mid-save
        procs.worker(concurrency=4, name="w1")
        procs.worker(concurrency=4, name="w2")
        with ProgressWatch(sandbox) as watch:
            summary = poll_once(runtime(), publish_stockout)
            assert summary.published == len(expected)
            wait_until(lambda: sandbox.counters()["bip_saves"] >= len(expected) // 3, 90, message="a third saved")
            before = sandbox.counters()["bip_saves"]
            killed_at = time.monotonic()
            cluster.kill_master()
            cluster.wait_failover(30)
            promoted_s = time.monotonic() - killed_at
            settled = lambda: expected <= set(saved(sandbox)) | set(_ids(letters))  # noqa: E731
            recovered = 0
            try:  # the pipeline on its own: redelivery after the visibility timeout included
                wait_until(settled, 60, message="every stockout saved after the failover")
            except TimeoutError:
                # What Redis's asynchronous replication lost in the last moment (docs/deploying.md, ha): the
                # documented recovery, reconcile --requeue-missing, over the stockouts' window.
                missing = expected - set(saved(sandbox)) - set(_ids(letters))
                recovered = len(missing)
                now = now_beijing()
                cli(env, "reconcile", "--since", format_wire(now - timedelta(hours=3)), "--until", format_wire(now),
                    "--requeue-missing")
                try:
                    wait_until(settled, 60, message="the stockouts reconcile sent again, saved")
                except TimeoutError:
                    raise AssertionError(
                        f"{len(missing)} never saved, e.g. {sorted(missing)[:5]}; queue {client.llen('t:stockouts')},"
                        f" unacked {client.hlen('t:unacked')}; marks {_marks(client, sorted(missing)[:5])}\n"
                        f"{procs.logs()[-6000:]}") from None
            pause = watch.longest_pause_after(killed_at, len(expected) - recovered)
        row = outcome("Redis master SIGKILLed, Sentinel promoted the replica", sandbox, expected, letters)
        print(f"\nfailover: killed the master after {before} of {len(expected)} saves; replica promoted after "
              f"{promoted_s:.1f} s; longest time without a save {pause:.1f} s (target <= {PAUSE_TARGET_S} s); "
              f"BIP replays {row['replays']}; lost to the replication window and sent again by reconcile {recovered}")
        assert row["lost"] == 0, row
        assert row["duplicates"] == 0, row
        assert sandbox.counters()["duplicate_stockouts"] == 0
        assert row["saved"] + row["dead_lettered"] == row["stockouts"], row
        assert row["dead_lettered"] == 0, procs.logs()[-3000:]
        assert pause < 2 * PAUSE_TARGET_S, f"no save for {pause:.1f} s after the failover"
        assert "failover-pw" not in procs.logs(), "the master's password (inside REDIS_URL) reached a log"
    finally:
        procs.stop_all()
        client.close()
        cluster.stop()


def _marks(client, ids: list[str]) -> list:
    return [client.hget(f"t:mark:{int(i) // 100}", str(int(i) % 100)) for i in ids]


def _ids(letters: DeadLetterStore) -> list[str]:
    try:
        return letters.ids()
    except Exception:  # the master is changing hands: ask again on the next round
        return []
