"""The sandbox over real HTTP, signed by hand with the shared signing functions: it must accept a
correct client and refuse every mistake the real APIs refuse."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from urllib.parse import quote

import pytest
import requests

from sandbox import Sandbox, SandboxConfig, SandboxControl
from sandbox.control import ROUTES, Controls
from sandbox.data import BAD_KINDS, BIP_WAREHOUSES, MATERIALS
from shared.bip.sign import self_app_signature
from shared.core.timeutil import BEIJING, format_wire, now_beijing
from shared.wdt.sign import top_md5_sign

pytestmark = pytest.mark.integration

SAVE = "/yonbip/scm/othoutrecord/single/save"
LIST = "/yonbip/scm/othoutrecord/list"
DETAIL = "/yonbip/scm/othoutrecord/detail"
TOKEN = "/open-auth/selfAppAuth/base/v1/getAccessToken"
OLD_TOKEN = "/open-auth/selfAppAuth/getAccessToken"


@pytest.fixture(scope="module")
def shared_sandbox():
    with Sandbox(SandboxConfig()) as sb:
        yield sb


@pytest.fixture
def sb(shared_sandbox):
    shared_sandbox.reset()
    yield shared_sandbox
    shared_sandbox.reset()


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


# ---- clients written against the protocol, by hand


def wdt_params(sb, *, timestamp=None, secret=None, **business):
    cfg = sb.config
    params = {
        "method": "wdt.stockout.order.query", "app_key": cfg.wdt_app_key,
        "target_app_key": cfg.wdt_target_app_key, "sid": cfg.wdt_sid,
        "timestamp": timestamp or format_wire(now_beijing()), "format": "json", "v": "2.0",
        "sign_method": "md5", **{k: str(v) for k, v in business.items()},
    }
    params["sign"] = top_md5_sign(params, secret or cfg.wdt_app_secret)
    return params


def wdt_window(days=2):
    end = now_beijing()
    return {"start_time": format_wire(end - timedelta(days=days)), "end_time": format_wire(end)}


def wdt(sb, http, **kwargs):
    response = http.post(sb.wdt_url, data=wdt_params(sb, **kwargs), timeout=5)
    assert response.status_code == 200
    return response.json()["response"]


def token_params(sb, *, timestamp=None, app_key=None):
    cfg = sb.config
    stamp = timestamp or str(int(time.time() * 1000))
    key = app_key or cfg.bip_app_key
    return {"appKey": key, "timestamp": stamp, "signature": self_app_signature(key, stamp, cfg.bip_app_secret)}


def get_token(sb, http):
    body = http.get(sb.url + TOKEN, params=token_params(sb), timeout=5).json()
    assert body["code"] == "00000", body
    return body["data"]["access_token"]


def record(**header):
    data = {
        "resubmitCheckKey": "so-1000001", "org": "ORG-EAST", "accountOrg": "ORG-EAST",
        "vouchdate": "2026-11-29", "bustype": "A10001", "warehouse": "SH01", "_status": "Insert",
        "defines!define1": "1000001",
        "othOutRecords": [{"product": "SKU-0001", "qty": "3.0000", "unit": "PCS", "_status": "Insert"}],
    }
    data.update(header)
    return data


def save(sb, http, token, data, **kwargs):
    response = http.post(sb.url + SAVE, params={"access_token": token}, json={"data": data}, timeout=5, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def bip_list(sb, http, token, **body):
    response = http.post(sb.url + LIST, params={"access_token": token}, json={"pageIndex": 1, "pageSize": 50, **body},
                         timeout=5)
    return response.json()


# ---- WDT


def test_wdt_pages_with_total_count_on_the_first_page_only(sb, http):
    sb.generate(57, bad=4)
    fetched = wdt(sb, http, page_no=0, page_size=100, **wdt_window())
    expected = int(fetched["total_count"])
    assert 0 < expected <= 57 and all(s["status"] in ("95", "110") for s in fetched["stockout_list"])

    seen, page = [], 0
    while True:
        response = wdt(sb, http, page_no=page, page_size=10, **wdt_window())
        assert response["flag"] == "success" and response["errorcode"] == 0
        assert ("total_count" in response) == (page == 0)
        seen += response["stockout_list"]
        if len(response["stockout_list"]) < 10:
            break
        page += 1
    assert [s["stockout_id"] for s in seen] == [s["stockout_id"] for s in fetched["stockout_list"]]
    assert len(seen) == expected
    keys = [(s["modified"], int(s["stockout_id"])) for s in seen]
    assert keys == sorted(keys)


def test_wdt_total_count_on_every_page_when_configured(http):
    with Sandbox(SandboxConfig(wdt_total_count_every_page=True)) as sb:
        sb.generate(30)
        assert "total_count" in wdt(sb, http, page_no=1, page_size=5, **wdt_window())


def test_wdt_get_works_and_filters_and_lookup_by_order_no(sb, http):
    stockouts = sb.generate(40)
    target = next(s for s in stockouts if s["status"] == "110")
    response = http.get(sb.wdt_url, params=wdt_params(sb, stockout_no=target["order_no"]), timeout=5).json()["response"]
    assert [s["stockout_id"] for s in response["stockout_list"]] == [target["stockout_id"]]

    cancelled = wdt(sb, http, status="5,55", page_size=100, **wdt_window())["stockout_list"]
    assert {s["stockout_id"] for s in cancelled} == {s["stockout_id"] for s in stockouts if s["status"] in ("5", "55")}
    in_sh = wdt(sb, http, warehouse_no="WH-SH01", page_size=100, **wdt_window())["stockout_list"]
    assert in_sh and all(s["warehouse_no"] == "WH-SH01" for s in in_sh)


@pytest.mark.parametrize("over_http", [False, True])
def test_the_edition_that_wants_a_window_with_a_number_too(sb, http, over_http):
    target = next(s for s in sb.generate(20) if s["status"] in ("95", "110"))
    controls = SandboxControl(sb.url) if over_http else sb
    assert controls.set_wdt_lookup(needs_window=True) == {"needs_window": True}
    refused = wdt(sb, http, stockout_no=target["order_no"])
    assert (refused["code"], refused["sub_code"], refused["sub_message"]) == (
        "11000000", "isv.invalid-parameter", "start_time和end_time不能为空")
    found = wdt(sb, http, stockout_no=target["order_no"], **wdt_window())["stockout_list"]
    assert [s["stockout_id"] for s in found] == [target["stockout_id"]]
    controls.set_wdt_lookup(needs_window=False)
    assert wdt(sb, http, stockout_no=target["order_no"])["stockout_list"][0]["stockout_id"] == target["stockout_id"]
    controls.set_wdt_lookup(needs_window=True)
    sb.reset()
    assert "stockout_list" in wdt(sb, http, stockout_no=target["order_no"]), "reset: back to the config's edition"
    with Sandbox(SandboxConfig(wdt_lookup_needs_window=True)) as strict:
        assert wdt(strict, http, stockout_no="X")["code"] == "11000000"


def test_the_state_saved_and_loaded_again(sb):
    sb.generate(10, bad=1)
    saved = sb.state()
    with Sandbox(SandboxConfig()) as again:
        assert again.load_state(**saved) == {"stockouts": 10, "records": 0}
        assert again.state()["stockouts"] == saved["stockouts"] and again.bad_reasons == sb.bad_reasons


def test_wdt_modified_stockout_moves_to_the_end(sb, http):
    stockouts = sb.generate(10, start=now_beijing() - timedelta(hours=5), end=now_beijing() - timedelta(hours=1))
    first = wdt(sb, http, page_size=100, **wdt_window())["stockout_list"][0]
    bumped = sb.modify(first["stockout_id"])
    assert bumped["modified"] > first["modified"]
    after = wdt(sb, http, page_size=100, **wdt_window())["stockout_list"]
    assert after[-1]["stockout_id"] == first["stockout_id"]
    assert len(stockouts) >= len(after)


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"secret": "wrong"}, "25", "签名"),
        ({"timestamp": format_wire(now_beijing() - timedelta(hours=1))}, "31", "timestamp"),
        ({"timestamp": "2026/11/29 10:00:00"}, "31", "timestamp"),
        ({"page_size": 101}, "41", "page_size"),
        ({"page_size": 0}, "41", "page_size"),
        ({"page_no": -1}, "41", "page_no"),
        ({"start_time": "2026-10-01 00:00:00", "end_time": "2026-11-01 00:00:01"}, "41", "30天"),
        ({"start_time": "2026-11-02 00:00:00", "end_time": "2026-11-01 00:00:00"}, "41", "start_time"),
        ({"start_time": "2026-11-01"}, "41", "start_time"),
        ({"start_time": None}, "40", "start_time"),
        ({"status": "95;110"}, "41", "status"),
    ],
)
def test_wdt_refusals(sb, http, change, code, words):
    business = {"page_size": 40, **wdt_window(), **change}
    business = {k: v for k, v in business.items() if v is not None}
    response = wdt(sb, http, **business)
    assert response["flag"] == "failure" and response["code"] == code
    assert words in response["sub_message"] + response["sub_code"]
    assert sb.counters()["wdt_errors"] == 1


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [("app_key", "someone-else", "29"), ("target_app_key", "1", "29"), ("method", "wdt.trade.query", "22"),
     ("sid", "other-sid", "41"), ("v", "1.0", "41")],
)
def test_wdt_system_parameters_must_match(sb, http, field, value, code):
    params = wdt_params(sb, **wdt_window())
    params[field] = value
    params["sign"] = top_md5_sign(params, sb.config.wdt_app_secret)
    assert http.post(sb.wdt_url, data=params, timeout=5).json()["response"]["code"] == code


def test_wdt_rate_limit_answers_1012(sb, http):
    sb.set_rate_limits(wdt_per_min=3)
    codes = [wdt(sb, http, **wdt_window()).get("code", "ok") for _ in range(5)]
    assert codes == ["ok", "ok", "ok", "1012", "1012"]
    assert sb.counters()["wdt_rate_limited"] == 2


def test_wdt_faults(sb, http):
    sb.generate(5)
    sb.set_faults(wdt={"http_500": 1})
    response = http.post(sb.wdt_url, data=wdt_params(sb, **wdt_window()), timeout=5)
    assert response.status_code == 500 and "<html>" in response.text

    sb.set_faults(wdt={"malformed_json": 1})
    response = http.post(sb.wdt_url, data=wdt_params(sb, **wdt_window()), timeout=5)
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)

    sb.set_faults(wdt={"rate_limit": 1})
    assert wdt(sb, http, **wdt_window())["code"] == "1012"

    sb.set_faults(wdt={"slow": 1, "slow_s": 0.3})
    started = time.monotonic()
    assert wdt(sb, http, **wdt_window())["flag"] == "success"
    assert time.monotonic() - started >= 0.3

    sb.set_faults(wdt={"latency_ms": 150})
    started = time.monotonic()
    wdt(sb, http, **wdt_window())
    assert time.monotonic() - started >= 0.15

    faults = sb.counters()["faults"]
    assert faults == {"wdt.http_500": 1, "wdt.malformed_json": 1, "wdt.rate_limit": 1, "wdt.slow": 1}


def test_faults_repeat_for_the_same_seed(sb, http):
    def pattern():
        sb.set_faults(wdt={"http_500": 0.5})
        return [http.post(sb.wdt_url, data=wdt_params(sb, **wdt_window()), timeout=5).status_code for _ in range(16)]

    first = pattern()
    assert set(first) == {200, 500}
    assert pattern() == first


# ---- BIP: discovery and token


def test_discovery(sb, http):
    body = http.get(sb.bip_discovery_url, params={"tenantId": sb.config.bip_tenant_id}, timeout=5).json()
    assert body == {"code": "00000", "message": "成功", "data": {"gatewayUrl": sb.url, "tokenUrl": sb.url}}
    assert http.get(sb.bip_discovery_url, params={"tenantId": "nobody"}, timeout=5).json()["code"] != "00000"


@pytest.mark.parametrize("path", [TOKEN, OLD_TOKEN])
def test_token_on_both_paths_needs_url_encoding(sb, http, path):
    body = http.get(sb.url + path, params=token_params(sb), timeout=5).json()
    assert body["code"] == "00000" and body["data"]["expire"] == 7200
    token = body["data"]["access_token"]
    assert {"+", "/", "="} & set(token)
    # pasted into the URL unencoded, '+' reads as a space: the token is then unknown
    raw = http.post(f"{sb.url}{SAVE}?access_token={token}", json={"data": record()}, timeout=5).json()
    assert raw["code"] == "310036"
    assert save(sb, http, token, record())["code"] == "200"


def test_token_refusals(sb, http):
    good = token_params(sb)
    double = {**good, "signature": quote(good["signature"], safe="")}  # requests encodes it a second time
    assert "%" in double["signature"]
    assert http.get(sb.url + TOKEN, params=double, timeout=5).json() == {"code": "310000", "message": "签名验证失败"}
    assert http.get(sb.url + TOKEN, params=token_params(sb, app_key="nobody"), timeout=5).json()["code"] == "10018"
    stale = token_params(sb, timestamp=str(int(time.time() * 1000) - 3_600_000))
    assert http.get(sb.url + TOKEN, params=stale, timeout=5).json()["code"] != "00000"
    counters = sb.counters()
    assert counters["bip_tokens_issued"] == 0 and counters["bip_token_request_errors"] == 3


def test_bearer_header_is_not_a_token(sb, http):
    token = get_token(sb, http)
    response = http.post(
        sb.url + SAVE, headers={"Authorization": f"Bearer {token}"}, json={"data": record()}, timeout=5
    )
    assert response.json()["code"] == "310001"
    assert save(sb, http, "not-a-token", record())["code"] == "310036"
    assert sb.counters()["bip_token_rejections"] == 2 and sb.records() == []


def test_revoked_token_is_refused(sb, http):
    token = get_token(sb, http)
    sb.revoke_tokens()
    assert save(sb, http, token, record())["code"] == "310036"
    assert save(sb, http, get_token(sb, http), record())["code"] == "200"


# ---- BIP: save


def test_save_stores_and_answers_a_19_digit_id(sb, http):
    body = save(sb, http, get_token(sb, http), record())
    assert body["code"] == "200" and body["message"] == "操作成功"
    data = body["data"]
    assert len(data["id"]) == 19 and data["id"].isdigit() and data["code"].startswith("QTCK20261129")
    [stored] = sb.records()
    assert stored["id"] == data["id"] and stored["code"] == data["code"]
    assert stored["resubmitCheckKey"] == "so-1000001" and stored["data"] == record()
    assert sb.counters()["bip_saves"] == 1


def test_save_accepts_ids_numbers_and_batches(sb, http):
    token = get_token(sb, http)
    lines = [
        {"product": MATERIALS["SKU-0002"].id, "qty": 2, "unit": "BOX", "_status": "Insert"},
        {"product": "SKU-0045", "qty": "1.5", "unit": "EA", "_status": "Insert", "batchno": "B2026",
         "source": "st_othoutrecord", "autoCalcCost": True},
    ]
    body = save(sb, http, token, record(warehouse=BIP_WAREHOUSES["BJ02"]["id"], othOutRecords=lines))
    assert body["code"] == "200", body


def test_replay_returns_the_same_result_and_stores_nothing(sb, http):
    token = get_token(sb, http)
    first = save(sb, http, token, record())
    again = save(sb, http, token, record(memo="changed, but the key is the same"))
    assert again == first
    assert len(sb.records()) == 1 and sb.counters()["bip_replays"] == 1


def test_failed_saves_are_not_remembered(sb, http):
    token = get_token(sb, http)
    assert save(sb, http, token, record(warehouse="XX"))["code"] == "999"
    assert save(sb, http, token, record())["code"] == "200"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {"othOutRecords": [{"product": "SKU-GHOST", "qty": "1", "unit": "PCS", "_status": "Insert"}]},
            "物料[SKU-GHOST]不存在",
        ),
        ({"warehouse": "XX"}, "仓库[XX]不存在"),
        ({"warehouse": "WH-SH01"}, "仓库[WH-SH01]不存在"),
        ({"org": "ORG-WEST"}, "库存组织[ORG-WEST]不存在"),
        ({"accountOrg": "X"}, "会计主体[X]不存在"),
        ({"bustype": "A99"}, "交易类型[A99]不存在"),
        ({"vouchdate": "2026/11/01"}, "vouchdate[2026/11/01]格式错误"),
        ({"vouchdate": "2026-02-30"}, "vouchdate[2026-02-30]"),
        ({"vouchdate": None}, "vouchdate不能为空"),
        ({"_status": "Update"}, "_status[Update]"),
        ({"othOutRecords": []}, "othOutRecords不能为空"),
        ({"othOutRecords": [{"product": "SKU-0001", "qty": "0", "unit": "PCS", "_status": "Insert"}]}, "qty[0]"),
        ({"othOutRecords": [{"product": "SKU-0001", "qty": "abc", "unit": "PCS", "_status": "Insert"}]}, "qty[abc]"),
        (
            {"othOutRecords": [{"product": "SKU-0001", "qty": "1", "unit": "KG", "_status": "Insert"}]},
            "计量单位[KG]不存在",
        ),
        ({"othOutRecords": [{"product": "SKU-0001", "qty": "1", "unit": "PCS"}]}, "_status不能为空"),
        ({"othOutRecords": [{"product": "SKU-0042", "qty": "1", "unit": "PCS", "_status": "Insert"}]}, "batchno"),
        (
            {"othOutRecords": [{"product": "SKU-0001", "qty": "1", "unit": "PCS", "_status": "Insert", "source": "x"}]},
            "autoCalcCost",
        ),
    ],
)
def test_save_validation_names_the_field_and_value(sb, http, change, words):
    data = record(**change)
    data = {k: v for k, v in data.items() if v is not None}
    body = save(sb, http, get_token(sb, http), data)
    assert body["code"] == "999" and words in body["message"], body
    assert sb.records() == [] and sb.counters()["bip_validation_errors"] == 1


def test_long_resubmit_key_is_a_parameter_error(sb, http):
    body = save(sb, http, get_token(sb, http), record(resubmitCheckKey="k" * 33))
    assert body["code"] == "310008" and sb.records() == []
    assert save(sb, http, get_token(sb, http), record(resubmitCheckKey="k" * 32))["code"] == "200"


def test_duplicate_code_is_refused(sb, http):
    token = get_token(sb, http)
    assert save(sb, http, token, record(code="QT-1"))["data"]["code"] == "QT-1"
    body = save(sb, http, token, record(code="QT-1", resubmitCheckKey="other"))
    assert body == {"code": "999", "message": "单据编号[QT-1]已存在"}
    assert sb.counters()["bip_duplicates_blocked"] == 1


def test_manual_numbering_needs_a_code(http):
    with Sandbox(SandboxConfig(numbering="manual")) as sb:
        token = get_token(sb, http)
        assert save(sb, http, token, record())["code"] == "999"
        assert save(sb, http, token, record(code="M-1"))["data"]["code"] == "M-1"


def test_replay_window_then_100004_and_token_expiry(http):
    with Sandbox(SandboxConfig(replay_window_s=1, token_lifetime_s=1)) as sb:
        token = get_token(sb, http)
        first = save(sb, http, token, record())
        assert save(sb, http, token, record()) == first
        time.sleep(1.2)
        assert save(sb, http, token, record())["code"] == "310036"
        token = get_token(sb, http)
        assert save(sb, http, token, record()) == {"code": "100004", "message": "重复提交"}
        counters = sb.counters()
        assert len(sb.records()) == 1 and counters["bip_replays"] == 1 and counters["bip_duplicates_blocked"] == 1


def test_a_forgetful_gateway_saves_a_key_again_after_its_memory(sb, http):
    token = get_token(sb, http)
    sb.set_key_memory(0.3)
    first = save(sb, http, token, record())
    assert save(sb, http, token, record()) == first  # still remembered: a replay
    time.sleep(0.4)  # the memory runs out (what is under test is the sandbox's clock)
    again = save(sb, http, token, record(vouchdate="2026-11-30"))
    assert again["code"] == "200" and again["data"]["id"] != first["data"]["id"]
    assert len(sb.records()) == 2 and sb.counters()["bip_keys_forgotten"] == 1
    with SandboxControl(sb.url) as control, pytest.raises(ValueError, match="seconds"):
        control.set_key_memory(-1)


def test_forget_keys_makes_bip_store_the_next_save_under_a_key_again(sb, http):
    token = get_token(sb, http)
    first = save(sb, http, token, record())
    assert save(sb, http, token, record()) == first
    assert sb.forget_keys() == 1 and sb.forget_keys() == 0
    again = save(sb, http, token, record())
    assert again["code"] == "200" and again["data"]["id"] != first["data"]["id"]
    assert save(sb, http, token, record()) == again, "the new save is remembered in its turn"
    assert len(sb.records()) == 2


def test_a_record_typed_in_by_hand_holds_its_code(http):
    with Sandbox(SandboxConfig(numbering="manual")) as sb:
        token = get_token(sb, http)
        typed = sb.add_record("M-1", define1="someone-else")
        refused = save(sb, http, token, record(code="M-1"))
        assert refused["code"] == "999" and "M-1" in refused["message"]
        detail = http.get(sb.url + "/yonbip/scm/othoutrecord/detail", params={"access_token": token, "id": typed["id"]},
                          timeout=5).json()["data"]
        assert detail["defines!define1"] == "someone-else" and not detail.get("resubmitCheckKey")
        with pytest.raises(ValueError, match="exists"):
            sb.add_record("M-1")


# ---- BIP: faults and limits


def test_bip_faults(sb, http):
    token = get_token(sb, http)
    sb.set_faults(bip={"http_502": 1})
    response = http.post(sb.url + SAVE, params={"access_token": token}, json={"data": record()}, timeout=5)
    assert response.status_code == 502 and "Bad Gateway" in response.text

    sb.set_faults(bip={"code_310504": 1})
    assert save(sb, http, token, record())["code"] == "310504"
    sb.set_faults(bip={"rate_limit": 1})
    assert save(sb, http, token, record())["code"] == "310046"
    assert sb.records() == []

    sb.set_faults(bip={"slow_stored": 1, "slow_s": 1.5})
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.post(sb.url + SAVE, params={"access_token": token}, json={"data": record()}, timeout=(2, 0.3))
    assert len(sb.records()) == 1  # stored although the client saw a timeout
    sb.set_faults()
    assert save(sb, http, token, record())["code"] == "200"  # the retry with the same key replays
    assert len(sb.records()) == 1

    sb.set_faults(bip={"latency_ms": 150})
    started = time.monotonic()
    save(sb, http, token, record())
    assert time.monotonic() - started >= 0.15
    counters = sb.counters()
    assert counters["faults"] == {"bip.http_502": 1, "bip.code_310504": 1, "bip.rate_limit": 1, "bip.slow_stored": 1}
    assert counters["bip_rate_limited"] == 1


def test_faults_leave_token_and_discovery_alone(sb, http):
    sb.set_faults(bip={"http_502": 1})
    assert get_token(sb, http)
    assert http.get(sb.bip_discovery_url, params={"tenantId": sb.config.bip_tenant_id}, timeout=5).status_code == 200


def test_bip_rate_limit_answers_310046(sb, http):
    token = get_token(sb, http)
    sb.set_rate_limits(bip_per_s=2)
    codes = [save(sb, http, token, record(resubmitCheckKey=f"k{i}"))["code"] for i in range(4)]
    assert codes == ["200", "200", "310046", "310046"]
    assert sb.counters()["bip_rate_limited"] == 2
    time.sleep(0.6)
    assert save(sb, http, token, record(resubmitCheckKey="later"))["code"] == "200"


def test_latency_is_served_in_parallel(http):
    with Sandbox(SandboxConfig(bip_latency_ms=200)) as sb:
        token = get_token(sb, http)

        def one(i):
            with requests.Session() as own:
                return save(sb, own, token, record(resubmitCheckKey=f"p{i}", **{"defines!define1": str(i)}))["code"]

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=25) as pool:
            codes = list(pool.map(one, range(25)))
        assert codes == ["200"] * 25
        assert time.monotonic() - started < 1.5


def test_latency_per_api_set_over_http_stays_through_reset_and_is_checked(http):
    with Sandbox(SandboxConfig()) as own, SandboxControl(own.url) as control:
        assert control.set_latency(wdt_ms=300, bip_ms=200) == {"wdt_ms": 300, "bip_ms": 200}
        control.set_faults()
        control.reset()
        assert (control.config().wdt_latency_ms, control.config().bip_latency_ms) == (300, 200)
        started = time.monotonic()
        wdt(own, http, **wdt_window())
        assert time.monotonic() - started >= 0.3  # a lower bound: the call waited its latency
        assert control.set_latency(bip_ms=0) == {"wdt_ms": 300, "bip_ms": 0}
        with pytest.raises(ValueError, match="wdt_ms"):
            control.set_latency(wdt_ms=-1)


def test_a_save_is_fast(sb, http):
    token = get_token(sb, http)
    save(sb, http, token, record(resubmitCheckKey="warm"))
    started = time.perf_counter()
    for i in range(50):
        save(sb, http, token, record(resubmitCheckKey=f"f{i}"))
    assert (time.perf_counter() - started) / 50 < 0.025


# ---- BIP: list, detail, reconcile helpers, counters


def test_list_by_code_define1_and_date_and_detail(sb, http):
    token = get_token(sb, http)
    saved = [save(sb, http, token, record(resubmitCheckKey=f"k{i}", vouchdate=f"2026-11-2{i}",
                                           **{"defines!define1": f"SO{i}"}))["data"] for i in range(5)]
    by_code = bip_list(sb, http, token, code=saved[2]["code"])
    assert by_code["code"] == "200" and [r["id"] for r in by_code["data"]["recordList"]] == [saved[2]["id"]]
    row = by_code["data"]["recordList"][0]
    assert row["defines!define1"] == "SO2" and row["vouchdate"] == "2026-11-22" and row["warehouse"] == "SH01"

    by_define = bip_list(sb, http, token, simpleVOs=[{"field": "defines!define1", "op": "eq", "value1": "SO4"}])
    assert [r["id"] for r in by_define["data"]["recordList"]] == [saved[4]["id"]]
    dated = bip_list(sb, http, token, pageSize=2, simpleVOs=[
        {"field": "vouchdate", "op": "between", "value1": "2026-11-21", "value2": "2026-11-23 23:59:59"}])
    assert dated["data"]["recordCount"] == 3 and len(dated["data"]["recordList"]) == 2
    assert bip_list(sb, http, token, simpleVOs=[{"field": "nope", "op": "eq", "value1": 1}])["code"] == "999"

    detail = http.get(sb.url + DETAIL, params={"access_token": token, "id": saved[1]["id"]}, timeout=5).json()
    assert detail["code"] == "200" and detail["data"]["othOutRecords"][0]["product"] == "SKU-0001"
    missing = http.get(sb.url + DETAIL, params={"access_token": token, "id": "1"}, timeout=5).json()
    assert missing["code"] == "1002"
    assert sb.counters()["bip_list_calls"] == 4


def test_delete_and_duplicate_records_and_counters(sb, http):
    token = get_token(sb, http)
    first = save(sb, http, token, record())["data"]
    second = save(sb, http, token, record(resubmitCheckKey="so-2", **{"defines!define1": "2"}))["data"]
    copy = sb.duplicate_record(first["id"])
    assert copy["id"] != first["id"] and copy["code"] != first["code"]
    assert sb.counters()["duplicate_stockouts"] == 1
    sb.delete_record(second["id"])
    assert {r["id"] for r in sb.records()} == {first["id"], copy["id"]}
    with pytest.raises(KeyError):
        sb.delete_record(second["id"])
    counters = sb.counters()
    assert counters["bip_saves"] == 2 and counters["bip_tokens_issued"] == 1


def test_unknown_paths_and_methods(sb, http):
    assert http.get(sb.url + "/nope", timeout=5).status_code == 404
    assert http.get(sb.url + SAVE, timeout=5).status_code == 405


# ---- control over HTTP and lifecycle


def test_control_over_http(sb, http):
    with SandboxControl(sb.url) as control:
        generated = control.generate(12, bad=3, seed=5)
        assert len(generated) == 12 and control.bad_ids == sb.bad_ids
        assert set(control.bad_reasons.values()) == set(BAD_KINDS)
        control.add_stockouts([{**generated[0], "remark": "edited"}])
        assert control.modify(generated[0]["stockout_id"])["remark"] == "edited"
        control.set_faults(bip={"http_502": 0.5}, wdt={"latency_ms": 5})
        assert sb.faults() == {"bip": {"http_502": 0.5}, "wdt": {"latency_ms": 5.0}}
        with pytest.raises(ValueError):
            control.set_faults(bip={"explode": 1})
        control.set_faults()
        control.set_rate_limits(bip_per_s=1)
        token = get_token(sb, http)
        assert save(sb, http, token, record())["code"] == "200"
        assert save(sb, http, token, record(resubmitCheckKey="x"))["code"] == "310046"
        [stored] = control.records()
        duplicate = control.duplicate_record(stored["id"])
        assert control.counters()["duplicate_stockouts"] == 1
        control.delete_record(duplicate["id"])
        with pytest.raises(KeyError):
            control.delete_record(duplicate["id"])
        control.revoke_tokens()
        assert save(sb, http, token, record())["code"] == "310036"
        assert control.env()["WDT_QIMEN_URL"] == sb.wdt_url
        assert control.config() == sb.config
        control.reset()
        assert control.records() == [] and control.bad_ids == set() and control.counters()["wdt_calls"] == 0


def test_every_control_is_routed_and_carried_out_the_same_both_ways(sb):
    carried_out = {name.removeprefix("_do_") for name in dir(Sandbox) if name.startswith("_do_")}
    assert carried_out == set(ROUTES)
    # SandboxControl adds no control of its own: every one is a Controls method, written once
    own = {n for n, v in vars(SandboxControl).items() if callable(v) and not n.startswith("_")}
    assert own <= {"config", "close"} and "generate" in vars(Controls)


@pytest.mark.parametrize(("path", "body", "error"), [
    ("generate", {"count": "many"}, "count: input should be a valid integer, got 'many'"),
    ("generate", {"count": 1, "colour": "red"}, "colour: unexpected keyword argument, got 'red'"),
    ("records/delete", {}, "record_id: missing required argument"),
    ("bip-list", {"omit_fields": "yes"}, "omit_fields: input should be a valid boolean, got 'yes'"),
    ("generate", {"count": 1, "start": "yesterday"}, "start must be 'yyyy-MM-dd HH:mm:ss' (Beijing), got 'yesterday'"),
])
def test_a_bad_control_argument_is_refused_by_name(sb, http, path, body, error):
    answer = http.post(f"{sb.url}/_sandbox/{path}", json=body, timeout=5)
    assert (answer.status_code, answer.json()) == (400, {"error": error})
    assert sb.records() == [] and sb.statuses() == {}


def test_generated_ids_keep_increasing(sb):
    first = sb.generate(3)
    sb.add_stockouts([{**first[0], "stockout_id": "9000000"}])
    later = sb.generate(2)
    assert int(later[0]["stockout_id"]) > 9000000


def test_stop_closes_the_port(http):
    sb = Sandbox().start()
    url = sb.url
    assert http.get(url + "/_sandbox/counters", timeout=5).status_code == 200
    sb.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        http.get(url + "/_sandbox/counters", timeout=2)


def test_generate_accepts_wire_times(sb):
    stockouts = sb.generate(5, start="2026-11-01 00:00:00", end="2026-11-01 01:00:00")
    for s in stockouts:
        at = datetime.strptime(s["modified"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
        assert datetime(2026, 11, 1, tzinfo=BEIJING) <= at <= datetime(2026, 11, 1, 1, tzinfo=BEIJING)


def test_save_needs_a_json_body(sb, http):
    token = get_token(sb, http)
    untyped = http.post(sb.url + SAVE, params={"access_token": token}, data=json.dumps({"data": record()}), timeout=5)
    assert untyped.json()["code"] == "310008"
    broken = http.post(sb.url + SAVE, params={"access_token": token}, data=b"{\"data\":",
                       headers={"Content-Type": "application/json"}, timeout=5)
    assert broken.json()["code"] == "310008"
    assert sb.records() == []


def test_list_modes_ignore_filters_and_omit_fields_and_a_detail_fault(sb, http):
    token = get_token(sb, http)
    saved = [save(sb, http, token, record(resubmitCheckKey=f"m{i}", **{"defines!define1": f"SO{i}"}))["data"]
             for i in range(3)]
    only = [{"field": "defines!define1", "op": "in", "value1": ["SO1"]}]
    with SandboxControl(sb.url) as control:
        assert control.set_bip_list(ignore_filters=True) == {"ignore_filters": True, "omit_fields": False}
        ignored = bip_list(sb, http, token, simpleVOs=only)["data"]["recordList"]
        assert [r["id"] for r in ignored] == [s["id"] for s in saved]  # the filter dropped, silently
        by_code = bip_list(sb, http, token, code=saved[2]["code"])["data"]["recordList"]
        assert [r["id"] for r in by_code] == [saved[2]["id"]]  # code is still honoured
        control.set_bip_list(ignore_filters=False, omit_fields=True)
        (row,) = bip_list(sb, http, token, simpleVOs=only)["data"]["recordList"]
        assert sorted(row) == ["code", "id", "status", "vouchdate", "warehouse"] and row["id"] == saved[1]["id"]
        with pytest.raises(ValueError, match="omit_fields"):
            control._control("set_bip_list", {"omit_fields": "yes"})
    sb.set_faults(bip={"detail_http_502": 1.0})
    failed = http.get(sb.url + DETAIL, params={"access_token": token, "id": saved[0]["id"]}, timeout=5)
    assert failed.status_code == 502
    assert bip_list(sb, http, token, simpleVOs=only)["code"] == "200"  # only the detail path fails
    sb.reset()
    assert sb.bip.list_ignores_filters is False and sb.bip.list_omits_fields is False
