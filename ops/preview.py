"""Preview: one stockout fetched from WDT by its number and the BIP payload the mapping in force makes
of it, or why it cannot be mapped (`stockout-sync preview` and the console's Mapping page)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from shared.errors import StockoutSyncError
from worker.transform import preview as make_preview

if TYPE_CHECKING:  # for the annotations only: the runtime loads shared.metrics, which must come after the exporter
    from shared.runtime import Runtime


class Preview(BaseModel):
    stockout_no: str
    found: bool
    payload: dict[str, Any] | None = None
    error: str = ""  # the mapping's reason when the stockout cannot be mapped


def preview(rt: Runtime, stockout_no: str) -> Preview:
    """Raises StockoutSyncError when WDT cannot be asked (the caller says so in its own way)."""
    from shared import metrics

    with metrics.wdt_purpose("preview"):
        raw = rt.wdt.get_by_no(stockout_no)
    if raw is None:
        return Preview(stockout_no=stockout_no, found=False)
    try:
        return Preview(stockout_no=stockout_no, found=True, payload={"data": make_preview(raw, rt.mapping)})
    except StockoutSyncError as err:
        return Preview(stockout_no=stockout_no, found=True, error=str(err))
