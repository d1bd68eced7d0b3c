"""The one retry loop (`shared.core.retry.call_with_retries`), the one table of foreign exceptions
(`shared.core.errors.foreign`) and retryability as a property of the error kind."""
from __future__ import annotations

import billiard.exceptions
import kombu.exceptions
import pytest
import redis
import requests

from shared.core import retry
from shared.core.errors import (
    RETRYABLE,
    APIConnectionError,
    AuthenticationError,
    InvalidRequestError,
    Kind,
    RateLimitError,
    RetryPolicy,
    StockoutSyncError,
    TokenExpiredError,
    foreign,
    make_error,
)

POLICY = RetryPolicy(max_attempts=3, base_s=1.0, max_s=8.0)


class Script:
    """A call that raises what it is given, one item per try, then returns "ok"; records the sleeps."""

    def __init__(self, *raises: BaseException) -> None:
        self.raises, self.tries, self.sleeps = list(raises), 0, []

    def __call__(self) -> str:
        self.tries += 1
        if self.raises:
            raise self.raises.pop(0)
        return "ok"

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def test_transient_failures_are_retried_with_growing_backoff_until_success():
    call = Script(APIConnectionError("502"), APIConnectionError("502"))
    assert retry.call_with_retries(call, POLICY, sleep=call.sleep) == "ok"
    assert call.tries == 3
    assert 0.5 <= call.sleeps[0] <= 1.0 and 1.0 <= call.sleeps[1] <= 2.0  # full jitter of 1 s, then 2 s


def test_attempts_run_out_and_the_original_error_is_raised():
    last = APIConnectionError("502 again")
    call = Script(APIConnectionError("502"), APIConnectionError("502"), last)
    with pytest.raises(APIConnectionError) as info:
        retry.call_with_retries(call, POLICY, sleep=call.sleep)
    assert info.value is last and call.tries == 3 and len(call.sleeps) == 2


def test_rate_limit_waits_use_no_attempt_and_honour_retry_after():
    call = Script(*[RateLimitError("too frequent", retry_after=0.5) for _ in range(5)], APIConnectionError("502"))
    assert retry.call_with_retries(call, POLICY, sleep=call.sleep) == "ok"
    assert call.tries == 7  # five waits, one failed attempt, then the success: attempts never ran out
    assert all(0.5 <= s <= 0.75 for s in call.sleeps[:5])


def test_a_server_that_refuses_for_ever_still_ends_the_loop(monkeypatch):
    monkeypatch.setattr(retry, "MAX_RATE_LIMIT_WAITS", 3)
    call = Script(*[RateLimitError("too frequent", retry_after=0.0) for _ in range(10)])
    with pytest.raises(RateLimitError):
        retry.call_with_retries(call, POLICY, sleep=call.sleep)
    assert call.tries == 4


def test_a_configuration_error_pauses_at_once_and_data_errors_are_not_retried():
    paused: list[StockoutSyncError] = []
    auth = AuthenticationError("bad secret", api="bip")
    with pytest.raises(AuthenticationError):
        retry.call_with_retries(Script(auth), POLICY, on_pause=paused.append, sleep=lambda s: None)
    assert paused == [auth]
    call = Script(InvalidRequestError("物料[X]不存在", api="bip"))
    with pytest.raises(InvalidRequestError):
        retry.call_with_retries(call, POLICY, sleep=call.sleep)
    assert call.tries == 1 and call.sleeps == []


def test_foreign_errors_are_retried_through_the_table_and_others_go_through():
    call = Script(redis.ConnectionError("reset"), kombu.exceptions.OperationalError("down"))
    assert retry.call_with_retries(call, POLICY, sleep=call.sleep, classify=foreign) == "ok"
    with pytest.raises(KeyError):  # a bug is not retried
        retry.call_with_retries(Script(KeyError("x")), POLICY, sleep=lambda s: None, classify=foreign)


def test_before_runs_ahead_of_every_try():
    seen: list[int] = []
    call = Script(APIConnectionError("502"))
    retry.call_with_retries(call, POLICY, sleep=call.sleep, before=lambda: seen.append(call.tries))
    assert seen == [0, 1]


@pytest.mark.parametrize(("raw", "api"), [
    (requests.ConnectTimeout("slow secret=abc"), "bip"),
    (requests.ConnectionError("refused secret=abc"), "bip"),
    (redis.ConnectionError("reset by redis://:secret@host"), "redis"),
    (redis.TimeoutError("slow secret"), "redis"),
    (redis.ResponseError("READONLY You can't write against a read only replica."), "redis"),
    (kombu.exceptions.OperationalError("broker down: secret"), "redis"),
    (billiard.exceptions.SoftTimeLimitExceeded("secret=abc"), "bip"),
])
def test_every_foreign_failure_is_a_transient_error_of_ours_that_names_where_not_its_text(raw, api):
    ours = foreign(raw, api="bip" if api != "redis" else "", where="saving 42")
    assert isinstance(ours, APIConnectionError) and ours.should_retry and ours.kind is Kind.TRANSIENT
    assert ours.api == (api or "") and ours.message.startswith("saving 42: ")
    assert (type(raw).__name__ in ours.message and str(raw) not in ours.message) or not str(raw)


def test_ours_pass_through_and_anything_else_is_not_ours():
    mine = InvalidRequestError("no")
    assert foreign(mine) is mine and foreign(ValueError("x")) is None


def test_retryability_is_the_kind_s():
    assert {Kind.TRANSIENT, Kind.RATE_LIMITED, Kind.TOKEN_EXPIRED} == RETRYABLE
    for kind in Kind:
        error = make_error(kind, "m", api="bip") if kind not in (Kind.SUCCESS, Kind.DUPLICATE) else None
        if error is not None:
            assert error.should_retry is (kind in RETRYABLE), kind
    assert TokenExpiredError("t").should_retry and not AuthenticationError("a").should_retry
    assert InvalidRequestError("x", kind=Kind.TRANSIENT).should_retry  # the kind decides, not the class
