"""What both fake APIs share: the request/reply types, the JSON helpers, fault injection, rate
limits and the counters.

Faults and rate limits live here rather than in each handler so that the WDT and the BIP side fail
in exactly the same, reproducible way (one seeded RNG, one counter set).
"""
from __future__ import annotations

import collections
import json
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl

JSON_TYPE = "application/json;charset=UTF-8"
HTML_TYPE = "text/html;charset=UTF-8"


class Headers(Protocol):
    """A request's headers, looked up without regard to case (http.server's `Message`)."""

    def get(self, name: str, /) -> str | None: ...


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes = b""

    def form(self) -> dict[str, str]:
        """Query and form body merged, as a TOP gateway reads parameters from either."""
        params = dict(self.query)
        content_type = (self.headers.get("Content-Type") or "").lower()
        if self.body and (not content_type or "x-www-form-urlencoded" in content_type):
            params.update(parse_params(self.body.decode("utf-8", errors="replace")))
        return params

    def json(self) -> Any:
        """The decoded JSON body; raises ValueError on an empty or unreadable one."""
        if not self.body:
            raise ValueError("empty body")
        return json.loads(self.body.decode("utf-8"))


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = JSON_TYPE


def parse_params(text: str) -> dict[str, str]:
    """One URL-decoding, first value wins — what a servlet's getParameter does."""
    params: dict[str, str] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        params.setdefault(key, value)
    return params


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_reply(payload: Any, status: int = 200) -> Reply:
    return Reply(status, dumps(payload))


def html_reply(status: int, title: str) -> Reply:
    # what an nginx in front of the gateway sends: a client must not try to parse it as JSON
    body = (f"<html><head><title>{status} {title}</title></head>"
            f"<body><center><h1>{status} {title}</h1></center></body></html>")
    return Reply(status, body.encode("utf-8"), HTML_TYPE)


def truncated(reply: Reply) -> Reply:
    """The same reply cut in the middle: HTTP 200, JSON content type, a body no parser accepts."""
    cut = max(1, len(reply.body) // 2)
    return Reply(reply.status, reply.body[:cut], reply.content_type)


# ---------------------------------------------------------------------------------------------
# counters


COUNTER_NAMES = (
    "bip_saves",
    "bip_save_calls",
    "bip_replays",
    "bip_duplicates_blocked",
    "bip_keys_forgotten",
    "bip_validation_errors",
    "bip_rate_limited",
    "bip_tokens_issued",
    "bip_token_request_errors",
    "bip_token_rejections",
    "bip_list_calls",
    "bip_detail_calls",
    "wdt_calls",
    "wdt_rate_limited",
    "wdt_errors",
)


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._values = dict.fromkeys(COUNTER_NAMES, 0)
            self._faults: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def inc_fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] = self._faults.get(kind, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {**self._values, "faults": dict(self._faults)}


# ---------------------------------------------------------------------------------------------
# rate limits


class TokenBucket:
    """`rate` calls a second on average with bursts of `burst`; a refused call costs nothing."""

    def __init__(self, rate_per_s: float, burst: float) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate_per_s
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class SlidingWindow:
    """At most `rate` × `window_s` accepted calls in any `window_s` seconds (a sliding log, as
    gateways that count "calls in the last second" do); a refused call costs nothing. Perfectly
    spaced calls at exactly the rate can still be refused: jitter puts one more into a window."""

    def __init__(self, rate_per_s: float, window_s: float = 1.0) -> None:
        if rate_per_s <= 0 or window_s <= 0:
            raise ValueError("rate and window must be positive")
        self.window_s = window_s
        self.allowed = max(1, int(rate_per_s * window_s + 1e-9))
        self._accepted: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            while self._accepted and self._accepted[0] <= now - self.window_s:
                self._accepted.popleft()
            if len(self._accepted) < self.allowed:
                self._accepted.append(now)
                return True
            return False


class RateLimit:
    """A limit that can be switched off (None) or replaced while requests are running."""

    def __init__(self) -> None:
        self._bucket: TokenBucket | SlidingWindow | None = None

    def set(self, rate_per_s: float | None, burst: float | None = None, *, window_s: float | None = None) -> None:
        """A token bucket of `burst`, or with `window_s` a sliding window of that many seconds."""
        if not rate_per_s:
            self._bucket = None
        elif window_s:
            self._bucket = SlidingWindow(rate_per_s, window_s)
        else:
            self._bucket = TokenBucket(rate_per_s, burst or rate_per_s)

    def allow(self) -> bool:
        bucket = self._bucket
        return bucket is None or bucket.allow()


# ---------------------------------------------------------------------------------------------
# fault injection

# probability kinds per side; `latency_ms` and `slow_s` are amounts, not probabilities
FAULT_KINDS = {
    # detail_http_502: only the detail endpoint fails (reconcile's proof of presence)
    "bip": ("http_502", "code_310504", "rate_limit", "slow_stored", "detail_http_502"),
    "wdt": ("http_500", "rate_limit", "malformed_json", "slow"),
}
AMOUNT_KEYS = ("latency_ms", "slow_s")
DEFAULT_SLOW_S = 10.0


class Faults:
    """Per-request random faults from one seeded RNG, so a run can be repeated exactly.

    Sleeps go through `sleep`, which `wake()` cuts short, so stopping the sandbox never waits for
    a ten-second "slow" reply.
    """

    def __init__(self, seed: int, counters: Counters) -> None:
        self._seed = seed
        self._counters = counters
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.set()

    def set(self, bip: Mapping[str, float] | None = None, wdt: Mapping[str, float] | None = None) -> None:
        settings = {"bip": _checked("bip", bip or {}), "wdt": _checked("wdt", wdt or {})}
        with self._lock:
            self._settings = settings
            self._rng = random.Random(self._seed)

    def settings(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {side: dict(values) for side, values in self._settings.items()}

    def roll(self, side: str, kind: str) -> bool:
        with self._lock:
            p = self._settings[side].get(kind, 0.0)
            hit = p > 0 and self._rng.random() < p
        if hit:
            self._counters.inc_fault(f"{side}.{kind}")
        return hit

    def latency_s(self, side: str) -> float:
        with self._lock:
            return self._settings[side].get("latency_ms", 0.0) / 1000.0

    def slow_s(self, side: str) -> float:
        with self._lock:
            return self._settings[side].get("slow_s", DEFAULT_SLOW_S)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stop.wait(seconds)

    def wake(self) -> None:
        self._stop.set()

    def rearm(self) -> None:
        self._stop.clear()


def _checked(side: str, values: Mapping[str, float]) -> dict[str, float]:
    known = FAULT_KINDS[side]
    result: dict[str, float] = {}
    for key, raw in values.items():
        if key not in known and key not in AMOUNT_KEYS:
            raise ValueError(f"unknown {side} fault {key!r}; known: {', '.join(known + AMOUNT_KEYS)}")
        value = float(raw)
        if key in AMOUNT_KEYS:
            if value < 0:
                raise ValueError(f"{side}.{key} must be ≥ 0, got {raw!r}")
        elif not 0.0 <= value <= 1.0:
            raise ValueError(f"{side}.{key} is a probability 0–1, got {raw!r}")
        result[key] = value
    return result
