"""BIP's list paginator: next page from 1, finished on a short page or the recordCount, and a list
that repeats a page (pageIndex ignored) stops it."""
from __future__ import annotations

import pytest

from shared.bip.paging import BipListPaginator, ListPaginationError


def rows(*ids: int) -> list[dict]:
    return [{"id": str(i)} for i in ids]


def test_pages_until_a_short_page_or_the_record_count():
    pages = BipListPaginator(2)
    assert (pages.next_page, pages.finished) == (1, False)
    pages.advance(rows(1, 2), None)
    assert (pages.next_page, pages.finished) == (2, False)
    pages.advance(rows(3), None)
    assert pages.finished and pages.read == 3
    counted = BipListPaginator(2)
    counted.advance(rows(1, 2), 4)
    counted.advance(rows(3, 4), 4)
    assert counted.finished and counted.next_page == 2  # no third call for an empty page
    empty = BipListPaginator(2)
    empty.advance([], None)
    assert empty.finished


def test_a_list_that_ignores_page_index_is_not_trusted_and_one_past_its_count_ends():
    pages = BipListPaginator(2)
    pages.advance(rows(1, 2), None)
    with pytest.raises(ListPaginationError, match="repeats page 1"):
        pages.advance(rows(1, 2), None)
    grown = BipListPaginator(2)
    grown.advance(rows(1, 2), 1)  # said one record, sent two: finished by the count
    assert grown.finished
