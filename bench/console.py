"""Figure 11: every page of the operator console with 10,000 dead letters and 100,000 done marks in
Redis, timed through real HTTP to `stockout-sync console` in its own process against the sandbox
(median of REPEATS requests per page, logged in as an operator)."""
from __future__ import annotations

import re
import socket
import statistics
import subprocess
import sys
import time

import requests

from bench.common import ROOT, Context, Row, service_env
from bench.dlq import _fill

N_LETTERS = 10_000
N_DONE = 100_000
TARGET_MS = 300.0
REPEATS = 5


def run(ctx: Context) -> list[Row]:
    from ops.console.auth import hash_password
    from ops.processes import wait_until
    from sandbox import Sandbox, SandboxConfig
    from sandbox.data import generate_stockouts
    from shared.redis.conn import free_port

    prefix = ctx.prefix("f11")
    sb = Sandbox(SandboxConfig()).start()
    port = free_port()
    users = ctx.workdir / "console-users"
    users.write_text(f"bench:operator:{hash_password('bench-password')}\n")
    env = {**service_env(sb, redis_url=ctx.redis_url, prefix=prefix, log_level="WARNING"),
           "CONSOLE_SECRET_KEY": "b" * 40, "CONSOLE_USERS_FILE": str(users)}
    setup = time.monotonic()
    _fill(ctx, prefix, N_LETTERS)
    sb.add_stockouts(generate_stockouts(N_LETTERS, first_id=7_000_000, seed=7).stockouts)  # WDT knows them
    first_done = _done_marks(ctx, prefix, N_DONE)
    setup_s = time.monotonic() - setup
    log = (ctx.workdir / "console.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "console", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is not None or _listening(port), timeout=60, message="console listening")
        if proc.poll() is not None:
            raise RuntimeError(f"console exited: {(ctx.workdir / 'console.log').read_text()[-2000:]}")
        http = requests.Session()
        token = re.search(r'name="csrf" value="([^"]+)"', http.get(f"{url}/login").text)
        assert token, "the login page carries a CSRF token"
        http.post(f"{url}/login", data={"user": "bench", "password": "bench-password", "csrf": token.group(1)})
        letter = http.get(f"{url}/api/deadletters").json()["letters"][0]
        pages = ["/", "/api/status", "/deadletters", "/api/deadletters", "/deadletters?page=150",
                 "/deadletters?reason=502", f"/deadletters/{letter['stockout_id']}",
                 f"/trace?q={letter['stockout_id']}", f"/trace?q={first_done}", "/backfill", "/reconcile",
                 "/mapping", "/audit"]
        rows = []
        for path in pages:
            times = []
            for _ in range(REPEATS + 1):  # the first one warms up (templates compiled, the status read once)
                started = time.perf_counter()
                answer = http.get(f"{url}{path}", allow_redirects=False)
                times.append((time.perf_counter() - started) * 1000)
                if answer.status_code != 200:
                    raise RuntimeError(f"GET {path}: HTTP {answer.status_code}")
            median = statistics.median(times[1:])
            detail = f"max {max(times[1:]):.0f} ms; {len(answer.content)} bytes"
            asks_wdt = path == f"/trace?q={letter['stockout_id']}"
            if asks_wdt:  # the trace of a letter asks WDT for its order number: WDT's time and quota, not ours
                detail += ("; asks WDT for the order number in each status until found, each call a slot of "
                           "the tenant's WDT_RATE_PER_MINUTE (60 a minute here: a second apart)")
            rows.append(Row(f"11. console GET {path} (ms, median of {REPEATS})", median, f"< {TARGET_MS:.0f}",
                            None if asks_wdt else median < TARGET_MS, detail, fmt="{:.0f}"))
        rows[0].detail += (f"; {N_LETTERS} dead letters and {N_DONE} done marks in Redis "
                           f"(set up in {setup_s:.0f} s)")
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
        sb.stop()


def _done_marks(ctx: Context, prefix: str, n: int) -> str:
    """`n` done marks as workers write them (buckets of the state store), and the saved counter."""
    from shared.redis.keys import Keys
    from shared.redis.state import StateStore, done_mark

    client = ctx.client()
    store = StateStore(client, prefix, 60 * 86400)
    pipe = client.pipeline(transaction=False)
    first = 5_000_000
    for i in range(first, first + n):
        bucket, field = store.mark_slot(str(i))
        pipe.hset(bucket, field, done_mark(f"20{i}", f"QTCK{i}"))
        if i % 5000 == 0:
            pipe.execute()
    pipe.set(Keys(prefix).saved, n)
    pipe.execute()
    client.close()
    return str(first)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
