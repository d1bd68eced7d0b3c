"""The BIP requestor's envelope and error mapping, discovery, and the shared token — replies come from
a requests adapter stub; the token cache uses a real Redis (its Lua scripts need one)."""
from __future__ import annotations

import json
import threading
import time
import uuid
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from shared.bip.client import BipClient
from shared.bip.lookup import ForeignRecordError
from shared.bip.models import OthOutRecord, SaveResult
from shared.bip.token import GatewayResolver, TokenProvider
from shared.core.errors import (
    Action,
    APIConnectionError,
    AuthenticationError,
    InvalidRequestError,
    RateLimitError,
    TokenExpiredError,
    resolve,
)
from shared.core.http import make_session
from shared.core.settings import Settings
from tests.unit.fake_http import FakeAdapter

SECRET = "bip-very-secret"
# this run's own keys: another test run may share the Redis database
P = f"tu{uuid.uuid4().hex[:8]}"
TOKEN_PATH = "/open-auth/selfAppAuth/base/v1/getAccessToken"
SAVE = "/yonbip/scm/othoutrecord/single/save"
LIST = "/yonbip/scm/othoutrecord/list"
DETAIL = "/yonbip/scm/othoutrecord/detail"


class FakeBip(FakeAdapter):
    """A programmable BIP: `replies[path]` is a list of (status, body) or exceptions, consumed in
    order (the last one repeats); the token endpoint issues tok-1, tok-2, …"""

    def __init__(self, *, expire: int = 7200) -> None:
        super().__init__()
        self.replies: dict[str, list] = {}
        self.sent: list[requests.PreparedRequest] = []
        self.tokens_issued = 0
        self.expire = expire
        self.token_reply = None
        self._lock = threading.Lock()

    def answer(self, request, **kwargs):
        with self._lock:
            self.sent.append(request)
            path = urlsplit(request.url).path
            if path == TOKEN_PATH and self.token_reply is None:
                self.tokens_issued += 1
                out = (
                    200,
                    {"code": "00000", "data": {"access_token": f"tok+{self.tokens_issued}/=", "expire": self.expire}},
                )
            elif path == TOKEN_PATH:
                out = self.token_reply
            elif path == "/discover":
                out = (200, {"code": "00000", "data": {"gatewayUrl": "https://gw.test/", "tokenUrl": "https://tok.test"}})
            else:
                queue = self.replies.get(path) or [(404, b"not found")]
                out = queue.pop(0) if len(queue) > 1 else queue[0]
        return out(request) if callable(out) else out

    def calls(self, path: str) -> list[requests.PreparedRequest]:
        return [r for r in self.sent if urlsplit(r.url).path == path]


def make_settings(**overrides) -> Settings:
    base = {
        "_env_file": None,
        "bip_tenant_id": "tenant",
        "bip_app_key": "app-key",
        "bip_app_secret": SECRET,
        "bip_gateway_url": "https://gw.test",
        "bip_token_url": "https://tok.test",
        "bip_token_margin_s": 300,
        "redis_prefix": P,
    }
    base.update(overrides)
    return Settings(**base)


def make_client(redis_client, fake: FakeBip | None = None, **overrides) -> tuple[BipClient, FakeBip]:
    fake = fake or FakeBip()
    s = make_settings(**overrides)
    session = make_session(s)
    session.mount("https://", fake)
    return BipClient(s, redis_client, session=session), fake


def record(**overrides) -> OthOutRecord:
    data = {
        "resubmitCheckKey": "wdt-so-1",
        "org": "ORG-EAST",
        "accountOrg": "ORG-EAST",
        "vouchdate": "2024-05-01",
        "bustype": "A10001",
        "warehouse": "SH01",
        "othOutRecords": [{"product": "SKU-0001", "qty": Decimal("2"), "unit": "PCS"}],
    }
    data.update(overrides)
    return OthOutRecord(**data)


def saved(id_=1234567890123456789, code="QTCK1", status_code="200"):
    return (200, {"code": status_code, "message": "操作成功", "data": {"id": id_, "code": code, "status": 0}})


def bip(code, message=""):
    return (200, {"code": code, "message": message})


# ---- save: success and replays ----------------------------------------------------------------


@pytest.mark.parametrize("status_code", ["200", 200])
def test_save_success(redis_client, status_code):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [saved(status_code=status_code)]
    result = client.save(record())
    assert result == SaveResult(id="1234567890123456789", code="QTCK1", replayed=False)
    request = fake.calls(SAVE)[0]
    assert json.loads(request.body)["data"]["resubmitCheckKey"] == "wdt-so-1"
    assert json.loads(request.body)["data"]["othOutRecords"][0]["qty"] == "2"
    query = parse_qs(urlsplit(request.url).query)
    assert query["access_token"] == ["tok+1/="]  # one decoding gives the token back
    assert "access_token" not in {k.lower() for k in request.headers} and "Authorization" not in request.headers
    assert request.url.startswith("https://gw.test/yonbip/scm/othoutrecord/single/save?")


@pytest.mark.parametrize("code", ["100004", "10004", 100004])
def test_duplicate_submission_is_a_replay(redis_client, code):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [bip(code, "重复提交")]
    assert client.save(record()) == SaveResult(replayed=True)
    assert not fake.calls(LIST)  # no code to look up


def test_duplicate_submission_fills_the_id_from_the_code(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [bip("100004", "重复提交")]
    fake.replies[LIST] = [
        (200, {"code": "200", "data": {"recordCount": 1, "recordList": [{"id": 77, "code": "SO-1"}]}})
    ]
    fake.replies[DETAIL] = [(200, {"code": "200", "data": {"id": "77", "code": "SO-1", "defines!define1": "1"}})]
    assert client.save(record(code="SO-1", define1="1")) == SaveResult(id="77", code="SO-1", replayed=True)


def test_duplicate_submission_never_takes_a_foreign_records_id(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [bip("100004", "重复提交")]
    fake.replies[LIST] = [
        (200, {"code": "200", "data": {"recordCount": 1, "recordList": [{"id": 77, "code": "SO-1"}]}})
    ]
    fake.replies[DETAIL] = [(200, {"code": "200", "data": {"id": "77", "code": "SO-1", "defines!define1": "9"}})]
    assert client.save(record(code="SO-1", define1="1")) == SaveResult(id="", code="SO-1", replayed=True)


def test_duplicate_document_code_is_the_third_dedup_layer(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [bip("999", "单据编号[SO-1]已存在")]
    fake.replies[LIST] = [
        (
            200,
            {
                "code": "200",
                "data": {"recordCount": 2, "recordList": [{"id": "5", "code": "SO-10"}, {"id": "9", "code": "SO-1"}]},
            },
        )
    ]
    fake.replies[DETAIL] = [(200, {"code": "200", "data": {"id": "9", "code": "SO-1", "defines!define1": "1"}})]
    assert client.save(record(code="SO-1", define1="1")) == SaveResult(id="9", code="SO-1", replayed=True)
    assert json.loads(fake.calls(LIST)[0].body)["code"] == "SO-1"


@pytest.mark.parametrize("held_by", [
    {"defines!define1": "777"},  # typed in by hand for another stockout
    {},  # typed in by hand, no define1 at all
    {"defines!define1": "1", "resubmitCheckKey": "another-shops-key"},  # another account's stockout 1
])
def test_a_code_held_by_a_foreign_record_is_a_dead_letter_naming_it(redis_client, held_by):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [bip("999", "单据编号[SO-1]已存在")]
    rows = [{"id": "9", "code": "SO-1"}]
    fake.replies[LIST] = [(200, {"code": "200", "data": {"recordCount": 1, "recordList": rows}})]
    fake.replies[DETAIL] = [(200, {"code": "200", "data": {"id": "9", "code": "SO-1", **held_by}})]
    with pytest.raises(ForeignRecordError) as info:
        client.save(record(code="SO-1", define1="1"))
    assert "BIP record 9" in info.value.message and "code SO-1" in info.value.message
    assert resolve(info.value, 1).action is Action.FAIL  # a dead letter at once, never a retry


def test_duplicate_code_without_a_record_stays_an_error(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [bip("999", "单据编号[SO-1]重复")]
    fake.replies[LIST] = [(200, {"code": "200", "data": {"recordCount": 0, "recordList": []}})]
    with pytest.raises(InvalidRequestError) as info:
        client.save(record(code="SO-1"))
    assert info.value.code == "999" and "SO-1" in info.value.api_message


# ---- save: errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, error, code, action",
    [
        (bip("202", "处理中"), APIConnectionError, "202", Action.RETRY),
        (bip("310504", "网关超时"), APIConnectionError, "310504", Action.RETRY),
        (bip("310043", "熔断"), APIConnectionError, "310043", Action.RETRY),
        (bip("310032", "访问频率超限"), RateLimitError, "310032", Action.WAIT_RATE_LIMITED),
        (bip("310039", "x"), RateLimitError, "310039", Action.WAIT_RATE_LIMITED),
        (bip("310042", "x"), RateLimitError, "310042", Action.WAIT_RATE_LIMITED),
        (bip("310046", "访问频率超限"), RateLimitError, "310046", Action.WAIT_RATE_LIMITED),
        (bip("310037", "API未授权"), AuthenticationError, "310037", Action.PAUSE),
        (bip("10018", "appKey不存在"), AuthenticationError, "10018", Action.PAUSE),
        (bip("310008", "参数错误"), InvalidRequestError, "310008", Action.FAIL),
        (bip("310015", "参数错误"), InvalidRequestError, "310015", Action.FAIL),
        (bip("310023", "参数错误"), InvalidRequestError, "310023", Action.FAIL),
        (bip("999", "物料[SKU-9999]不存在"), InvalidRequestError, "999", Action.FAIL),
        (bip("1002", "不存在"), InvalidRequestError, "1002", Action.FAIL),
        (bip("424242", "new"), InvalidRequestError, "424242", Action.FAIL),
        ((502, b"<html>Bad Gateway</html>"), APIConnectionError, "", Action.RETRY),
        ((200, b"{\"code\": \"2"), APIConnectionError, "", Action.RETRY),
        ((200, b"[]"), APIConnectionError, "", Action.RETRY),
        (requests.ReadTimeout("read timeout"), APIConnectionError, "", Action.RETRY),
        (
            requests.ConnectionError("Max retries exceeded with url: /yonbip/x?access_token=tok%2B1"),
            APIConnectionError,
            "",
            Action.RETRY,
        ),
    ],
)
def test_save_errors(redis_client, reply, error, code, action):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [reply]
    with pytest.raises(error) as info:
        client.save(record())
    err = info.value
    assert type(err) is error and err.api == "bip" and err.code == code
    assert resolve(err, 1).action is action
    text = str(err) + repr(err.to_dict())
    assert "tok+1" not in text and "tok%2B1" not in text and SECRET not in text and "access_token=" not in text


def test_business_error_keeps_bip_words(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [bip("999", "物料[SKU-9999]不存在")]
    with pytest.raises(InvalidRequestError) as info:
        client.save(record())
    assert info.value.api_message == "物料[SKU-9999]不存在" and "SKU-9999" in str(info.value)


def test_rate_limit_retry_after_from_message(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [bip("310046", "访问频率超限,请3秒后重试")]
    with pytest.raises(RateLimitError) as info:
        client.save(record())
    assert info.value.retry_after == 3.0
    fake.replies[SAVE] = [bip("310046", "访问频率超限")]
    with pytest.raises(RateLimitError) as info:
        client.save(record())
    assert info.value.retry_after == 1.0  # no hint and no shared limiter: a second


# ---- the token --------------------------------------------------------------------------------


def test_token_is_fetched_once_and_shared_through_redis(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [saved()]
    for _ in range(3):
        client.save(record())
    other, fake2 = make_client(redis_client)  # another process: same Redis, its own memory
    fake2.replies[SAVE] = [saved()]
    other.save(record())
    assert fake.tokens_issued == 1 and fake2.tokens_issued == 0
    cached = json.loads(redis_client.get(f"{P}:bip:token"))
    assert cached["token"] == "tok+1/=" and cached["expires_at"] > time.time() + 7000
    ttl = redis_client.pttl(f"{P}:bip:token") / 1000
    assert 7200 - 300 - 5 < ttl <= 7200 - 300


def test_token_in_memory_avoids_redis_reads(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [saved()]
    client.save(record())
    redis_client.delete(f"{P}:bip:token")  # gone from Redis, still valid in this process
    client.save(record())
    assert fake.tokens_issued == 1


def test_invalid_token_is_renewed_once_and_the_call_repeated(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [bip("310036", "非法token或token已过期"), saved()]
    assert client.save(record()).id == "1234567890123456789"
    saves = fake.calls(SAVE)
    assert [parse_qs(urlsplit(r.url).query)["access_token"][0] for r in saves] == ["tok+1/=", "tok+2/="]
    assert json.loads(redis_client.get(f"{P}:bip:token"))["token"] == "tok+2/="


def test_missing_token_code_also_renews(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [bip("310001", "缺少access_token参数"), saved()]
    assert client.save(record()).id
    assert fake.tokens_issued == 2


def test_token_refused_twice_raises_token_expired(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [bip("310036", "非法token")]
    with pytest.raises(TokenExpiredError) as info:
        client.save(record())
    assert info.value.code == "310036" and resolve(info.value, 1).action is Action.RETRY
    assert len(fake.calls(SAVE)) == 2 and fake.tokens_issued == 2
    assert "tok+" not in str(info.value)


def test_stale_invalidation_keeps_the_fresh_token(redis_client):
    s = make_settings()
    fake = FakeBip()
    session = make_session(s)
    session.mount("https://", fake)
    a = TokenProvider(s, redis_client, session)
    b = TokenProvider(s, redis_client, session)
    old = a.get()
    assert a.invalidate(old) is True
    fresh = a.get()
    assert fresh != old
    assert b.invalidate(old) is False  # b saw the old token fail after a already renewed
    assert b.get() == fresh and fake.tokens_issued == 2


def test_short_lifetime_keeps_half_of_it(redis_client):
    fake = FakeBip(expire=60)  # shorter than the 300 s margin
    client, fake = make_client(redis_client, fake)
    client.tokens.get()
    assert 25 < redis_client.pttl(f"{P}:bip:token") / 1000 <= 30


def test_concurrent_expiry_causes_one_token_request(redis_client):
    fake = FakeBip()
    s = make_settings()

    def provider():
        session = make_session(s)
        session.mount("https://", fake)
        return TokenProvider(s, redis_client, session)

    providers = [provider() for _ in range(30)]
    barrier = threading.Barrier(len(providers))
    got = []

    def run(p):
        barrier.wait()
        got.append(p.get())

    threads = [threading.Thread(target=run, args=(p,)) for p in providers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake.tokens_issued == 1 and set(got) == {"tok+1/="}
    assert not redis_client.exists(f"{P}:bip:token:lock")


@pytest.mark.parametrize(
    "reply, error",
    [
        (bip("310000", "签名验证失败"), AuthenticationError),
        (bip("10018", "appKey不存在"), AuthenticationError),
        (bip("310008", "timestamp[1]无效或已过期"), APIConnectionError),
        (bip("310046", "访问频率超限"), RateLimitError),
        ((200, {"code": "00000", "data": {}}), APIConnectionError),
        ((503, b"down"), APIConnectionError),
    ],
)
def test_token_request_errors(redis_client, reply, error):
    client, fake = make_client(redis_client)
    fake.token_reply = reply
    with pytest.raises(error) as info:
        client.save(record())
    assert SECRET not in str(info.value) and "signature=" not in str(info.value)
    if error is AuthenticationError:
        assert "BIP_APP_KEY / BIP_APP_SECRET" in str(info.value)
    assert not fake.calls(SAVE)


# ---- discovery ---------------------------------------------------------------------------------


def test_discovery_is_used_and_cached(redis_client):
    fake = FakeBip()
    client, fake = make_client(
        redis_client, fake, bip_gateway_url="", bip_token_url="", bip_discovery_url="https://disc.test/discover"
    )
    fake.replies[SAVE] = [saved()]
    client.save(record())
    assert parse_qs(urlsplit(fake.calls("/discover")[0].url).query) == {"tenantId": ["tenant"]}
    assert fake.calls(SAVE)[0].url.startswith("https://gw.test/yonbip/")
    assert fake.calls(TOKEN_PATH)[0].url.startswith("https://tok.test/open-auth/")
    assert json.loads(redis_client.get(f"{P}:bip:gateway"))["gateway_url"] == "https://gw.test"
    assert 86000 < redis_client.ttl(f"{P}:bip:gateway") <= 86400
    # another process reads the addresses from Redis instead of asking again
    other, fake2 = make_client(
        redis_client, FakeBip(), bip_gateway_url="", bip_token_url="", bip_discovery_url="https://disc.test/discover"
    )
    assert other.tokens.endpoints().gateway_url == "https://gw.test"
    assert not fake2.calls("/discover")


def test_discovery_failure_is_a_configuration_error(redis_client):
    s = make_settings(bip_gateway_url="", bip_token_url="", bip_discovery_url="https://disc.test/other")
    session = make_session(s)
    fake = FakeBip()
    fake.replies["/other"] = [bip("999", "租户[tenant]不存在")]
    session.mount("https://", fake)
    with pytest.raises(AuthenticationError) as info:
        GatewayResolver(s, redis_client, session).get()
    assert "BIP_TENANT_ID" in str(info.value) and info.value.code == "999"


def test_configured_addresses_skip_discovery(redis_client):
    client, fake = make_client(redis_client)
    assert client.tokens.endpoints().gateway_url == "https://gw.test"
    assert not fake.calls("/discover") and not redis_client.exists(f"{P}:bip:gateway")


# ---- list --------------------------------------------------------------------------------------


def test_find_pages_until_all_read(redis_client):
    client, fake = make_client(redis_client)
    rows = [{"id": str(i), "code": f"C{i}"} for i in range(5)]

    def page(request):
        body = json.loads(request.body)
        first = (body["pageIndex"] - 1) * body["pageSize"]
        return 200, {"code": "200", "data": {"recordCount": 5, "recordList": rows[first:first + body["pageSize"]]}}

    fake.replies[LIST] = [page]
    vos = [{"field": "vouchdate", "op": "between", "value1": "2024-05-01", "value2": "2024-05-02"}]
    assert list(client.find(vos, page_size=2)) == rows
    bodies = [json.loads(r.body) for r in fake.calls(LIST)]
    assert [b["pageIndex"] for b in bodies] == [1, 2, 3] and bodies[0]["simpleVOs"] == vos


def test_find_stops_on_a_server_that_ignores_page_index(redis_client):
    client, fake = make_client(redis_client)
    rows = [{"id": str(i)} for i in range(2)]
    fake.replies[LIST] = [(200, {"code": "200", "data": {"recordCount": 4, "recordList": rows}})]
    with pytest.raises(APIConnectionError):
        list(client.find([], page_size=2))


def test_find_by_code_matches_exactly(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[LIST] = [
        (
            200,
            {
                "code": "200",
                "data": {"recordCount": 2, "recordList": [{"id": "1", "code": "A1"}, {"id": "2", "code": "A"}]},
            },
        )
    ]
    assert client.find_by_code("A") == [{"id": "2", "code": "A"}]


def test_from_settings_builds_the_shared_limiter(redis_client):
    client = BipClient.from_settings(make_settings(bip_rate_per_second=7), redis_client)
    assert client.limiter.key == f"{P}:rl:bip" and client.limiter.rate_per_s == 7
    assert SECRET not in repr(client) and SECRET not in repr(client.tokens)


def test_a_token_cached_for_another_gateway_is_not_used(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[SAVE] = [saved()]
    client.save(record())
    other, fake2 = make_client(redis_client, bip_token_url="https://elsewhere.test")
    fake2.replies[SAVE] = [saved()]
    other.save(record())
    assert fake2.tokens_issued == 1  # its own token, not the one issued by tok.test


def test_detail_by_id_with_the_token_in_the_query(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[DETAIL] = [(200, {"code": "200", "data": {"id": "1234567890123456789", "code": "QTCK1",
                                                          "othOutRecords": [{"product": "SKU-0001"}]}})]
    assert client.detail("1234567890123456789")["othOutRecords"] == [{"product": "SKU-0001"}]
    query = parse_qs(urlsplit(fake.calls(DETAIL)[0].url).query)
    assert query["id"] == ["1234567890123456789"] and query["access_token"] == ["tok+1/="]
    assert fake.calls(DETAIL)[0].method == "GET"


def test_detail_of_a_missing_record_is_none_and_other_codes_are_typed_errors(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[DETAIL] = [bip("1002", "单据[9]不存在")]
    assert client.detail("9") is None
    fake.replies[DETAIL] = [bip("310008", "参数错误")]
    with pytest.raises(InvalidRequestError) as refused:
        client.detail("9")
    assert refused.value.code == "310008"
    fake.replies[DETAIL] = [bip("310504", "网关超时")]
    with pytest.raises(APIConnectionError):
        client.detail("9")
    fake.replies[DETAIL] = [(200, {"code": "200", "data": None})]
    with pytest.raises(APIConnectionError):
        client.detail("9")
# ---- detail: presence by id -------------------------------------------------------------------



def test_detail_returns_the_record_none_on_1002_and_raises_on_anything_else(redis_client):
    client, fake = make_client(redis_client)
    fake.replies[DETAIL] = [(200, {"code": "200", "data": {"id": "2000000000000000001", "code": "QTCK1"}})]
    assert client.detail("2000000000000000001") == {"id": "2000000000000000001", "code": "QTCK1"}
    sent = fake.calls(DETAIL)[0]
    assert sent.method == "GET" and parse_qs(urlsplit(sent.url).query)["id"] == ["2000000000000000001"]
    assert parse_qs(urlsplit(sent.url).query)["access_token"] == ["tok+1/="]
    fake.replies[DETAIL] = [bip("1002", "单据不存在")]
    assert client.detail("2000000000000000001") is None
    fake.replies[DETAIL] = [(502, b"<html>Bad Gateway</html>")]
    with pytest.raises(APIConnectionError):
        client.detail("2000000000000000001")
    fake.replies[DETAIL] = [bip("310504", "网关超时")]
    with pytest.raises(APIConnectionError):
        client.detail("2000000000000000001")
    fake.replies[DETAIL] = [bip("999", "系统异常")]
    with pytest.raises(InvalidRequestError):
        client.detail("2000000000000000001")
    fake.replies[DETAIL] = [(200, {"code": "200", "data": None})]
    with pytest.raises(APIConnectionError, match="no data"):
        client.detail("2000000000000000001")
    with pytest.raises(ValueError, match="record_id"):
        client.detail("")
