"""A WDT data set the size of a backfill, served by the sandbox's gateway without holding it.

Why: the sandbox keeps every stockout as a dict (100,000 of them are gigabytes and take a minute to
generate) and answers each page by scanning the whole store and encoding it, so past ~10,000
stockouts the sandbox, not the producer, sets the pace. Here stockout `i` is computed when a page
asks for it: one of a few real generated stockouts (pre-encoded JSON) with its own id, order
number and modified time. The gateway in front is the sandbox's own (signature, timestamp, rate
limit, parameter checks); only the page body is built differently.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from fractions import Fraction
from math import ceil

from sandbox import Sandbox
from sandbox.data import generate_stockouts
from sandbox.faults import Reply
from sandbox.wdt import WDT_PATH, WdtApi, failure
from shared.core.timeutil import format_wire, to_beijing

_ID, _NO, _MOD = "@@sid@@", "@@no@@", "@@mod@@"
FIRST_ID = 50_000_001
LIVE_FIRST_ID = 90_000_001


class VirtualFeed:
    """`count` stockouts with ids FIRST_ID…, `per_second` of them per second of `modified` from `start`
    (a fraction too: 10,000 an hour is Fraction(25, 9)); `add_live` adds stockouts modified now."""

    def __init__(self, count: int, start: datetime, *, per_second: int | Fraction = 10, templates: int = 40) -> None:
        self.count = count
        self.start = to_beijing(start).replace(microsecond=0)
        self.per_second = Fraction(per_second)
        self.live: list[tuple[datetime, str]] = []  # (modified, pre-encoded stockout), in order
        sample = generate_stockouts(templates * 3, first_id=1, seed=7, start=self.start, end=self.start).stockouts
        fetched = [s for s in sample if s["status"] in ("95", "110")][:templates]
        self._templates = [_template(s) for s in fetched]

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=int((self.count - 1) / self.per_second))

    def _index(self, moment: datetime) -> int:
        """The first stockout modified at or after `moment` (item i is modified at floor(i / rate))."""
        return ceil(int((to_beijing(moment) - self.start).total_seconds()) * self.per_second)

    def item(self, i: int, sid: str, modified: datetime) -> str:
        return self._templates[i % len(self._templates)].replace(_ID, sid).replace(_NO, f"CK{sid}").replace(
            _MOD, format_wire(modified))

    def add_live(self, modified: datetime, n: int = 1) -> list[str]:
        """`n` stockouts modified at `modified` (after every earlier one); their ids."""
        ids = []
        for _ in range(n):
            sid = str(LIVE_FIRST_ID + len(self.live))
            self.live.append((to_beijing(modified).replace(microsecond=0), self.item(len(self.live), sid, modified)))
            ids.append(sid)
        return ids

    def page(self, start: datetime, end: datetime, page_no: int, page_size: int) -> tuple[int, list[str]]:
        lo = max(0, self._index(start))
        hi = min(self.count, self._index(end + timedelta(seconds=1)))
        past = max(0, hi - lo)
        start_s, end_s = to_beijing(start).replace(microsecond=0), to_beijing(end).replace(microsecond=0)
        live = [body for modified, body in list(self.live) if start_s <= modified <= end_s]
        first = page_no * page_size
        items = []
        for n in range(first, min(past + len(live), first + page_size)):
            if n < past:
                i = lo + n
                items.append(self.item(i, str(FIRST_ID + i), self.start + timedelta(seconds=int(i / self.per_second))))
            else:
                items.append(live[n - past])
        return past + len(live), items


def _template(raw: dict) -> str:
    raw = {**raw, "stockout_id": _ID, "order_no": _NO, "modified": _MOD}
    raw["details_list"] = [{**d, "stockout_id": _ID} for d in raw.get("details_list", [])]
    return json.dumps(raw, ensure_ascii=False, separators=(",", ":"))


class VirtualWdtApi(WdtApi):
    def __init__(self, base: WdtApi, feed: VirtualFeed) -> None:
        super().__init__(base.config, base.counters, base.faults, base.limit)
        self.feed = feed

    def _reply(self, query) -> Reply:
        if query.exact or not {"95", "110"} <= query.statuses or query.start is None or query.end is None:
            return failure("41", "Invalid arguments", "isv.invalid-parameter", "the virtual feed serves windows only")
        total, items = self.feed.page(query.start, query.end, query.page_no, query.page_size)
        head = '{"response":{"flag":"success","errorcode":0,"message":""'
        if query.page_no == 0 or self.config.wdt_total_count_every_page:
            head += f',"total_count":"{total}"'
        body = head + ',"stockout_list":[' + ",".join(items) + "]}}"
        return Reply(200, body.encode("utf-8"))


def serve_feed(sb: Sandbox, feed: VirtualFeed) -> None:
    """Put `feed` behind the sandbox's WDT gateway (its BIP side is untouched)."""
    sb.wdt = VirtualWdtApi(sb.wdt, feed)
    for method in ("GET", "POST"):
        sb._routes[(method, WDT_PATH)] = sb.wdt.handle

