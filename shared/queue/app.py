"""The one Celery app and all of its configuration. Queues: `stockouts` (one message per stockout,
for `stockout-sync worker`), `stockouts.backfill` (the same for backfill jobs, read only when
`stockouts` is empty), `producer` (the poll and the backfill task, for the process `beat` runs, so a
poll never waits behind thousands of saves) and `dead_letter` (consumed by nobody: its length is the
operator's to-do).
"""
from __future__ import annotations

import ssl
from functools import lru_cache

from celery import Celery
from celery.schedules import crontab
from kombu import Exchange, Queue

from shared.core.logs import configure_logging
from shared.core.redis_url import is_sentinel, parse_sentinel_url
from shared.core.settings import Settings, get_settings
from shared.redis.keys import BACKFILL_QUEUE, DEAD_LETTER_QUEUE, PRODUCER_QUEUE, STOCKOUT_QUEUE, Keys

# shared/queue/broker.py's transport, named rather than imported: it loads the dead-letter store and the
# runtime, which the app's configuration must not (the metrics exporter starts before them).
TRANSPORT = "shared.queue.broker:Transport"
SENTINEL_TRANSPORT = "shared.queue.broker:SentinelTransport"
POLL_TASK = "stockout_sync.poll"
BACKFILL_TASK = "stockout_sync.backfill"  # backfill jobs: a task and a lock of their own, beside the poll
SYNC_TASK = "stockout_sync.sync_stockout"
RECONCILE_TASK = "stockout_sync.reconcile_daily"
# The daily reconcile may wait out a 40-calls-a-minute quota; it is acked on receipt, so running
# longer than the visibility timeout never makes Redis hand it to a second process.
RECONCILE_TIME_LIMIT_S = 4 * 3600


def _restore_every(settings: Settings) -> int:
    return max(1, min(60, settings.broker_visibility_timeout_s // 4))


def celery_config(settings: Settings) -> dict:
    return {
        "broker_url": broker_url(settings),
        "broker_transport": SENTINEL_TRANSPORT if is_sentinel(settings.redis_url) else TRANSPORT,
        "broker_use_ssl": broker_tls(settings),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            # Longer than any task can run or wait for its retry (Settings checks it): a message
            # unacked for this long is handed to another worker, so it must mean "its worker died".
            "visibility_timeout": settings.broker_visibility_timeout_s,
            # One prefix for the broker's keys and ours, so one Redis can host several tenants.
            "global_keyprefix": Keys(settings.redis_prefix).broker_prefix,
            # Running workers sweep for messages whose worker died a few times per visibility
            # timeout (kombu's default is every ~100 s), so a lost worker's messages come back
            # soon after the timeout rather than after the next worker restart.
            "unacked_restore_interval": _restore_every(settings),
            "unacked_restore_throttle": 1,
            # The sweep's lock. kombu's 300 s means a worker killed inside a sweep (SIGKILL, the OOM
            # killer) stops every redelivery for five minutes; a sweep takes milliseconds, and two
            # sweeps at once are harmless (each restore is a WATCHed transaction on the unacked hash).
            "unacked_mutex_expire": max(5, _restore_every(settings)),
            "socket_connect_timeout": settings.http_connect_timeout_s,
            **sentinel_transport_options(settings),
            # Live first: kombu's default (round_robin) rotates the queues a worker reads after every
            # message, so a live stockout would alternate with backfill ones; `sorted` issues one BRPOP
            # over the queues in name order, and Redis pops from the first non-empty list, so
            # `stockouts` always comes before `stockouts.backfill` (kombu #518, celery #5874).
            "queue_order_strategy": "sorted",
        },
        # JSON only: pickle would let anyone who can write to Redis run code in the worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # Results live in Flower (from events) and in our own Redis state, not in a backend.
        "task_ignore_result": True,
        # Ack after the task ran: a worker killed mid-save leaves the message to be redelivered.
        # Safe because sync_stockout is idempotent (done mark + lock + resubmitCheckKey).
        "task_acks_late": True,
        # A worker process that dies (SIGKILL, OOM) puts its message back at once instead of
        # acking it as failed.
        "task_reject_on_worker_lost": True,
        # One message per process at a time: a crash strands at most one, and slow saves do not
        # hold back messages other processes could run.
        "worker_prefetch_multiplier": 1,
        # A hung HTTP call can never keep a message past the visibility timeout.
        "task_time_limit": settings.task_time_limit_s,
        # The soft limit raises inside the task, which then retries or dead-letters; only the hard
        # limit after it kills the process, and a killed task's message is acked by Celery.
        "task_soft_time_limit": soft_time_limit(settings),
        "task_queues": [
            Queue(STOCKOUT_QUEUE, Exchange(STOCKOUT_QUEUE), routing_key=STOCKOUT_QUEUE),
            Queue(BACKFILL_QUEUE, Exchange(BACKFILL_QUEUE), routing_key=BACKFILL_QUEUE),
            Queue(PRODUCER_QUEUE, Exchange(PRODUCER_QUEUE), routing_key=PRODUCER_QUEUE),
            Queue(DEAD_LETTER_QUEUE, Exchange(DEAD_LETTER_QUEUE), routing_key=DEAD_LETTER_QUEUE),
        ],
        "task_default_queue": STOCKOUT_QUEUE,
        "task_routes": {
            POLL_TASK: {"queue": PRODUCER_QUEUE},
            BACKFILL_TASK: {"queue": PRODUCER_QUEUE},
            RECONCILE_TASK: {"queue": PRODUCER_QUEUE},
            SYNC_TASK: {"queue": STOCKOUT_QUEUE},
        },
        "task_create_missing_queues": False,
        # Publishing (a retry, a dead letter, the poll's messages) waits out a Redis restart of a
        # few seconds: when a retry cannot be published Celery drops the message it came from.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 20,
            "interval_start": 0.1,
            "interval_step": 0.25,
            "interval_max": 1.0,
        },
        # Flower is fed by the workers' events and shows a task from the moment a worker receives
        # it; a task-sent event as well would be a second publish for every message.
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "beat_schedule": {
            "poll-wdt": {
                "task": POLL_TASK,
                "schedule": settings.poll_interval_s,
                # A beat that fires while the producer is busy must not pile up polls.
                "options": {"expires": max(1.0, settings.poll_interval_s)},
            },
            "backfill-jobs": {
                "task": BACKFILL_TASK,
                "schedule": settings.poll_interval_s,
                "options": {"expires": max(1.0, settings.poll_interval_s)},
            },
            **daily_reconcile_schedule(settings),
        },
        "timezone": "Asia/Shanghai",
        "enable_utc": True,
        "worker_hijack_root_logger": False,
        "include": ["producer.tasks", "worker.tasks"],
    }


def broker_url(settings: Settings) -> str:
    return parse_sentinel_url(settings.redis_url).kombu_url() if is_sentinel(settings.redis_url) else settings.redis_url


def sentinel_transport_options(settings: Settings) -> dict:
    """kombu's Sentinel transport: the master's name, and the Sentinels' own password when they have one."""
    if not is_sentinel(settings.redis_url):
        return {}
    options: dict = {"master_name": settings.redis_sentinel_master}
    if settings.redis_sentinel_password.get_secret_value():
        options["sentinel_kwargs"] = {"password": settings.redis_sentinel_password.get_secret_value()}
    return options


def daily_reconcile_schedule(settings: Settings) -> dict:
    """The daily reconcile of the previous Beijing day, when RECONCILE_DAILY_AT is set (crontab in
    the app's timezone, Asia/Shanghai)."""
    at = settings.reconcile_daily_time()
    if at is None:
        return {}
    return {
        "reconcile-previous-day": {
            "task": RECONCILE_TASK,
            "schedule": crontab(hour=at[0], minute=at[1]),
            "options": {
                "expires": 3600.0,  # a beat down at that time does not run yesterday's twice later
                "soft_time_limit": RECONCILE_TIME_LIMIT_S,
                "time_limit": RECONCILE_TIME_LIMIT_S + 60,
            },
        }
    }


def broker_tls(settings: Settings) -> dict | None:
    """rediss:// with the certificate verified (kombu alone would fall back to not verifying it)."""
    if not settings.redis_url.startswith("rediss://"):
        return None
    return {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        **({"ssl_ca_certs": settings.redis_ca_certs} if settings.redis_ca_certs else {}),
    }


def soft_time_limit(settings: Settings) -> float:
    return settings.task_time_limit_s - max(1.0, min(10.0, settings.task_time_limit_s * 0.2))


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery = Celery("stockout_sync")
    celery.config_from_object(celery_config(settings))
    return celery


@lru_cache(maxsize=1)
def get_app() -> Celery:
    """This process's app, made on first use: importing this module reads no settings."""
    return create_app()


def __getattr__(name: str) -> Celery:
    # `from shared.queue.app import app` in the task modules: they are only imported where an app is wanted.
    if name == "app":
        return get_app()
    raise AttributeError(name)


from celery.signals import setup_logging  # noqa: E402


@setup_logging.connect
def _configure_logging(**_kwargs: object) -> None:
    # Connected, so Celery leaves logging to us: one format and the secret scrubber everywhere.
    configure_logging(get_settings())
