"""Which page of BIP's list to read next, when it is done (a short page, or `recordCount` read), and
the loop detection that stops a list ignoring `pageIndex`: `BipListPaginator`."""
from __future__ import annotations

from typing import Any

from shared.core.errors import APIConnectionError

LIST_PATH = "/yonbip/scm/othoutrecord/list"


class ListPaginationError(APIConnectionError):
    """BIP's list pages do not add up: its answer cannot be trusted to be whole."""


class BipListPaginator:
    """`advance(rows, total)` after each page read; then `next_page` (from 1), until `finished`."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.next_page = 1
        self.finished = False
        self.read = 0
        self._previous: list[str] | None = None

    def advance(self, rows: list[dict[str, Any]], total: int | None) -> None:
        ids = [str(row.get("id") or "") for row in rows]
        if rows and ids == self._previous:
            raise ListPaginationError(f"bip {LIST_PATH}: page {self.next_page} repeats page {self.next_page - 1} "
                                      "(pageIndex ignored)", api="bip")
        self._previous = ids
        self.read += len(rows)
        if not rows or len(rows) < self.page_size or (total is not None and self.read >= total):
            self.finished = True
            return
        self.next_page += 1
