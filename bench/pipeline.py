"""Fill a queue with the real producer, then let real workers drain it: the shape of figures 1, 2, 3, 5."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from bench.common import Context, Processes, Sampler, run_producer, tree_rss_mb, wait_until
from shared.core.timeutil import now_beijing

# Times of the generated stockouts: well inside the window the producer reads
SPAN = (timedelta(hours=3), timedelta(hours=1))


@dataclass
class Drain:
    n: int
    rate: float  # stockouts/s leaving the queue, steady state
    saves_rate: float  # records/s arriving in the sandbox's BIP, steady state
    seconds: float
    worker_rss_mb: float
    counters: dict


def generate(sb, eligible: int, span: tuple[timedelta, timedelta] = SPAN) -> list[dict]:
    """About `eligible` stockouts in a fetched status (the sandbox also makes cancelled ones etc.),
    modified `span` ago; returns those, the ones the producer publishes."""
    now = now_beijing()
    made = sb.generate(int(eligible / 0.84) + 10, start=now - span[0], end=now - span[1])
    return [s for s in made if s["status"] in ("95", "110")]


def fill(env: dict[str, str], span: tuple[timedelta, timedelta] = SPAN) -> dict:
    """Publish what the sandbox has in `span`, with no worker consuming: the real producer's backfill."""
    now = now_beijing()
    return run_producer(env, now - span[0] - timedelta(minutes=1), now - span[1] + timedelta(minutes=1))


def drain(ctx: Context, sb, env: dict[str, str], name: str, n: int, *, workers: int = 1, timeout: float = 180,
          **worker_options) -> Drain:
    """Start `workers` worker processes on a queue holding `n` messages and time them until every
    message is saved in the sandbox."""
    r = ctx.client(env["REDIS_URL"])
    queue = f"{env['REDIS_PREFIX']}:stockouts"
    base = sb.counters()["bip_saves"]
    procs = Processes(ctx, name)
    rss = 0.0
    try:
        with (
            Sampler(lambda: n - r.llen(queue)) as left,
            Sampler(lambda: sb.counters()["bip_saves"] - base, every=0.1) as saved,
        ):
            started = procs.worker(env, n=workers, wait=False, **worker_options)

            def finished() -> bool:
                nonlocal rss
                rss = max(rss, sum(tree_rss_mb(p.pid) for p in started))
                return saved.last >= n and r.llen(queue) == 0

            wait_until(finished, timeout, interval=0.2, message=f"{n} saves ({name})")
        seconds = left.samples[-1][0] - left.samples[0][0]
        return Drain(n, left.rate(n), saved.rate(n), seconds, rss, sb.counters())
    finally:
        procs.stop_all()
        r.close()


def noop_drain(ctx: Context, env: dict[str, str], name: str, items: list[dict], *, timeout: float = 180,
               **worker_options) -> Drain:
    """The same, for no-op tasks carrying the same stockouts, on the same broker and worker settings."""
    from bench.noop import make_app, publish
    from shared.core.settings import Settings

    settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields})
    app = make_app(settings)
    try:
        publish(app, items)
    finally:
        app.close()
    n = len(items)
    r = ctx.client(env["REDIS_URL"])
    queue = f"{env['REDIS_PREFIX']}:stockouts"
    unacked = f"{env['REDIS_PREFIX']}:unacked"
    procs = Processes(ctx, name)
    rss = 0.0
    try:
        with Sampler(lambda: n - r.llen(queue)) as left:
            proc = procs.noop_worker(env, **worker_options)

            def finished() -> bool:
                nonlocal rss
                rss = max(rss, tree_rss_mb(proc.pid))
                if proc.poll() is not None:
                    raise RuntimeError(f"no-op worker exited with {proc.returncode}; see {procs.log('noop')}")
                return r.llen(queue) == 0 and r.hlen(unacked) == 0

            wait_until(finished, timeout, interval=0.2, message=f"{n} no-op tasks")
        seconds = left.samples[-1][0] - left.samples[0][0]
        return Drain(n, left.rate(n), 0.0, seconds, rss, {})
    finally:
        procs.stop_all()
        r.close()
