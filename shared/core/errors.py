"""One flat, typed error hierarchy for both APIs and the transform, and the one decision about it.

Each error carries a `kind` (from the per-API reply-code tables in `shared.wdt.errors` and
`shared.bip.errors`); `resolve` turns the kind into an action, and `shared.core.retry` or the worker's
task carries it out (deciding is kept apart from acting, as in Airbyte's ErrorResolution).
"""
from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Any

import billiard.exceptions
import kombu.exceptions
import redis
import requests


class Kind(enum.StrEnum):
    """What a failure is, whatever API or code it came from: what the tables map every code to."""

    RATE_LIMITED = "rate_limited"  # "too frequent": wait, it costs no attempt
    CONFIG = "config"  # authentication, grants, discovery, an unreadable mapping: pause everything
    TOKEN_EXPIRED = "token_expired"  # BIP token refused: the client renews it once and repeats
    TRANSIENT = "transient"  # network, 5xx, gateway timeout, clock: retry with backoff
    INVALID_DATA = "invalid_data"  # the remote side refused this content: no retry
    NOT_FOUND = "not_found"
    DUPLICATE = "duplicate_submission"  # BIP's resubmitCheckKey replay after an hour: success
    SUCCESS = "success"


# What may succeed if tried again: the one place retryability is decided (a property of the kind).
RETRYABLE = frozenset({Kind.TRANSIENT, Kind.RATE_LIMITED, Kind.TOKEN_EXPIRED})


class StockoutSyncError(Exception):
    """Base of every error this service raises on purpose.

    `api` is "wdt" or "bip" (or "" for local errors); `code`/`api_message` carry the remote
    system's own code and words so an operator can look them up.
    """

    kind: Kind = Kind.INVALID_DATA

    def __init__(
        self,
        message: str,
        *,
        api: str = "",
        code: str = "",
        api_message: str = "",
        http_status: int | None = None,
        retry_after: float | None = None,
        kind: Kind | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.api = api
        self.code = str(code) if code is not None else ""
        self.api_message = api_message
        self.http_status = http_status
        self.retry_after = retry_after
        if kind is not None:
            self.kind = kind

    @property
    def should_retry(self) -> bool:
        return self.kind in RETRYABLE

    def __reduce__(self) -> tuple[Any, ...]:  # keep the typed fields across Celery's result serialisation
        return (_rebuild, (type(self), self.message, self.__dict__))

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "api": self.api,
            "code": self.code,
            "api_message": self.api_message,
            "http_status": self.http_status,
            "should_retry": self.should_retry,
            "kind": self.kind.value,
        }


def _rebuild(cls: type[StockoutSyncError], message: str, state: dict[str, Any]) -> StockoutSyncError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class APIConnectionError(StockoutSyncError):
    """Network failure, timeout, 5xx, unreadable body, Redis away. Retried."""

    kind = Kind.TRANSIENT


class RateLimitError(StockoutSyncError):
    """The remote side said "too frequent"; wait (at least `retry_after` seconds when it said so)."""

    kind = Kind.RATE_LIMITED


class TokenExpiredError(StockoutSyncError):
    """BIP token invalid or expired (310036) even right after a renewal: try again later."""

    kind = Kind.TOKEN_EXPIRED


class AuthenticationError(StockoutSyncError):
    """Bad signature, unknown app key, API not granted, discovery failing: a configuration error
    that hits every stockout alike, so it pauses the pipeline (shared.redis.breaker) instead of failing one."""

    kind = Kind.CONFIG


class ConfigurationError(StockoutSyncError):
    """A local setting or file that cannot work (e.g. the mapping file unreadable): pauses too."""

    kind = Kind.CONFIG


class InvalidRequestError(StockoutSyncError):
    """The remote side refused the content (parameters, business validation). Not retried."""

    kind = Kind.INVALID_DATA


class MappingError(StockoutSyncError):
    """A stockout the mapping cannot express; the message names the field and the value."""

    kind = Kind.INVALID_DATA


# The class each kind is raised as: what callers catch (`except RateLimitError`) stays stable.
ERROR_CLASS: dict[Kind, type[StockoutSyncError]] = {
    Kind.RATE_LIMITED: RateLimitError,
    Kind.CONFIG: AuthenticationError,
    Kind.TOKEN_EXPIRED: TokenExpiredError,
    Kind.TRANSIENT: APIConnectionError,
    Kind.INVALID_DATA: InvalidRequestError,
    Kind.NOT_FOUND: InvalidRequestError,
}


def make_error(
    kind: Kind, message: str, *, api: str, code: str = "", api_message: str = "", http_status: int | None = None,
    retry_after: float | None = None,
) -> StockoutSyncError:
    """The typed error for `kind`; the per-API factories (`wdt.errors.error`, `bip.errors.error`) word it."""
    cls = ERROR_CLASS.get(kind, InvalidRequestError)
    return cls(message, api=api, code=code, api_message=api_message, http_status=http_status,
               retry_after=retry_after, kind=kind)


# The one table of foreign exceptions (after httpx's HTTPCORE_EXC_MAP): what each library's failure is
# as ours. First match wins, so a subclass stands before its base. Anything not here is a bug of ours
# or of the library and goes through unchanged.
# (exception types, the api it concerns ("" = the caller's), what it means in words)
FOREIGN: tuple[tuple[tuple[type[BaseException], ...], str, str], ...] = (
    ((requests.Timeout,), "", "timed out"),
    ((requests.RequestException,), "", "connection failed"),
    ((redis.RedisError, kombu.exceptions.OperationalError), "redis", "Redis unavailable"),
    ((billiard.exceptions.SoftTimeLimitExceeded,), "", "task ran out of time"),
)


def foreign(error: BaseException, *, api: str = "", where: str = "", detail: str = "") -> StockoutSyncError | None:
    """`error` from requests, redis, kombu or billiard as one of ours: transient, since each is a
    network, a server or a time limit failing, not the stockout. `where` names what was being done
    and `detail` adds words the caller made safe (the exception's own text may carry a secret). Ours
    go through as they are; anything else is None."""
    if isinstance(error, StockoutSyncError):
        return error
    for types, own_api, words in FOREIGN:
        if isinstance(error, types):
            said = f"{words} ({type(error).__name__})" + (f": {detail}" if detail else "")
            return APIConnectionError(f"{where}: {said}" if where else said, api=own_api or api)
    return None


class Action(enum.Enum):
    RETRY = "retry"  # try again after `delay_s`; uses an attempt
    WAIT_RATE_LIMITED = "wait_rate_limited"  # try again after `delay_s`; never uses an attempt
    PAUSE = "pause"  # systemic (configuration): open the circuit breaker, keep the work, use no attempt
    FAIL = "fail"  # this stockout or this call cannot succeed: give up (dead letter, error line)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_s: float = 2.0
    max_s: float = 300.0


@dataclass(frozen=True)
class Resolution:
    action: Action
    delay_s: float = 0.0
    kind: Kind = Kind.INVALID_DATA

    @property
    def uses_attempt(self) -> bool:
        return self.action in (Action.RETRY, Action.FAIL)


def kind_of(error: BaseException) -> Kind:
    if isinstance(error, StockoutSyncError):
        return error.kind
    return Kind.INVALID_DATA


def resolve(error: BaseException, attempt: int, policy: RetryPolicy | None = None) -> Resolution:
    """The one decision about a failure. `attempt` counts real attempts from 1 (the one that just
    failed); waits for a rate limit and pauses are not attempts and never exhaust them."""
    policy = policy or RetryPolicy()
    kind = kind_of(error)
    if kind is Kind.RATE_LIMITED:
        hinted = getattr(error, "retry_after", None)
        wait = hinted if hinted is not None else 1.0
        # a little jitter so the processes refused together do not come back together
        return Resolution(Action.WAIT_RATE_LIMITED, min(policy.max_s, wait) + random.uniform(0, 0.25), kind)
    if kind is Kind.CONFIG:
        return Resolution(Action.PAUSE, 0.0, kind)
    retriable = isinstance(error, StockoutSyncError) and error.should_retry
    if retriable and attempt < policy.max_attempts:
        delay = min(policy.max_s, policy.base_s * 2 ** (attempt - 1))
        # full jitter: spread the retries of many workers hit by the same outage
        return Resolution(Action.RETRY, random.uniform(delay / 2, delay), kind)
    return Resolution(Action.FAIL, 0.0, kind)
