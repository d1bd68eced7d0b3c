"""Both signatures against their published vectors, and how the clients put them on the wire."""
from __future__ import annotations

import time
import types
from datetime import datetime, timedelta
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests

from shared.bip import token as token_mod
from shared.bip.sign import self_app_signature
from shared.bip.token import TokenProvider
from shared.core.settings import Settings
from shared.core.timeutil import BEIJING
from shared.wdt.client import WdtClient
from shared.wdt.sign import top_md5_sign
from tests.unit.fake_http import FakeAdapter


class Capture(FakeAdapter):
    def __init__(self, body: dict) -> None:
        super().__init__()
        self.body = body
        self.sent: list[requests.PreparedRequest] = []

    def answer(self, request, **kwargs):
        self.sent.append(request)
        return 200, self.body


def settings(**overrides) -> Settings:
    base = {
        "_env_file": None,
        "wdt_qimen_url": "http://wdt.test/router/qm",
        "wdt_app_key": "k",
        "wdt_app_secret": "wdt-secret",
        "wdt_sid": "sid",
        "bip_app_key": "41832a3d2df94989b500da6a22268747",
        "bip_app_secret": "secret",
        "bip_gateway_url": "http://bip.test",
        "bip_token_url": "http://bip.test",
    }
    base.update(overrides)
    return Settings(**base)


def test_top_md5_official_vector():
    params = {
        "app_key": "12345678",
        "fields": "num_iid,title,nick,price,num",
        "format": "json",
        "method": "taobao.item.seller.get",
        "num_iid": "11223344",
        "session": "test",
        "sign_method": "md5",
        "timestamp": "2016-01-01 12:00:00",
        "v": "2.0",
    }
    assert top_md5_sign(params, "helloworld") == "66987CB115214E59E6EC978214934FB8"


def test_bip_self_app_vector():
    assert (
        self_app_signature("41832a3d2df94989b500da6a22268747", "1568098531823", "secret")
        == "H8cSr2Q0WF/TYdKqbd85nYzjFWiK5a2PHUyIK1tbRfc="
    )


def test_wdt_signed_params_carry_every_system_param_and_verify():
    client = WdtClient(settings())
    params = client.signed_params(
        {"start_time": datetime(2024, 1, 1, tzinfo=BEIJING), "page_no": 0, "status": ["95", "110"], "empty": ""}
    )
    for name, value in {
        "method": "wdt.stockout.order.query",
        "app_key": "k",
        "target_app_key": "21363512",
        "sid": "sid",
        "format": "json",
        "v": "2.0",
        "sign_method": "md5",
        "start_time": "2024-01-01 00:00:00",
        "page_no": "0",
        "status": "95,110",
    }.items():
        assert params[name] == value
    assert "empty" not in params  # dropped from the form, as from the signature
    assert params["sign"] == top_md5_sign({k: v for k, v in params.items() if k != "sign"}, "wdt-secret")


@pytest.mark.invariant(5)
def test_wdt_timestamp_is_beijing_whatever_the_host_zone(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert time.strftime("%Z") in ("EST", "EDT")
        params = WdtClient(settings()).signed_params({})
        sent = datetime.strptime(params["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
        assert abs(sent - datetime.now(BEIJING)) < timedelta(seconds=5)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_wdt_window_times_are_sent_in_beijing_time(monkeypatch):
    from zoneinfo import ZoneInfo

    client = WdtClient(settings())
    utc = datetime(2024, 3, 1, 16, 30, 5, tzinfo=ZoneInfo("UTC"))
    assert client.signed_params({"start_time": utc})["start_time"] == "2024-03-02 00:30:05"


def _timestamp_with_plus() -> str:
    for ms in range(1_700_000_000_000, 1_700_000_010_000):
        if "+" in self_app_signature("41832a3d2df94989b500da6a22268747", str(ms), "secret"):
            return str(ms)
    raise AssertionError("no signature with '+' found")


def test_token_request_signature_is_url_encoded_exactly_once(monkeypatch, fake_redis):
    stamp = _timestamp_with_plus()
    raw = self_app_signature("41832a3d2df94989b500da6a22268747", stamp, "secret")
    fake_time = types.SimpleNamespace(time=lambda: int(stamp) / 1000, monotonic=time.monotonic, sleep=time.sleep)
    monkeypatch.setattr(token_mod, "time", fake_time)

    session = requests.Session()
    adapter = Capture({"code": "00000", "data": {"access_token": "tok+/=", "expire": 7200}})
    session.mount("http://", adapter)
    provider = TokenProvider(settings(), fake_redis, session)
    assert provider.fetch() == ("tok+/=", 7200.0)

    url = adapter.sent[0].url
    assert url.startswith("http://bip.test/open-auth/selfAppAuth/base/v1/getAccessToken?")
    assert "%2B" in url and "%252B" not in url and "+" not in urlsplit(url).query
    query = parse_qs(urlsplit(url).query)
    assert query["signature"] == [raw]  # one decoding gives back the raw Base64
    assert query["appKey"] == ["41832a3d2df94989b500da6a22268747"]
    assert query["timestamp"] == [stamp]
    assert unquote(urlsplit(url).query).count(raw) == 1
    assert "secret" not in url
