"""Preview: one stockout fetched from WDT by its number and the BIP payload the mapping in force makes
of it, or why it cannot be mapped (`stockout-sync preview` and the console's Mapping page)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from shared.core.errors import StockoutSyncError
from shared.runtime import Runtime
from worker.transform import preview as make_preview


class Preview(BaseModel):
    stockout_no: str
    found: bool
    lookup: str = ""  # how WDT was asked (WdtClient.find_by_no's line): the calls it took
    payload: dict[str, Any] | None = None
    error: str = ""  # the mapping's reason when the stockout cannot be mapped


def preview(rt: Runtime, stockout_no: str) -> Preview:
    """Looked up as `trace` does: from the times a dead letter knows, then in windows back to
    WDT_LOOKUP_HORIZON_DAYS. Raises StockoutSyncError when WDT cannot be asked."""
    from ops.trace import letter_times
    from shared.core import metrics

    with metrics.wdt_purpose("preview"):
        found = rt.wdt.find_by_no(stockout_no, near=letter_times(rt, stockout_no))
    if found.error is not None:
        raise found.error
    if found.record is None:
        return Preview(stockout_no=stockout_no, found=False, lookup=found.line())
    try:
        payload = {"data": make_preview(found.record, rt.mapping)}
    except StockoutSyncError as err:
        return Preview(stockout_no=stockout_no, found=True, lookup=found.line(), error=str(err))
    return Preview(stockout_no=stockout_no, found=True, lookup=found.line(), payload=payload)
