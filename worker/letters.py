"""Making a dead letter: the failed stockout kept whole, with its stage and the reason in words."""
from __future__ import annotations

import socket
from typing import Any

from shared.core.errors import MappingError, StockoutSyncError
from shared.core.timeutil import format_wire, now_beijing
from shared.deadletters.model import DeadLetter, Stage
from shared.mapping.model import Mapping
from shared.redis.state import order_no_of
from worker.transform import locate_rejection


def stage_of(error: BaseException) -> Stage:
    if isinstance(error, MappingError):
        return "transform"
    if isinstance(error, StockoutSyncError):
        return "save" if error.api == "bip" else "fetch"
    return "internal"


def make_letter(
    raw: Any, sid: str, error: BaseException, *, attempts: int, task_id: str, message_id: str, mapping_fingerprint: str,
    mapping: Mapping | None = None,
) -> DeadLetter:
    now = format_wire(now_beijing())
    fields = error.to_dict() if isinstance(error, StockoutSyncError) else {}
    message = str(error) or type(error).__name__
    if mapping is not None and fields.get("api") == "bip" and fields.get("api_message"):
        where = locate_rejection(fields["api_message"], raw, mapping)
        if where:
            message = f"{message} (in the stockout: {where})"
    return DeadLetter(
        stockout_id=sid,
        order_no=order_no_of(raw),
        stage=stage_of(error),
        error_class=type(error).__name__,
        message=message,
        api=fields.get("api", ""),
        code=fields.get("code", ""),
        api_message=fields.get("api_message", ""),
        http_status=fields.get("http_status"),
        attempts=attempts,
        first_failed_at=now,
        last_failed_at=now,
        task_id=task_id,
        message_id=message_id,
        worker_host=socket.gethostname(),
        mapping_fingerprint=mapping_fingerprint,
        stockout=raw if isinstance(raw, dict) else {"_raw": raw},
    )
