"""The yardstick for figure 1: a task that does nothing, on a Celery app configured exactly like ours
(`create_app` with the same settings: broker, prefix, acks_late, reject_on_worker_lost, prefetch,
serializer, events, time limits) and run by a worker started the way `stockout-sync worker` starts
one (same queue, pool, concurrency and log level).

`python -m bench.noop worker [--pool=P] [--concurrency=N]` runs that worker.
"""
from __future__ import annotations

import sys

from celery import Celery
from celery.utils import uuid

from shared.core.settings import Settings, get_settings
from shared.queue.app import create_app
from shared.redis.keys import STOCKOUT_QUEUE

NOOP_TASK = "bench.noop"


def make_app(settings: Settings) -> Celery:
    app = create_app(settings)

    @app.task(name=NOOP_TASK, acks_late=True)
    def noop(stockout: dict) -> None:
        return None

    return app


def publish(app: Celery, items: list[dict], batch: int = 100) -> None:
    """One message per stockout, with the body a sync message carries, a page per round trip."""
    amqp = app.amqp
    with app.producer_or_acquire() as producer:
        for i in range(0, len(items), batch):
            with producer.batch(max_size=10 * batch):
                for raw in items[i : i + batch]:
                    message = amqp.create_task_message(
                        uuid(), NOOP_TASK, (), {"stockout": raw}, argsrepr="()",
                        kwargsrepr=repr({"stockout_id": raw.get("stockout_id")}),
                        create_sent_event=app.conf.task_send_sent_event,
                    )
                    amqp.send_task_message(producer, NOOP_TASK, message, queue=STOCKOUT_QUEUE, declare=[])


def main(argv: list[str]) -> None:
    if argv[:1] != ["worker"]:
        raise SystemExit("usage: python -m bench.noop worker [--pool=P] [--concurrency=N]")
    from shared.core.logs import configure_logging

    s = get_settings()
    configure_logging(s)
    options = dict(arg.split("=", 1) for arg in argv[1:] if arg.startswith("--") and "=" in arg)
    make_app(s).worker_main([
        "worker",
        "-Q", STOCKOUT_QUEUE,
        f"--pool={options.get('--pool') or s.worker_pool}",
        f"--concurrency={options.get('--concurrency') or s.worker_concurrency}",
        "--hostname=noop@%h",
        f"--loglevel={s.log_level}",
    ])


if __name__ == "__main__":
    main(sys.argv[1:])
