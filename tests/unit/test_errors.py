"""The reply-code tables and the one decision (`resolve`) made from them."""
from __future__ import annotations

import pytest

from shared.bip import errors as bip
from shared.core.errors import (
    Action,
    APIConnectionError,
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    Kind,
    RateLimitError,
    RetryPolicy,
    TokenExpiredError,
    resolve,
)
from shared.wdt import errors as wdt


@pytest.mark.parametrize(("code", "kind"), [
    ("310032", Kind.RATE_LIMITED), ("310039", Kind.RATE_LIMITED), ("310042", Kind.RATE_LIMITED),
    ("310046", Kind.RATE_LIMITED), ("10015", Kind.CONFIG), ("10018", Kind.CONFIG), ("310037", Kind.CONFIG),
    ("310036", Kind.TOKEN_EXPIRED), ("310504", Kind.TRANSIENT), ("202", Kind.TRANSIENT),
    ("999", Kind.INVALID_DATA), ("1002", Kind.NOT_FOUND), ("100004", Kind.DUPLICATE), ("200", Kind.SUCCESS),
    ("424242", Kind.INVALID_DATA),
])
def test_bip_table(code, kind):
    assert bip.kind_of(code) is kind


def test_bip_token_refusals_are_configuration_unless_a_wait_or_the_clock():
    assert bip.token_kind("310000", "签名验证失败") is Kind.CONFIG
    assert bip.token_kind("10015", "") is Kind.CONFIG
    assert bip.token_kind("310046", "") is Kind.RATE_LIMITED
    assert bip.token_kind("310008", "timestamp[1]无效或已过期") is Kind.TRANSIENT
    assert bip.code_of({"code": 200}) == "200" and bip.code_of([]) == ""


@pytest.mark.parametrize(("code", "sub_code", "kind", "check"), [
    ("1012", "", Kind.RATE_LIMITED, None),
    ("7", "accesscontrol.limited", Kind.RATE_LIMITED, None),
    ("", "isv.sign-check-failure", Kind.CONFIG, "WDT_APP_SECRET"),
    ("25", "", Kind.CONFIG, "WDT_APP_SECRET"),
    ("29", "isv.appkey-not-exists", Kind.CONFIG, "WDT_APP_KEY"),
    ("29", "isv.target-appkey-invalid", Kind.CONFIG, "WDT_TARGET_APP_KEY"),
    ("41", "isv.invalid-parameter:sid", Kind.CONFIG, "WDT_SID"),
    ("31", "", Kind.TRANSIENT, None),
    ("15", "isp.remote-service-error", Kind.TRANSIENT, None),
    ("41", "isv.invalid-parameter:page_size", Kind.INVALID_DATA, None),
])
def test_wdt_table(code, sub_code, kind, check):
    assert wdt.kind_of(code, sub_code) is kind
    if check:
        assert wdt.check_what(code, sub_code) == check
        made = wdt.error(kind, "said", code=code, sub_code=sub_code)
        assert isinstance(made, AuthenticationError) and f"check {check}" in str(made)
        assert "WDT authentication" in str(made)


def test_wdt_code_of_a_whole_reply():
    assert wdt.code_of({"response": {"flag": "success", "errorcode": 0}}) == ""
    assert wdt.code_of({"response": {"flag": "failure", "code": "1012"}}) == "1012"
    assert wdt.code_of({"error_response": {"flag": "failure", "sub_code": "isv.sign-check-failure"}}) == \
        "isv.sign-check-failure"


def test_the_factories_give_each_kind_its_class():
    assert isinstance(bip.error(Kind.RATE_LIMITED, "x", code="310046"), RateLimitError)
    assert isinstance(bip.error(Kind.TRANSIENT, "x"), APIConnectionError)
    assert isinstance(bip.error(Kind.TOKEN_EXPIRED, "x"), TokenExpiredError)
    assert isinstance(bip.error(Kind.NOT_FOUND, "x", code="1002"), InvalidRequestError)
    config = bip.error(Kind.CONFIG, "bip token request: code=310000", code="310000")
    assert isinstance(config, AuthenticationError) and "BIP authentication" in str(config)
    assert config.api == "bip" and config.to_dict()["kind"] == "config"


POLICY = RetryPolicy(max_attempts=3, base_s=1.0, max_s=10.0)


def test_resolve_rate_limits_are_waits_that_never_run_out():
    error = RateLimitError("too frequent", api="bip", retry_after=2.0)
    for attempt in (1, 3, 50):  # far past max_attempts: still a wait
        decision = resolve(error, attempt, POLICY)
        assert decision.action is Action.WAIT_RATE_LIMITED and not decision.uses_attempt
        assert 2.0 <= decision.delay_s <= 2.25


def test_resolve_configuration_errors_pause():
    for error in (AuthenticationError("bad secret", api="bip"), ConfigurationError("mapping", api="mapping")):
        decision = resolve(error, 99, POLICY)
        assert decision.action is Action.PAUSE and not decision.uses_attempt


def test_resolve_transient_errors_retry_until_the_attempts_run_out():
    error = APIConnectionError("502", api="bip")
    delays = [resolve(error, n, POLICY) for n in (1, 2)]
    assert all(d.action is Action.RETRY and d.uses_attempt for d in delays)
    assert 0.5 <= delays[0].delay_s <= 1.0 and 1.0 <= delays[1].delay_s <= 2.0
    assert resolve(error, 3, POLICY).action is Action.FAIL


def test_resolve_refused_content_fails_at_once():
    assert resolve(InvalidRequestError("物料不存在", api="bip", code="999"), 1, POLICY).action is Action.FAIL
    assert resolve(ValueError("not ours"), 1, POLICY).action is Action.FAIL
