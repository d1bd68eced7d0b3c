"""Queue entries we cannot run (poison messages): recognised on their raw bytes before kombu or
Celery decode them, and quarantined as dead letters with those bytes, so one bad entry never stops
a worker and never vanishes. shared/queue/broker.py calls `quarantine_if_malformed` for every entry.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import inspect
import json
import logging
import typing
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from shared.core import metrics
from shared.deadletters.model import DeadLetter
from shared.deadletters.store import DeadLetterStore

log = logging.getLogger("stockout_sync.broker")

MALFORMED = "malformed message"
# What a Celery protocol-2 message needs to be run; we publish nothing else.
_ACCEPTED_CONTENT = ("application/json",)
_ACCEPTED_ENCODINGS = (None, "utf-8", "utf8", "binary")


def what_is_wrong(entry: bytes, *, max_bytes: int, tasks: Mapping[str, Callable[..., Any]] | None) -> str | None:
    """Why this queue entry cannot be run, in words; None when kombu and Celery can take it.

    The checks follow what kombu's Redis channel, its Message and Celery's task strategy would do
    with the entry, in that order, so anything that passes here decodes and dispatches there.
    `tasks` None: not a task queue (a reply to a broadcast such as `status`'s): only what kombu
    needs to decode the entry is checked."""
    if len(entry) > max_bytes:
        return f"{len(entry)} bytes, over MAX_MESSAGE_BYTES={max_bytes}"
    envelope, problem = _decoded(entry)
    if problem:
        return problem
    if not isinstance(envelope, dict):
        return f"a JSON {_kind(envelope)}, not an object"
    properties, headers = envelope.get("properties"), envelope.get("headers")
    if not isinstance(properties, dict) or not properties.get("delivery_tag"):
        return "no properties with a delivery_tag"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "properties.delivery_info is not an object"
    if tasks is None:
        body = envelope.get("body")
        if properties.get("body_encoding") == "base64" and not (isinstance(body, str) and _is_base64(body)):
            return "body is not base64"
        return None
    if not isinstance(headers, dict):
        return "no headers object"
    content_type = envelope.get("content-type")
    if content_type not in _ACCEPTED_CONTENT:
        return f"content type {content_type!r} (only application/json is accepted)"
    if envelope.get("content-encoding") not in _ACCEPTED_ENCODINGS:
        return f"content encoding {envelope.get('content-encoding')!r}"
    if properties.get("body_encoding") != "base64":
        return f"body encoding {properties.get('body_encoding')!r} (expected 'base64')"
    body = envelope.get("body")
    if not isinstance(body, str):
        return f"body is a JSON {_kind(body)}, not base64 text"
    try:
        payload = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return "body is not base64"
    decoded, problem = _decoded(payload)
    if problem:
        return f"body is {problem}"
    return _check_task(headers, decoded, tasks)


def _decoded(data: bytes) -> tuple[Any, str | None]:
    """The JSON in `data`, or what keeps it from being JSON text."""
    try:
        return json.loads(data.decode("utf-8")), None
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 text (byte {err.start})"
    except (ValueError, RecursionError) as err:
        return None, f"not JSON ({err})"


def _check_task(headers: dict[str, Any], body: Any, tasks: Mapping[str, Callable[..., Any]]) -> str | None:
    name = headers.get("task")
    if not isinstance(name, str) or not name:
        return "no task name in the headers (only Celery's message protocol 2 is accepted)"
    if name not in tasks:
        return f"unknown task {name!r}"
    if not isinstance(headers.get("id"), str) or not headers["id"]:
        return "no task id in the headers"
    for key in ("eta", "expires"):
        value = headers.get(key)
        if value is not None and not _is_iso_time(value):
            return f"headers.{key} is not a time: {_short(value)}"
    if not isinstance(body, list) or len(body) != 3:
        return f"body is a JSON {_kind(body)}, not [args, kwargs, options]"
    args, kwargs, options = body
    if not isinstance(args, list):
        return f"args are a JSON {_kind(args)}, not a list"
    if not isinstance(kwargs, dict):
        return f"kwargs are a JSON {_kind(kwargs)}, not an object"
    if not isinstance(options, dict):
        return f"options are a JSON {_kind(options)}, not an object"
    return _check_arguments(name, tasks[name], args, kwargs)


def _check_arguments(name: str, run: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> str | None:
    try:
        bound = inspect.signature(run).bind(*args, **kwargs)
    except TypeError as err:
        return f"wrong arguments for {name}: {err}"
    try:
        hints = typing.get_type_hints(run)
    except Exception:  # an annotation we cannot resolve: the arity check above is what we have
        hints = {}
    for param, value in bound.arguments.items():
        expected = hints.get(param)
        if isinstance(expected, type) and expected is not typing.Any and not isinstance(value, expected):
            return f"wrong arguments for {name}: {param} is a JSON {_kind(value)}, expected {expected.__name__}"
    return None


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _is_iso_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escaped(entry: bytes) -> str:
    """The entry as text a person can read: UTF-8 as it is, every other byte as \\xNN."""
    return entry.decode("utf-8", errors="backslashreplace")


class MalformedMessage(Exception):
    """What the check found wrong with a queue entry: the error its dead letter is made of."""


def malformed_id(entry: bytes) -> str:
    # The same bytes are the same letter: a producer pushing one bad entry a thousand times leaves
    # one letter seen a thousand times, not a thousand letters.
    return f"malformed-{hashlib.sha256(entry).hexdigest()[:20]}"


def quarantine(store: DeadLetterStore, entry: bytes, problem: str, *, queue: str) -> DeadLetter:
    """Keep the entry as a dead letter (no copy on the dead_letter queue: it is no task to run)."""
    # the store adds the attempts up: the same bytes again are the same letter seen once more
    letter = store.put(DeadLetter.new(malformed_id(entry), MalformedMessage(problem), stage="receive", kind="malformed",
                                      queue=queue, raw=escaped(entry)))
    metrics.MALFORMED.labels(queue).inc()
    log.error("%s on queue %s: %s; quarantined as dead letter %s", MALFORMED, queue, problem, letter.stockout_id)
    return letter
