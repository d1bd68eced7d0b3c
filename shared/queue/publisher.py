"""Messages on the queues: one `stockouts` message per stockout, and a dead letter's copy, built here
and pushed straight to the queue's list (a page in one LPUSH).
Why: docs/design.md, "Publishing messages"."""
from __future__ import annotations

import base64
import functools
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis
from celery import signals
from celery.utils import uuid
from celery.utils.nodenames import anon_nodename
from kombu import Producer
from kombu.entity import maybe_delivery_mode
from kombu.utils.json import dumps as json_dumps

from shared.core.errors import RetryPolicy, foreign
from shared.core.personal import redact
from shared.core.retry import call_with_retries
from shared.core.settings import get_settings
from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore
from shared.queue.app import SYNC_TASK, get_app
from shared.redis.conn import connect
from shared.redis.keys import DEAD_LETTER_QUEUE, STOCKOUT_QUEUE, Keys

log = logging.getLogger("stockout_sync.messages")

# kombu's Redis transport: message bodies are base64 text inside the JSON entry
_BODY_ENCODING = "base64"


def message_label(raw: dict, key: str) -> str:
    """What Flower shows as the task's arguments: who the stockout is, not the whole document. The order
    number first: Flower's column is 400 px wide and cuts what does not fit."""
    order_no = raw.get("order_no", "") if isinstance(raw, dict) else ""
    return repr({"order_no": order_no, "stockout_id": key})


_LABELLED_ID = re.compile(r"'stockout_id': '([^'\\]*)'")


def labelled_stockout_id(label: str) -> str:
    """The stockout id a `message_label` names ("" when it names none)."""
    found = _LABELLED_ID.search(label or "")
    return found.group(1) if found else ""


class MessageTooLarge(Exception):
    """A stockout whose message would be over MAX_MESSAGE_BYTES: the error its dead letter is made of."""


class Publisher:
    """`publish(raw, key)` sends one message now; `publish.many(items)` sends a page of them in one
    Redis command. Either way every message has left when the call returns."""

    def __init__(self) -> None:
        self._client: tuple[str, redis.Redis] | None = None

    def __call__(self, raw: dict, key: str, *, queue: str = STOCKOUT_QUEUE, task_id: str | None = None,
                 generation: int = 0) -> str:
        """`generation` > 0 re-creates a record deleted in BIP under a new resubmitCheckKey
        (worker.transform.resubmit_key); only reconcile --requeue-missing sends one."""
        if get_app().conf.task_send_sent_event:
            with get_app().producer_or_acquire() as producer:
                return self._send(producer, raw, key, queue, task_id, generation)
        page = _Page(queue, max_bytes=get_settings().max_message_bytes)
        task_id = page.add(raw, key, task_id, generation)
        self._flush(page)
        return task_id

    @staticmethod
    def _send(producer: Producer, raw: dict, key: str, queue: str, task_id: str | None, generation: int = 0) -> str:
        """kombu's own publish, which also sends the task-sent event."""
        task_id = task_id or uuid()
        message = get_app().amqp.create_task_message(
            task_id, SYNC_TASK, (), _kwargs(raw, generation), kwargsrepr=message_label(raw, key), argsrepr="()",
            create_sent_event=get_app().conf.task_send_sent_event, **_lineage(),
        )
        get_app().amqp.send_task_message(producer, SYNC_TASK, message, queue=queue, declare=[])
        return task_id

    def many(self, items: Iterable[tuple[dict, str]], *, queue: str = STOCKOUT_QUEUE) -> list[str]:
        items = list(items)
        if not items:
            return []
        if get_app().conf.task_send_sent_event:
            # A task-sent event each is kombu's to publish; still one round trip for the page.
            with get_app().producer_or_acquire() as producer, producer.batch(max_size=4 * len(items)):
                return [self._send(producer, raw, key, queue, None) for raw, key in items]
        page = _Page(queue, max_bytes=get_settings().max_message_bytes)
        ids = [page.add(raw, key) for raw, key in items]
        self._flush(page)
        return ids

    def _flush(self, page: _Page) -> None:
        """The page's messages in one LPUSH, Celery's after-publish signals, then the ones held back."""
        self._push(page.queue, page.entries)
        page.published()
        self._hold(page)

    def _hold(self, page: _Page) -> None:
        """A stockout whose message would be over MAX_MESSAGE_BYTES is not sent (every worker would
        quarantine it unread, and a malformed letter cannot be requeued): it becomes a dead letter of
        its own, kept whole, that `dlq requeue` sends once the limit is raised. (Counted by the scrape-time
        gauge `dead_letters{stage="publish"}`: this module must not load shared.core.metrics, which a
        process's metrics exporter has to set up first.)"""
        if not page.too_large:
            return
        store = DeadLetterStore(self._broker(), _prefix())
        for raw, key, size in page.too_large:
            error = MessageTooLarge(f"its message is {size} bytes, over MAX_MESSAGE_BYTES={page.max_bytes}: raise "
                                    f"MAX_MESSAGE_BYTES (producer and workers alike), then `dlq requeue {key}`")
            letter = DeadLetter.new(key, error, stage="publish", stockout=raw)
            self.retrying(functools.partial(store.put, letter))
            log.error("stockout %s not published: %s; kept as a dead letter", key, letter.message,
                      extra={"stage": "publish", "outcome": "dead_letter", "stockout_id": key})

    def dead_letter_copy(self, letter: DeadLetter) -> None:
        """The letter's copy on the dead_letter queue: its stockout's message (the receiver's data dropped
        unless the letters keep it) under the letter's message id. Always built here, never by kombu: the
        store keeps the exact bytes, so `dlq requeue` and `purge` remove the copy by value instead of
        searching the queue for it."""
        store = DeadLetterStore(self._broker(), _prefix())
        entry = queue_entry(store.clean(letter.stockout), letter.stockout_id, letter.message_id, DEAD_LETTER_QUEUE)
        self.retrying(lambda: store.push_copy(letter.stockout_id, entry))

    def _broker(self) -> redis.Redis:
        url = get_app().conf.broker_url
        if self._client is None or self._client[0] != url:
            ca_certs = (get_app().conf.broker_use_ssl or {}).get("ssl_ca_certs", "")
            transport = get_app().conf.broker_transport_options or {}
            # a sentinel:// broker: the master the Sentinels name, found again after a failover
            sentinel = transport.get("sentinel_kwargs") or {}
            client = connect(
                url, ca_certs, master=transport.get("master_name", ""), sentinel_password=sentinel.get("password", ""),
                socket_connect_timeout=transport.get("socket_connect_timeout"), socket_timeout=30,
                health_check_interval=30,
            )
            self._client = (url, client)
        return self._client[1]

    def _push(self, queue: str, entries: list[bytes]) -> None:
        """One LPUSH for the page (atomic: all of it or none), retried as task_publish_retry says."""
        if not entries:  # every one of them held back as too large
            return
        # LPUSH a b c leaves c at the head: BRPOP takes a first, as with one LPUSH each
        self.retrying(lambda: self._broker().lpush(Keys(_prefix()).queue(queue), *entries))

    @staticmethod
    def retrying(send: Callable[[], object]) -> None:
        """`send()`, waiting out a Redis restart of a few seconds as task_publish_retry says."""
        conf = get_app().conf.task_publish_retry_policy or {}
        retries = conf.get("max_retries", 3) if get_app().conf.task_publish_retry else 0
        first = max(0.01, conf.get("interval_start", 0) or conf.get("interval_step", 0.2))
        policy = RetryPolicy(retries + 1, first, conf.get("interval_max", 1))
        call_with_retries(send, policy, what="publish", classify=_broker_error)


def _broker_error(error: BaseException) -> BaseException | None:
    # a Redis restart of a few seconds is waited out; anything else is raised as it is
    return foreign(error, where="publishing")


def _prefix() -> str:
    """REDIS_PREFIX as the app in use has it (its broker's key prefix, `Keys.broker_prefix`)."""
    return str((get_app().conf.broker_transport_options or {}).get("global_keyprefix", "")).removesuffix(":")


class _Page:
    """The Redis entries of one page, as kombu's Redis transport writes them: Celery's own message
    (`create_task_message`), its body as base64 JSON, inside a JSON envelope."""

    def __init__(self, queue: str, *, max_bytes: int | None = None) -> None:
        self.queue = queue
        self.max_bytes = max_bytes
        self.entries: list[bytes] = []
        self.too_large: list[tuple[dict, str, int]] = []  # (stockout, key, entry size) left out
        self.sent: list[tuple] = []
        self.origin = anon_nodename()  # what Celery would look up again for every message
        self.fixed = {
            "delivery_mode": maybe_delivery_mode(get_app().conf.task_default_delivery_mode),
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": _BODY_ENCODING,
        }
        self.before = signals.before_task_publish.receivers
        self.after = signals.after_task_publish.receivers
        self.retry_policy = get_app().conf.task_publish_retry_policy

    def add(self, raw: dict, key: str, task_id: str | None = None, generation: int = 0) -> str:
        task_id = task_id or uuid()
        headers, properties, body, _ = get_app().amqp.create_task_message(
            task_id, SYNC_TASK, (), _kwargs(raw, generation), kwargsrepr=message_label(raw, key), argsrepr="()",
            origin=self.origin, **_lineage(),
        )
        if self.before:
            signals.before_task_publish.send(
                sender=SYNC_TASK, body=body, exchange="", routing_key=self.queue, declare=[], headers=headers,
                properties=properties, retry_policy=self.retry_policy,
            )
        properties.update(self.fixed, delivery_tag=uuid())
        entry = _json({
            "body": base64.b64encode(_json(body)).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        })
        if self.max_bytes is not None and len(entry) > self.max_bytes:
            self.too_large.append((raw, key, len(entry)))
            return task_id
        if self.after:
            self.sent.append((body, headers))
        self.entries.append(entry)
        return task_id

    def published(self) -> None:
        for body, headers in self.sent:
            signals.after_task_publish.send(sender=SYNC_TASK, body=body, headers=headers, exchange="",
                                            routing_key=self.queue)


def _kwargs(raw: dict, generation: int) -> dict:
    # Data minimisation: the receiver's fields (never sent to BIP) do not travel in a message, so no
    # queue, retry or Flower page holds them — unless DLQ_KEEP_PERSONAL_DATA asks letters to keep them.
    stockout = raw if get_settings().dlq_keep_personal_data else redact(raw)
    # generation 0 is left out: every ordinary message stays exactly what it always was
    return {"stockout": stockout, "generation": generation} if generation else {"stockout": stockout}


def _lineage() -> dict:
    """A message published from inside a task (a dead letter) names that task, as send_task does."""
    parent = get_app().current_worker_task
    if not parent:
        return {}
    return {"root_id": parent.request.root_id or parent.request.id, "parent_id": parent.request.id}


def _json(value: Any) -> bytes:
    # orjson: a twelfth of the stdlib's time for a stockout, and the producer writes thousands a second
    try:
        return orjson.dumps(value)
    except TypeError:  # what orjson will not write (an int beyond 64 bits…): as kombu would
        return json_dumps(value).encode("utf-8")


publish_stockout = Publisher()


def queue_entry(raw: dict, key: str, task_id: str, queue: str = STOCKOUT_QUEUE) -> bytes:
    """The Redis entry of one stockout's message on `queue`, as kombu's transport writes it."""
    page = _Page(queue)
    page.add(raw, key, task_id)
    return page.entries[0]
