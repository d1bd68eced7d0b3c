"""The page counters a poll, a backfill slice and a backfill job keep alike."""
from __future__ import annotations

from pydantic import BaseModel


class PageCounts(BaseModel):
    pages: int = 0
    fetched: int = 0
    published: int = 0
    already_done: int = 0
    already_queued: int = 0
    filtered_out: int = 0

    def add(self, other: PageCounts) -> None:
        """Add what `other` read to these counts (a job summing its slices)."""
        for field in PageCounts.model_fields:
            setattr(self, field, getattr(self, field) + getattr(other, field))
