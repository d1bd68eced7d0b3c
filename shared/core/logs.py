"""Logging: one line per event, readable text by default, JSON with LOG_FORMAT=json; each line's time
ISO-8601 in Beijing time with +08:00 (docs/design.md, "Times"). Secrets scrubbed as the last line of
defence, not the first (no code should log one): every configured secret, credentials in URL queries.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime
from typing import TextIO

from shared.core.settings import Settings
from shared.core.timeutil import BEIJING, parse_wire

# The event fields a log call may pass with `extra=`: JSON lines carry them as keys, text lines as
# `key=value` after the message. Listed, not discovered, so a library's own extras (Celery passes
# whole task contexts) never reach a line unscrubbed.
EVENT_FIELDS = (
    "stockout_id", "order_no", "task_id", "stage", "attempt", "outcome", "duration_s",
    "bip_id", "bip_code", "error", "code", "retry_in_s",
    "window_start", "window_end", "fetched", "published", "cursor",
)

# Business times among the event fields: Beijing wall-clock strings from the wire, marked with
# their offset in a log line (the one time convention: README, "Times").
TIME_FIELDS = frozenset({"window_start", "window_end", "cursor"})

_QUERY_SECRET = re.compile(r"(?i)\b(access_token|signature|sign|app_secret|appSecret|password)=([^&\s'\"]+)")


class Scrubber:
    def __init__(self, secrets: list[str]) -> None:
        # longest first, so a secret that contains another is replaced whole
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}=***", text)


class ScrubFilter(logging.Filter):
    def __init__(self, scrub: Scrubber) -> None:
        super().__init__()
        self.scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = self.scrub(message)
        record.args = None
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        record.exc_info = None if record.exc_text else record.exc_info
        for field in EVENT_FIELDS:
            value = getattr(record, field, None)
            if isinstance(value, str):
                setattr(record, field, self.scrub(value))
        return True


def log_time(created: float) -> str:
    """A log line's time: ISO-8601, Beijing time with its offset, e.g. 2026-11-29T09:30:00.123+08:00."""
    return datetime.fromtimestamp(created, BEIJING).isoformat(timespec="milliseconds")


def _marked(field: str, value: object) -> object:
    if field in TIME_FIELDS and isinstance(value, str):
        try:
            parsed = parse_wire(value)
        except ValueError:
            return value
        return parsed.isoformat() if parsed else value
    return value


def event_fields(record: logging.LogRecord) -> dict:
    return {f: _marked(f, getattr(record, f)) for f in EVENT_FIELDS if getattr(record, f, None) not in (None, "")}


class JsonFormatter(logging.Formatter):
    FIELDS = EVENT_FIELDS

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": log_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update(event_fields(record))
        if record.exc_text:
            doc["exception"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Readable lines: the message, then the event's fields as `key=value` (greppable, one line)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(processName)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return log_time(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = event_fields(record)
        if not fields:
            return line
        return line + "  " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())


def _text_value(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    handler.addFilter(ScrubFilter(Scrubber(settings.secret_values())))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Warnings too (Celery's SecurityWarning, deprecations): through the handler, so a JSON log
    # stays one object per line.
    logging.captureWarnings(True)
    # billiard (the prefork pool) reports a child's death, an OOM kill say, on a logger of its own
    # that does not propagate; without a handler it would reach stderr as a bare line.
    logging.getLogger("multiprocessing").handlers[:] = [handler]
    logging.lastResort = handler
    root.setLevel(settings.log_level.upper())
    # urllib3 logs full URLs (with access_token) at DEBUG; keep it quiet whatever the level.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
