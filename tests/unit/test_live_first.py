"""Live first in the configuration: the poll and the backfill task each scheduled by beat; workers read
`stockouts` before `stockouts.backfill` and hold one message a process (the locks: integration)."""
from __future__ import annotations

from shared.core.settings import Settings
from shared.queue.app import BACKFILL_TASK, POLL_TASK, celery_config
from shared.redis.keys import PRODUCER_QUEUE


def test_beat_schedules_the_poll_and_the_backfill_task_apart():
    config = celery_config(Settings(_env_file=None, poll_interval_s=3))
    schedule = {entry["task"]: entry for entry in config["beat_schedule"].values()}
    for task in (POLL_TASK, BACKFILL_TASK):
        assert schedule[task]["schedule"] == 3 and schedule[task]["options"]["expires"] == 3
        assert config["task_routes"][task] == {"queue": PRODUCER_QUEUE}


def test_workers_take_live_messages_first_and_hold_one_per_process():
    config = celery_config(Settings(_env_file=None))
    assert config["broker_transport_options"]["queue_order_strategy"] == "sorted"
    assert config["worker_prefetch_multiplier"] == 1 and config["task_acks_late"] is True
