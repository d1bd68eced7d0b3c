"""Logging: one line per event, readable text by default, JSON with LOG_FORMAT=json; secrets scrubbed.

Scrubbing is the last line of defence, not the first: no code should log a secret. It replaces
every configured secret value and anything that looks like a credential in a URL query.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

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
        return True


class JsonFormatter(logging.Formatter):
    FIELDS = ("stockout_id", "order_no", "task_id", "stage", "attempt", "outcome", "duration_s")

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in self.FIELDS:
            if hasattr(record, field):
                doc[field] = getattr(record, field)
        if record.exc_text:
            doc["exception"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False)


def configure_logging(settings, *, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(processName)s: %(message)s"))
    handler.addFilter(ScrubFilter(Scrubber(settings.secret_values())))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # urllib3 logs full URLs (with access_token) at DEBUG; keep it quiet whatever the level.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
