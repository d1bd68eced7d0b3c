"""Both clients against the sandbox over real HTTP, with a real Redis: paging, token sharing,
faults, replays, rate limits and wrong credentials."""
from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from shared.bip.client import BipClient
from shared.bip.lookup import ForeignRecordError
from shared.bip.models import OthOutRecord
from shared.core.errors import APIConnectionError, AuthenticationError, InvalidRequestError, RateLimitError
from shared.core.http import TimeoutSession, make_session
from shared.core.settings import Settings
from shared.core.timeutil import now_beijing
from shared.wdt.client import WdtClient

pytestmark = pytest.mark.integration

FETCHED = ("95", "110")


@pytest.fixture
def make_sandbox():
    from sandbox import Sandbox, SandboxConfig

    started = []

    def start(**config):
        sb = Sandbox(SandboxConfig(**config)).start()
        started.append(sb)
        return sb

    yield start
    for sb in started:
        sb.stop()


@pytest.fixture
def sb(make_sandbox):
    return make_sandbox()


# a prefix of this run's own: another test run sharing the Redis database must not lend us its token
PREFIX = f"ti{uuid.uuid4().hex[:8]}"


def settings_for(sb, redis_url: str, **overrides) -> Settings:
    cfg = sb.config
    base = {
        "_env_file": None,
        "wdt_qimen_url": sb.wdt_url,
        "wdt_app_key": cfg.wdt_app_key,
        "wdt_app_secret": cfg.wdt_app_secret,
        "wdt_sid": cfg.wdt_sid,
        "wdt_target_app_key": cfg.wdt_target_app_key,
        "wdt_page_size": 40,
        "wdt_rate_per_minute": 60000,
        "bip_tenant_id": cfg.bip_tenant_id,
        "bip_app_key": cfg.bip_app_key,
        "bip_app_secret": cfg.bip_app_secret,
        "bip_discovery_url": sb.bip_discovery_url,
        "bip_gateway_url": "",
        "bip_token_url": "",
        "bip_rate_per_second": 1000,
        "redis_url": redis_url,
        "redis_prefix": PREFIX,
        "http_connect_timeout_s": 2,
        "http_read_timeout_s": 5,
    }
    base.update(overrides)
    return Settings(**base)


def window():
    now = now_beijing().replace(microsecond=0)
    return now - timedelta(hours=25), now - timedelta(minutes=5)


def expected_ids(stockouts) -> set[str]:
    return {s["stockout_id"] for s in stockouts if s["status"] in FETCHED}


def record(key: str, **overrides) -> OthOutRecord:
    data = {
        "resubmitCheckKey": key,
        "org": "ORG-EAST",
        "accountOrg": "ORG-EAST",
        "vouchdate": now_beijing().strftime("%Y-%m-%d"),
        "bustype": "A10001",
        "warehouse": "SH01",
        "define1": key,
        "othOutRecords": [{"product": "SKU-0001", "qty": Decimal("1.5"), "unit": "PCS"}],
    }
    data.update(overrides)
    return OthOutRecord(**data)


class HookedSession(TimeoutSession):
    """Runs `before(n)` ahead of the n-th WDT call (1-based): a place to edit stockouts mid-paging."""

    def __init__(self, timeout, before) -> None:
        super().__init__(timeout)
        self.before = before
        self.page_nos: list[int] = []

    def request(self, method, url, **kwargs):
        if url.endswith("/router/qm"):
            self.page_nos.append(int(kwargs["data"]["page_no"]))
            self.before(len(self.page_nos))
        return super().request(method, url, **kwargs)


def hooked_client(s: Settings, before=lambda n: None) -> tuple[WdtClient, HookedSession]:
    session = HookedSession((s.http_connect_timeout_s, s.http_read_timeout_s), before)
    return WdtClient(s, session=session), session


# ---- WDT ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("every_page", [False, True])
def test_pages_read_every_stockout_once(make_sandbox, redis_url, every_page):
    sb = make_sandbox(wdt_total_count_every_page=every_page)
    wanted = expected_ids(sb.generate(230))
    client, session = hooked_client(settings_for(sb, redis_url))
    start, end = window()
    pages = list(client.iter_pages(start, end))
    got = [r["stockout_id"] for p in pages for r in p.stockouts]
    assert len(got) == len(set(got)) and set(got) == wanted
    last = -(-len(wanted) // 40) - 1
    assert session.page_nos == [0, *range(last, 0, -1), 0]
    assert pages[0].total_count == len(wanted)


@pytest.mark.parametrize("edit_before_call", [2, 3, 5])
@pytest.mark.parametrize("victim_index", [0, 39, 40, 100])
def test_a_stockout_modified_while_paging_hides_no_other(sb, redis_url, edit_before_call, victim_index):
    stockouts = sorted(
        (s for s in sb.generate(200) if s["status"] in FETCHED), key=lambda s: (s["modified"], int(s["stockout_id"]))
    )
    victim = stockouts[victim_index]["stockout_id"]

    def before(n):
        if n == edit_before_call:
            sb.modify(victim)  # its modified time is now "now": it leaves the window, others shift

    client, _session = hooked_client(settings_for(sb, redis_url), before)
    start, end = window()
    got = {r["stockout_id"] for p in client.iter_pages(start, end) for r in p.stockouts}
    assert {s["stockout_id"] for s in stockouts} - {victim} <= got
    # and the victim is in the next window, where the producer will find it
    later = {
        r["stockout_id"] for p in client.iter_pages(end + timedelta(seconds=1), now_beijing()) for r in p.stockouts
    }
    assert victim in later


def test_small_and_empty_windows(sb, redis_url):
    client, session = hooked_client(settings_for(sb, redis_url))
    start, end = window()
    assert [p.stockouts for p in client.iter_pages(start, end)] == [[]]
    wanted = expected_ids(sb.generate(10))
    assert {r["stockout_id"] for p in client.iter_pages(start, end) for r in p.stockouts} == wanted
    assert session.page_nos == [0, 0]


def test_find_by_no_and_filters(sb, redis_url):
    stockouts = [s for s in sb.generate(30) if s["status"] in FETCHED]
    client = WdtClient(settings_for(sb, redis_url))
    target = stockouts[3]
    assert client.find_by_no(target["order_no"]).record["stockout_id"] == target["stockout_id"]
    assert client.find_by_no("NO-SUCH-ORDER").record is None
    start, end = window()
    warehouse = target["warehouse_no"]
    got = [r for p in client.iter_pages(start, end, warehouse_no=warehouse) for r in p.stockouts]
    assert got and all(r["warehouse_no"] == warehouse for r in got)
    assert len(client.query_page(start, end, 0, 5).stockouts) == 5


def test_wdt_timestamp_is_accepted_from_a_host_in_another_zone(sb, redis_url, monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        start, end = window()
        WdtClient(settings_for(sb, redis_url)).query_page(start, end, 0)  # the sandbox checks the skew
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize(
    "overrides, code",
    [
        ({"wdt_app_secret": "wrong-secret"}, "25"),
        ({"wdt_app_key": "wrong-key"}, "29"),
        ({"wdt_target_app_key": "1"}, "29"),
        ({"wdt_sid": "other-sid"}, "41"),
    ],
)
def test_wdt_wrong_credentials(sb, redis_url, overrides, code):
    client = WdtClient(settings_for(sb, redis_url, **overrides))
    start, end = window()
    with pytest.raises(AuthenticationError) as info:
        client.query_page(start, end, 0)
    assert info.value.code == code and "wrong-secret" not in str(info.value)


@pytest.mark.parametrize(
    "fault, error, code",
    [
        ("http_500", APIConnectionError, ""),
        ("malformed_json", APIConnectionError, ""),
        ("rate_limit", RateLimitError, "1012"),
        ("slow", APIConnectionError, ""),
    ],
)
def test_wdt_faults(sb, redis_url, fault, error, code):
    sb.generate(5)
    sb.set_faults(wdt={fault: 1.0, "slow_s": 3})
    client = WdtClient(settings_for(sb, redis_url, http_read_timeout_s=1))
    start, end = window()
    with pytest.raises(error) as info:
        client.query_page(start, end, 0)
    assert type(info.value) is error and info.value.code == code and info.value.should_retry
    sb.set_faults()
    client.query_page(start, end, 0)  # and the next call works


def test_wdt_server_rate_limit_and_the_shared_limiter(sb, redis_url, redis_client):
    sb.set_rate_limits(wdt_per_min=120)  # 2 a second, bursts of 120
    start, end = window()
    fast = WdtClient(settings_for(sb, redis_url))
    with pytest.raises(RateLimitError) as info:
        for _ in range(200):
            fast.query_page(start, end, 0)
    assert info.value.code == "1012" and info.value.retry_after >= 1
    sb.set_rate_limits(wdt_per_min=None)
    limited = WdtClient.from_settings(settings_for(sb, redis_url, wdt_rate_per_minute=60 * 20), redis_client)
    t0 = time.monotonic()
    for _ in range(10):
        limited.query_page(start, end, 0)
    assert time.monotonic() - t0 >= 9 / 20 - 0.05  # the limiter paced the calls


# ---- BIP: tokens -------------------------------------------------------------------------------


def test_fifty_threads_finding_the_token_expired_cause_one_token_request(make_sandbox, redis_url, redis_client):
    sb = make_sandbox(token_lifetime_s=6)
    s = settings_for(sb, redis_url, bip_token_margin_s=3)  # cached for 3 s of the 6
    first = BipClient.from_settings(s, redis_client)
    first.save(record("warmup"))
    assert sb.counters()["bip_tokens_issued"] == 1
    time.sleep(3.2)  # expired in the cache, still valid at the gateway

    clients = [BipClient.from_settings(s, redis_client) for _ in range(50)]  # 50 "processes"
    barrier = threading.Barrier(len(clients))
    results, errors = [], []

    def run(i, client):
        barrier.wait()
        try:
            results.append(client.save(record(f"k{i}")))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 50
    counters = sb.counters()
    assert counters["bip_tokens_issued"] == 2 and counters["bip_token_rejections"] == 0
    assert counters["bip_saves"] == 51


def test_one_shared_client_across_threads_also_renews_once(make_sandbox, redis_url, redis_client):
    sb = make_sandbox(token_lifetime_s=4)
    client = BipClient.from_settings(settings_for(sb, redis_url, bip_token_margin_s=2), redis_client)
    client.find_by_code("none")
    time.sleep(2.2)
    threads = [threading.Thread(target=client.find_by_code, args=("none",)) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sb.counters()["bip_tokens_issued"] == 2


def test_revoked_token_is_renewed_once_and_the_call_succeeds(sb, redis_url, redis_client):
    client = BipClient.from_settings(settings_for(sb, redis_url), redis_client)
    other = BipClient.from_settings(settings_for(sb, redis_url), redis_client)
    client.save(record("a"))
    sb.revoke_tokens()
    assert client.save(record("b")).id
    assert other.save(record("c")).id  # picks the renewed token from Redis
    counters = sb.counters()
    assert counters["bip_tokens_issued"] == 2 and counters["bip_token_rejections"] == 1


def test_token_expiring_at_the_gateway_before_the_cache(make_sandbox, redis_url, redis_client):
    sb = make_sandbox(token_lifetime_s=1)
    client = BipClient.from_settings(settings_for(sb, redis_url, bip_token_margin_s=0), redis_client)
    client.save(record("a"))
    time.sleep(1.1)
    assert client.save(record("b")).id
    assert sb.counters()["bip_tokens_issued"] == 2


@pytest.mark.parametrize(
    "overrides, code",
    [
        ({"bip_app_secret": "wrong-secret"}, "310000"),
        ({"bip_app_key": "wrong-key"}, "10018"),
        ({"bip_tenant_id": "wrong-tenant"}, "999"),
    ],
)
def test_bip_wrong_credentials(sb, redis_url, redis_client, overrides, code):
    client = BipClient.from_settings(settings_for(sb, redis_url, **overrides), redis_client)
    with pytest.raises(AuthenticationError) as info:
        client.save(record("a"))
    assert info.value.code == code and "wrong-secret" not in str(info.value)
    assert sb.counters()["bip_save_calls"] == 0


def test_discovered_gateway_is_cached_in_redis(sb, redis_url, redis_client):
    client = BipClient.from_settings(settings_for(sb, redis_url), redis_client)
    client.save(record("a"))
    assert redis_client.exists(f"{PREFIX}:bip:gateway") and redis_client.exists(f"{PREFIX}:bip:token")
    configured = BipClient.from_settings(
        settings_for(
            sb, redis_url, bip_discovery_url="http://127.0.0.1:1/nowhere", bip_gateway_url=sb.url, bip_token_url=sb.url
        ),
        redis_client,
    )
    assert configured.save(record("b")).id


# ---- BIP: saves ---------------------------------------------------------------------------------


def test_save_replay_returns_the_same_id(sb, redis_url, redis_client):
    client = BipClient.from_settings(settings_for(sb, redis_url), redis_client)
    first = client.save(record("same-key"))
    again = client.save(record("same-key"))
    assert first.id and len(first.id) == 19 and again.id == first.id and again.code == first.code
    assert len(sb.records()) == 1 and sb.counters()["bip_replays"] == 1


def test_duplicate_submission_after_the_replay_window_is_a_replay(make_sandbox, redis_url, redis_client):
    sb = make_sandbox(replay_window_s=0.3)
    client = BipClient.from_settings(settings_for(sb, redis_url), redis_client)
    first = client.save(record("k1"))
    coded = client.save(record("k2", code="SO-K2"))
    time.sleep(0.5)
    assert client.save(record("k1")).replayed is True
    again = client.save(record("k2", code="SO-K2"))
    assert again.replayed and again.id == coded.id and again.code == "SO-K2"  # id found by the code
    assert first.id and len(sb.records()) == 2 and sb.counters()["bip_duplicates_blocked"] == 2


def test_existing_document_code_is_found_not_saved_twice(make_sandbox, redis_url, redis_client):
    sb = make_sandbox(numbering="manual", bip_key_memory_s=0)
    client = BipClient.from_settings(settings_for(sb, redis_url), redis_client)
    first = client.save(record("key-1", code="WDT-SO-1"))
    # the gateway forgot the key (after its hour): the code, held by this stockout's record, identifies it
    second = client.save(record("key-1", code="WDT-SO-1"))
    assert second.replayed and second.id == first.id and second.code == "WDT-SO-1"
    # another stockout's record, or ours under a key we do not know, is not ours
    with pytest.raises(ForeignRecordError, match=f"BIP record {first.id}"):
        client.save(record("key-2", code="WDT-SO-1"))
    assert client.save(record("key-2", code="WDT-SO-1", define1="key-1"), keys={"key-1"}).id == first.id
    assert len(sb.records()) == 1


def test_timeout_after_the_save_was_stored_then_retry_with_the_same_key(sb, redis_url, redis_client):
    client = BipClient.from_settings(settings_for(sb, redis_url, http_read_timeout_s=0.5), redis_client)
    client.find_by_code("warm")  # token fetched before the fault is on
    sb.set_faults(bip={"slow_stored": 1.0, "slow_s": 2})
    with pytest.raises(APIConnectionError) as info:
        client.save(record("slow-key"))
    assert info.value.should_retry
    sb.set_faults()
    result = client.save(record("slow-key"))
    assert result.id == sb.records()[0]["id"] and len(sb.records()) == 1


def test_business_validation_error_names_the_value(sb, redis_url, redis_client):
    client = BipClient.from_settings(settings_for(sb, redis_url), redis_client)
    bad = record("bad", othOutRecords=[{"product": "SKU-GHOST", "qty": Decimal("1"), "unit": "PCS"}])
    with pytest.raises(InvalidRequestError) as info:
        client.save(bad)
    assert info.value.code == "999" and "SKU-GHOST" in info.value.api_message and not info.value.should_retry
    batch = record("batch", othOutRecords=[{"product": "SKU-0041", "qty": Decimal("1"), "unit": "PCS"}])
    with pytest.raises(InvalidRequestError) as info:
        client.save(batch)
    assert "batchno" in info.value.api_message


@pytest.mark.parametrize(
    "fault, error, code",
    [
        ("http_502", APIConnectionError, ""),
        ("code_310504", APIConnectionError, "310504"),
        ("rate_limit", RateLimitError, "310046"),
    ],
)
def test_bip_faults(sb, redis_url, redis_client, fault, error, code):
    client = BipClient.from_settings(settings_for(sb, redis_url), redis_client)
    client.find_by_code("warm")
    sb.set_faults(bip={fault: 1.0})
    with pytest.raises(error) as info:
        client.save(record("f"))
    assert type(info.value) is error and info.value.code == code and info.value.should_retry
    assert info.value.api == "bip"
    sb.set_faults()
    assert client.save(record("f")).id


def test_bip_server_rate_limit_and_the_shared_limiter(sb, redis_url, redis_client):
    sb.set_rate_limits(bip_per_s=5)
    unlimited = BipClient(settings_for(sb, redis_url), redis_client)
    with pytest.raises(RateLimitError) as info:
        for i in range(30):
            unlimited.save(record(f"fast-{i}"))
    assert info.value.code == "310046" and info.value.retry_after == 1.0
    time.sleep(1.2)
    limited = BipClient.from_settings(settings_for(sb, redis_url, bip_rate_per_second=4), redis_client)
    for i in range(10):
        limited.save(record(f"paced-{i}"))  # never refused: the shared limiter keeps us under it


def test_find_pages_through_the_list(sb, redis_url, redis_client):
    client = BipClient.from_settings(settings_for(sb, redis_url), redis_client)
    saved = {client.save(record(f"list-{i}")).id for i in range(7)}
    today = now_beijing().strftime("%Y-%m-%d")
    found = list(client.find([{"field": "vouchdate", "op": "eq", "value1": today}], page_size=3))
    assert {r["id"] for r in found} == saved and len(found) == 7
    code = next(iter(r["code"] for r in found))
    assert [r["code"] for r in client.find_by_code(code)] == [code]
    assert client.find_by_code("NOPE") == []


def test_no_secret_or_token_in_errors(sb, redis_url, redis_client):
    s = settings_for(sb, redis_url, bip_gateway_url="http://127.0.0.1:1", bip_token_url=sb.url)
    client = BipClient(s, redis_client, session=make_session(s))
    with pytest.raises(APIConnectionError) as info:
        client.save(record("x"))
    token = client.tokens.get()
    text = str(info.value) + repr(info.value.to_dict())
    assert token not in text and "access_token" not in text and sb.config.bip_app_secret not in text
    assert "http://127.0.0.1:1/yonbip/scm/othoutrecord/single/save" in text
