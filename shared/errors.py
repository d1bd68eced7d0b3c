"""One flat, typed error hierarchy for both APIs and the transform.

Deciding what to do about an error (`resolve`) is kept apart from doing it (the task): the same
decision serves the worker's retries, the producer's page retries and the CLI's messages.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, TypedDict


class StockoutSyncError(Exception):
    """Base of every error this service raises on purpose.

    `api` is "wdt" or "bip" (or "" for local errors); `code`/`api_message` carry the remote
    system's own code and words so an operator can look them up.
    """

    should_retry: bool = False

    def __init__(
        self,
        message: str,
        *,
        api: str = "",
        code: str = "",
        api_message: str = "",
        http_status: int | None = None,
        retry_after: float | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.api = api
        self.code = str(code) if code is not None else ""
        self.api_message = api_message
        self.http_status = http_status
        self.retry_after = retry_after
        if should_retry is not None:
            self.should_retry = should_retry

    def __reduce__(self) -> tuple[Any, ...]:  # keep the typed fields across Celery's result serialisation
        return (_rebuild, (type(self), self.message, self.__dict__))

    def to_dict(self) -> dict:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "api": self.api,
            "code": self.code,
            "api_message": self.api_message,
            "http_status": self.http_status,
            "should_retry": self.should_retry,
        }


def _rebuild(cls: type[StockoutSyncError], message: str, state: dict[str, Any]) -> StockoutSyncError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class RemoteFields(TypedDict, total=False):
    """The remote system's side of an error, built once and passed to whichever class fits."""

    api: str
    code: str
    api_message: str
    http_status: int | None


class APIConnectionError(StockoutSyncError):
    """Network failure, timeout, 5xx, unreadable body. Retry unless told otherwise."""

    should_retry = True


class RateLimitError(StockoutSyncError):
    """The remote side said "too frequent"; wait `retry_after` seconds."""

    should_retry = True


class TokenExpiredError(StockoutSyncError):
    """BIP token invalid or expired (310036): renew it once and repeat the call."""

    should_retry = True


class AuthenticationError(StockoutSyncError):
    """Bad signature, unknown app key, API not granted: a configuration error, never retried."""


class InvalidRequestError(StockoutSyncError):
    """The remote side refused the content (parameters, business validation). Not retried."""


class MappingError(StockoutSyncError):
    """A stockout the mapping cannot express; the message names the field and the value."""


class Action(enum.Enum):
    RETRY = "retry"
    RATE_LIMITED = "rate_limited"
    REFRESH_TOKEN_AND_RETRY = "refresh_token_and_retry"
    FAIL = "fail"


@dataclass(frozen=True)
class Resolution:
    action: Action
    delay_s: float = 0.0


def resolve(error: BaseException, attempt: int, *, base_s: float = 2.0, max_s: float = 300.0) -> Resolution:
    """The one predicate that decides retry. `attempt` counts from 1 (the attempt that just failed)."""
    import random

    if isinstance(error, RateLimitError):
        wait = error.retry_after if error.retry_after is not None else base_s * 2 ** (attempt - 1)
        return Resolution(Action.RATE_LIMITED, min(max_s, wait) + random.uniform(0, 0.25))
    if isinstance(error, TokenExpiredError):
        return Resolution(Action.REFRESH_TOKEN_AND_RETRY, 0.0)
    if isinstance(error, StockoutSyncError) and error.should_retry:
        delay = min(max_s, base_s * 2 ** (attempt - 1))
        # full jitter: spread the retries of many workers hit by the same outage
        return Resolution(Action.RETRY, random.uniform(delay / 2, delay))
    return Resolution(Action.FAIL)
