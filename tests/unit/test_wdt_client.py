"""The WDT requestor's parsing and error mapping, the paginator and window slicing — no network:
replies come from a requests adapter stub."""
from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from urllib.parse import parse_qsl

import pytest
import requests

from shared.core.errors import (
    Action,
    APIConnectionError,
    AuthenticationError,
    InvalidRequestError,
    RateLimitError,
    resolve,
)
from shared.core.http import make_session
from shared.core.settings import Settings
from shared.core.timeutil import BEIJING
from shared.wdt.client import WdtClient
from shared.wdt.paging import PaginationError, WdtPage, WdtPaginator, slice_range
from shared.wdt.sign import top_md5_sign
from tests.unit.fake_http import FakeAdapter

SECRET = "wdt-very-secret"
T0 = datetime(2024, 5, 1, 0, 0, 0, tzinfo=BEIJING)
T1 = datetime(2024, 5, 2, 0, 0, 0, tzinfo=BEIJING)


class Stub(FakeAdapter):
    """Answers with `handler(form_params, request)` → (status, body) or an exception to raise."""

    def __init__(self, handler) -> None:
        super().__init__()
        self.handler = handler
        self.calls: list[dict] = []
        self.kwargs: list[dict] = []

    def answer(self, request, **kwargs):
        form = dict(parse_qsl(request.body or "", keep_blank_values=True)) if isinstance(request.body, str) else {}
        self.calls.append(form)
        self.kwargs.append(kwargs)
        return self.handler(form, request)


def make_settings(**overrides) -> Settings:
    base = {
        "_env_file": None,
        "wdt_qimen_url": "https://wdt.test/router/qm",
        "wdt_app_key": "app",
        "wdt_app_secret": SECRET,
        "wdt_sid": "sid",
        "wdt_page_size": 3,
        "wdt_rate_per_minute": 60,
    }
    base.update(overrides)
    return Settings(**base)


def client_with(handler, **overrides) -> tuple[WdtClient, Stub]:
    s = make_settings(**overrides)
    session = make_session(s)
    stub = Stub(handler)
    session.mount("https://", stub)
    return WdtClient(s, session=session), stub


def ok(records=None, total=None, bare=False, **extra):
    body = {"flag": "success", "errorcode": 0, "stockout_list": records or [], **extra}
    if total is not None:
        body["total_count"] = str(total)
    return 200, (body if bare else {"response": body})


def fail(code, message="", sub_code="", sub_message="", key="response"):
    return 200, {
        key: {"flag": "failure", "code": code, "message": message, "sub_code": sub_code, "sub_message": sub_message}
    }


# ---- the request ------------------------------------------------------------------------------


def test_posts_signed_form_with_timeout():
    client, stub = client_with(lambda form, req: ok([{"stockout_id": "1"}], total=1))
    page = client.query_page(T0, T1, 0, 50, status="95")
    assert page.total_count == 1 and page.stockouts == [{"stockout_id": "1"}] and page.page_no == 0
    form = stub.calls[0]
    assert form["start_time"] == "2024-05-01 00:00:00" and form["end_time"] == "2024-05-02 00:00:00"
    assert form["page_no"] == "0" and form["page_size"] == "50" and form["status"] == "95"
    assert form["sign"] == top_md5_sign({k: v for k, v in form.items() if k != "sign"}, SECRET)
    s = client.settings
    assert stub.kwargs[0]["timeout"] == (s.http_connect_timeout_s, s.http_read_timeout_s)
    assert stub.kwargs[0]["verify"] not in (False, None, "")  # True or a CA bundle: never off


@pytest.mark.parametrize(
    "reply",
    [
        ok([{"stockout_id": "1"}], total=1),
        ok([{"stockout_id": "1"}], total=1, bare=True),
        (
            200,
            {"response": {"errorcode": "0", "code": "", "total_count": "1", "stockout_list": [{"stockout_id": "1"}]}},
        ),
        (200, {"code": 0, "total_count": 1, "stockout_list": [{"stockout_id": "1"}]}),
    ],
)
def test_success_envelopes(reply):
    client, _ = client_with(lambda form, req: reply)
    page = client.query_page(T0, T1, 0)
    assert page.total_count == 1 and page.stockouts[0]["stockout_id"] == "1"


def test_raw_records_are_kept_as_sent():
    weird = {"stockout_id": "7", "goods_count": "not a number", "extra_field": {"x": 1}}
    client, _ = client_with(lambda form, req: ok([weird], total=1))
    assert client.query_page(T0, T1, 0).stockouts == [weird]


def test_missing_total_and_list():
    client, _ = client_with(lambda form, req: (200, {"response": {"flag": "success"}}))
    page = client.query_page(T0, T1, 2)
    assert page.total_count is None and page.stockouts == [] and page.page_no == 2


@pytest.mark.parametrize(
    "reply, error, code",
    [
        (fail("1012", "调用太频繁", "isv.call-limited"), RateLimitError, "1012"),
        (fail("7", "App Call Limited", "accesscontrol.limited"), RateLimitError, "7"),
        (fail("25", "Invalid signature", "isv.invalid-signature"), AuthenticationError, "25"),
        (fail("29", "Invalid app Key", "isv.appkey-not-exists"), AuthenticationError, "29"),
        (fail("28", "Missing app key"), AuthenticationError, "28"),
        (fail("11", "Insufficient isv permissions", "isv.permission-api-package-limit"), AuthenticationError, "11"),
        (fail("41", "Invalid arguments", "isv.invalid-parameter:sid"), AuthenticationError, "41"),
        (fail("31", "Invalid timestamp", "isv.invalid-timestamp"), APIConnectionError, "31"),
        (fail("40", "Missing required arguments", "isv.missing-parameter:start_time"), InvalidRequestError, "40"),
        (fail("41", "Invalid arguments", "isv.invalid-parameter:page_size"), InvalidRequestError, "41"),
        (fail("15", "Remote service error", "isp.remote-service-error"), APIConnectionError, "15"),
        (
            fail("", "Remote", "isp.top-remote-connection-timeout"),
            APIConnectionError,
            "isp.top-remote-connection-timeout",
        ),
        (fail("9999", "something new"), InvalidRequestError, "9999"),
        (fail("25", "Invalid signature", "isv.invalid-signature", key="error_response"), AuthenticationError, "25"),
        ((200, {"response": {"flag": "failure", "message": "no code at all"}}), InvalidRequestError, ""),
        ((200, {"response": {"errorcode": 100, "message": "WDT says no"}}), InvalidRequestError, "100"),
    ],
)
def test_failures_become_typed_errors(reply, error, code):
    client, _ = client_with(lambda form, req: reply)
    with pytest.raises(error) as info:
        client.query_page(T0, T1, 0)
    err = info.value
    assert type(err) is error
    assert err.api == "wdt" and err.code == code
    assert SECRET not in str(err) and SECRET not in repr(err.to_dict())


def test_auth_error_names_the_settings_not_the_secret():
    client, _ = client_with(lambda form, req: fail("25", "Invalid signature", "isv.invalid-signature"))
    with pytest.raises(AuthenticationError) as info:
        client.query_page(T0, T1, 0)
    assert "check WDT_APP_SECRET" in str(info.value) and "WDT authentication" in str(info.value)
    assert resolve(info.value, 1).action is Action.PAUSE


def test_sign_check_failure_is_wdt_authentication():
    client, _ = client_with(lambda form, req: fail("", "", "isv.sign-check-failure", "签名错误"))
    with pytest.raises(AuthenticationError) as info:
        client.query_page(T0, T1, 0)
    assert "WDT authentication failed" in str(info.value) and "check WDT_APP_SECRET" in str(info.value)
    assert resolve(info.value, 1).action is Action.PAUSE


def test_rate_limit_retry_after():
    client, _ = client_with(lambda form, req: fail("1012", "调用太频繁"))
    with pytest.raises(RateLimitError) as info:
        client.query_page(T0, T1, 0)
    assert info.value.retry_after == 10.0  # no hint and no shared limiter: a patient default
    decision = resolve(info.value, 1)
    assert decision.action is Action.WAIT_RATE_LIMITED and 10.0 <= decision.delay_s <= 10.25
    client, _ = client_with(lambda form, req: fail("7", "This ban will last 23 more seconds"))
    with pytest.raises(RateLimitError) as info:
        client.query_page(T0, T1, 0)
    assert info.value.retry_after == 23.0
    client, _ = client_with(lambda form, req: fail("1012", "too frequent"), wdt_rate_per_minute=2)
    with pytest.raises(RateLimitError) as info:
        client.query_page(T0, T1, 0)
    assert info.value.retry_after == 30.0


def test_secret_echoed_by_the_server_is_scrubbed():
    client, _ = client_with(lambda form, req: fail("9", f"bad secret {SECRET}"))
    with pytest.raises(InvalidRequestError) as info:
        client.query_page(T0, T1, 0)
    assert SECRET not in str(info.value) and SECRET not in info.value.api_message


@pytest.mark.parametrize(
    "reply",
    [
        (500, b"<html>500</html>"),
        (502, {"response": {"flag": "success"}}),
        (200, b'{"response": {"flag": "succ'),
        (200, b"<html>gateway</html>"),
        (200, b"[1, 2]"),
        requests.ConnectionError(
            "HTTPSConnectionPool(host='wdt.test'): Max retries exceeded with url: /router/qm?sign=ABC&app_secret=x"
        ),
        requests.ReadTimeout("read timed out"),
        requests.ConnectTimeout("connect timed out"),
    ],
)
def test_transport_failures_are_retryable(reply):
    client, _ = client_with(lambda form, req: reply)
    with pytest.raises(APIConnectionError) as info:
        client.query_page(T0, T1, 0)
    assert info.value.should_retry and info.value.api == "wdt"
    assert "sign=" not in str(info.value) and "app_secret" not in str(info.value)
    assert "https://wdt.test/router/qm" in str(info.value)
    assert resolve(info.value, 1).action is Action.RETRY


def test_http_429_is_rate_limit():
    client, _ = client_with(lambda form, req: (429, b"slow down"))
    with pytest.raises(RateLimitError):
        client.query_page(T0, T1, 0)


# ---- local validation --------------------------------------------------------------------------


def test_refuses_bad_windows_and_sizes_locally():
    client, stub = client_with(lambda form, req: ok())
    with pytest.raises(InvalidRequestError) as info:
        client.query_page(T1, T0, 0)
    assert "2024-05-02 00:00:00" in str(info.value) and "2024-05-01 00:00:00" in str(info.value)
    with pytest.raises(InvalidRequestError) as info:
        client.query_page(T0, T0 + timedelta(days=30, seconds=1), 0)
    assert "2024-05-01 00:00:00" in str(info.value) and "2024-05-31 00:00:01" in str(info.value)
    client.query_page(T0, T0 + timedelta(days=30), 0)  # exactly 30 days is legal
    for size in (0, 101, -1):
        with pytest.raises(InvalidRequestError):
            client.query_page(T0, T1, 0, size)
    with pytest.raises(InvalidRequestError):
        client.query_page(T0, T1, -1)
    assert len(stub.calls) == 1


def test_default_page_size_from_settings():
    client, stub = client_with(lambda form, req: ok(), wdt_page_size=77)
    client.query_page(T0, T1, 0)
    assert stub.calls[0]["page_size"] == "77"


# ---- paging ------------------------------------------------------------------------------------


class FakeWdt:
    """Records ordered by modified time; `on_call(page_no)` runs before each answer so a test can
    edit stockouts (which moves them out of the window) in between."""

    def __init__(self, n: int, *, total_every_page=False, total_on_page0=True) -> None:
        self.records = [{"stockout_id": str(i), "order_no": f"SO{i}"} for i in range(n)]
        self.total_every_page = total_every_page
        self.total_on_page0 = total_on_page0
        self.pages: list[int] = []
        self.on_call = lambda page_no: None

    def __call__(self, form, req):
        if form.get("stockout_no"):
            found = [r for r in self.records if r["order_no"] == form["stockout_no"]]
            return ok(found, total=len(found))
        page_no, size = int(form["page_no"]), int(form["page_size"])
        self.on_call(page_no)
        self.pages.append(page_no)
        total = None
        if (page_no == 0 and self.total_on_page0) or self.total_every_page:
            total = len(self.records)
        return ok(self.records[page_no * size:(page_no + 1) * size], total=total)

    def leave(self, stockout_id: str) -> None:
        self.records = [r for r in self.records if r["stockout_id"] != stockout_id]


def ids(pages) -> list[str]:
    return [r["stockout_id"] for p in pages for r in p.stockouts]


def test_pages_backwards_then_rereads_page_zero():
    fake = FakeWdt(10)
    client, _ = client_with(fake)
    pages = list(client.iter_pages(T0, T1))
    assert fake.pages == [0, 3, 2, 1, 0]
    assert sorted(ids(pages), key=int) == [str(i) for i in range(10)]
    assert len(ids(pages)) == 10  # the re-read of page 0 yields nothing twice
    assert pages[-1].rereads == 3 and pages[-1].stockouts == []


@pytest.mark.parametrize(
    "n, expected", [(0, [0]), (2, [0]), (3, [0]), (4, [0, 1, 0]), (6, [0, 1, 0]), (7, [0, 2, 1, 0])]
)
def test_page_plan_for_sizes(n, expected):
    fake = FakeWdt(n)
    client, _ = client_with(fake)
    assert len(ids(client.iter_pages(T0, T1))) == n
    assert fake.pages == expected


@pytest.mark.parametrize("leave_at_call", [1, 2, 3, 4])
@pytest.mark.parametrize("victim", ["0", "1", "4", "8"])
def test_a_stockout_leaving_the_window_while_paging_never_hides_another(leave_at_call, victim):
    """An edit moves `victim` out of the window (its new modified time is after the end), shifting
    every later stockout one place earlier. Every stockout still in the window must be read."""
    fake = FakeWdt(10)
    calls = {"n": 0}

    def on_call(page_no):
        calls["n"] += 1
        if calls["n"] == leave_at_call + 1:
            fake.leave(victim)

    fake.on_call = on_call
    client, _ = client_with(fake)
    seen = set(ids(client.iter_pages(T0, T1)))
    assert {str(i) for i in range(10)} - {victim} <= seen


def test_forward_paging_would_have_missed_one():
    """The reason for the backward order: the same edit, read forwards, skips a stockout."""
    fake = FakeWdt(10, total_on_page0=False)
    calls = {"n": 0}

    def on_call(page_no):
        calls["n"] += 1
        if calls["n"] == 2:
            fake.leave("0")

    fake.on_call = on_call
    client, _ = client_with(fake)
    seen = set(ids(client.iter_pages(T0, T1)))
    assert fake.pages == [0, 1, 2, 3]
    assert "3" not in seen  # shifted from page 1 onto the already-read page 0


def test_forward_fallback_without_total_count():
    fake = FakeWdt(7, total_on_page0=False)
    client, _ = client_with(fake)
    assert sorted(ids(client.iter_pages(T0, T1)), key=int) == [str(i) for i in range(7)]
    assert fake.pages == [0, 1, 2]


def test_total_on_every_page_changes_nothing():
    fake = FakeWdt(7, total_every_page=True)
    client, _ = client_with(fake)
    assert len(ids(client.iter_pages(T0, T1))) == 7
    assert fake.pages == [0, 2, 1, 0]


def test_iter_pages_is_lazy():
    fake = FakeWdt(10)
    client, _ = client_with(fake)
    it = client.iter_pages(T0, T1)
    next(it)
    assert fake.pages == [0]
    next(it)
    assert fake.pages == [0, 3]


def test_server_ignoring_page_no_is_detected():
    full = [{"stockout_id": str(i)} for i in range(3)]
    client, _ = client_with(lambda form, req: ok(full))
    with pytest.raises(PaginationError):
        list(client.iter_pages(T0, T1))


def test_paginator_loop_detection():
    p = WdtPaginator(10)
    p.advance(WdtPage(page_no=0, page_size=10, total_count=25, stockouts=[{}] * 10))
    assert p.next_page_no == 2 and not p.finished
    with pytest.raises(PaginationError):
        p.advance(WdtPage(page_no=1, page_size=10, stockouts=[]))  # not the page that was due
    p = WdtPaginator(10)
    for page_no in (0, 2, 1):
        p.advance(WdtPage(page_no=page_no, page_size=10, total_count=25, stockouts=[{}] * 5))
    assert p.next_page_no == 0  # the planned re-read is allowed
    p.advance(WdtPage(page_no=0, page_size=10, stockouts=[]))
    assert p.finished and p.next_page_no is None
    with pytest.raises(PaginationError):
        p.advance(WdtPage(page_no=0, page_size=10, stockouts=[]))
    # forward mode: a hard page cap
    p = WdtPaginator(1, max_pages=3)
    p.advance(WdtPage(page_no=0, page_size=1, stockouts=[{"stockout_id": "a"}]))
    p.advance(WdtPage(page_no=1, page_size=1, stockouts=[{"stockout_id": "b"}]))
    with pytest.raises(PaginationError):
        p.advance(WdtPage(page_no=2, page_size=1, stockouts=[{"stockout_id": "c"}]))


def test_paginator_is_loop_safe_by_construction():
    p = WdtPaginator(10)
    p.advance(WdtPage(page_no=0, page_size=10, total_count=1000, stockouts=[{}] * 10))
    seen = [0]
    while not p.finished:
        seen.append(p.next_page_no)
        p.advance(WdtPage(page_no=p.next_page_no, page_size=10, stockouts=[{}] * 10))
    assert len(seen) == 101 and seen[1] == 99 and seen[-1] == 0
    assert p.pages_read <= p.page_limit


def test_find_by_no_asks_the_number_alone_where_the_gateway_allows_it():
    fake = FakeWdt(5)
    client, stub = client_with(fake)
    found = client.find_by_no("SO3")
    assert found.record == {"stockout_id": "3", "order_no": "SO3"} and found.calls == 1
    assert "start_time" not in stub.calls[0] and found.line() == "found by number alone (1 call)"
    missing = client.find_by_no("SO99")
    assert missing.record is None and missing.calls == 1, "the number alone answered: of any age, no window needed"
    assert missing.line() == "not found: WDT asked by number alone (1 call)"


def windowed_only(records, code="11000000", sub_code="isv.invalid-parameter",
                  sub_message="start_time和end_time不能为空"):
    """A gateway that wants the times with a number too, and answers by modified time."""
    def handler(form, req):
        if "start_time" not in form:
            return fail(code, "参数错误", sub_code, sub_message)
        start, end = (datetime.strptime(form[k], "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
                      for k in ("start_time", "end_time"))
        assert end - start <= timedelta(days=30), "every window WDT accepts"
        hits = [r for r in records if r["order_no"] == form["stockout_no"]
                and start <= datetime.strptime(r["modified"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING) <= end]
        return ok(hits, total=len(hits))
    return handler


@pytest.mark.parametrize(("code", "sub_code", "sub_message"), [
    ("11000000", "isv.invalid-parameter", "start_time和end_time不能为空"),
    ("40", "isv.missing-parameter:start_time", "缺少参数start_time"),
])
def test_find_by_no_steps_back_through_windows_when_the_gateway_wants_one(code, sub_code, sub_message):
    now = datetime(2026, 12, 4, 12, 0, 0, tzinfo=BEIJING)
    old = {"stockout_id": "7", "order_no": "OLD", "modified": "2026-05-18 09:00:00"}  # 200 days back
    client, stub = client_with(windowed_only([old], code, sub_code, sub_message))
    found = client.find_by_no("OLD", now=now)
    assert found.record == old and found.window_required
    # the number alone once, then one call per 30-day window back from now: 200 days is the 7th
    assert found.calls == 8 and "start_time" not in stub.calls[0]
    assert stub.calls[1]["end_time"] == "2026-12-04 12:00:00" and stub.calls[1]["start_time"] == "2026-11-04 12:00:00"
    assert stub.calls[2]["end_time"] == "2026-11-04 11:59:59"
    assert found.line().startswith("found by number in 2026-") and "(8 calls)" in found.line()

    # the same client knows now: no second question without a window; a known time is asked first
    again = client.find_by_no("OLD", now=now, near=[datetime(2026, 5, 18, 9, 0, tzinfo=BEIJING)])
    assert again.record == old and again.calls == 1
    assert stub.calls[-1]["start_time"] == "2026-05-18 08:50:00"
    missing = client.find_by_no("NOPE", now=now)
    assert all("start_time" in call for call in stub.calls[-missing.calls:]) and missing.window_required


def test_find_by_no_stops_at_the_horizon_and_says_how_far_it_looked():
    now = datetime(2026, 12, 4, 12, 0, 0, tzinfo=BEIJING)
    client, _ = client_with(windowed_only([]), wdt_lookup_horizon_days=90)
    found = client.find_by_no("NOPE", now=now)
    assert found.record is None and found.calls == 1 + 3 and found.error is None
    assert found.line() == ("not found: WDT asked in 4 calls, windows back to 2026-09-05 12:00:00 "
                            "(WDT_LOOKUP_HORIZON_DAYS=90); WDT wants a window with a number")


def test_find_by_no_ends_on_any_other_error_and_keeps_it():
    client, _ = client_with(lambda form, req: fail("25", "Invalid signature", "isv.invalid-signature"))
    found = client.find_by_no("X")
    assert found.record is None and found.calls == 1 and found.error is not None and found.error.code == "25"
    assert found.line().startswith("asking failed after 1 call: ")


# ---- slicing -----------------------------------------------------------------------------------


def test_slice_range_contiguous_and_legal():
    start = datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=BEIJING)
    end = datetime(2024, 3, 15, 12, 0, 0, tzinfo=BEIJING)
    windows = slice_range(start, end, timedelta(days=45))
    assert windows[0][0] == start.replace(microsecond=0) and windows[-1][1] == end
    for (_, b), (c, _) in itertools.pairwise(windows):
        assert c == b + timedelta(seconds=1)
    for a, b in windows:
        assert a <= b and b - a <= timedelta(days=30)
    assert len(windows) == 3
    one_day = slice_range(start, end, timedelta(days=1))
    assert all(b - a <= timedelta(days=1) for a, b in one_day)
    assert len(one_day) == 75
    assert slice_range(end, start, 3600) == []
    assert slice_range(start, start, 60) == [(start.replace(microsecond=0), start.replace(microsecond=0))]
    assert WdtClient.slice_range(start, end, 86400 * 10)[0][1] == start.replace(microsecond=0) + timedelta(days=10)


def test_slice_range_naive_times_are_beijing():
    windows = slice_range(datetime(2024, 1, 1), datetime(2024, 1, 1, 2), timedelta(hours=1))
    assert [(w[0].hour, w[1].hour) for w in windows] == [(0, 1), (1, 2)] and windows[0][0].tzinfo is not None
    assert windows[1][0].second == 1


# ---- the shared limiter ------------------------------------------------------------------------


def test_from_settings_builds_the_shared_limiter(redis_client):
    s = make_settings(wdt_rate_per_minute=120, redis_prefix="tw")
    client = WdtClient.from_settings(s, redis_client)
    assert client.limiter.key == "tw:rl:wdt" and client.limiter.rate_per_s == 2.0
    assert WdtClient.from_settings(s).limiter is None
    assert SECRET not in repr(client)


def test_session_pools_without_automatic_retries():
    s = make_settings()
    session = make_session(s)
    adapter = session.get_adapter("https://wdt.test/")
    assert adapter.max_retries.total == 0 and adapter._pool_maxsize == 32
    assert session.timeout == (s.http_connect_timeout_s, s.http_read_timeout_s)


def test_a_refused_connection_is_retryable_and_names_no_query():
    from shared.core.http import request_json

    session = make_session(make_settings(http_connect_timeout_s=0.5))
    with pytest.raises(APIConnectionError) as info:
        request_json(session, "GET", "http://127.0.0.1:1/path?access_token=SECRET-TOKEN", api="bip")
    assert "SECRET-TOKEN" not in str(info.value) and "http://127.0.0.1:1/path" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
