"""The sandbox's test controls, declared once. `Controls` gives each a typed method; a `Sandbox` carries
them out in process (the tests), `SandboxControl` sends them over HTTP to a running sandbox (demo,
bench, compose), and the server answers them under `/_sandbox/<path>` from `ROUTES`.
"""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import requests

from shared.core.timeutil import format_wire

from .bip import DISCOVERY_PATH
from .config import SandboxConfig
from .wdt import WDT_PATH

CONTROL_PREFIX = "/_sandbox/"

# control → (HTTP method, path under CONTROL_PREFIX). The paths are the sandbox's public surface
# (README, compose's healthcheck): they stay as they are when a method is renamed.
ROUTES: dict[str, tuple[str, str]] = {
    "generate": ("POST", "generate"),
    "add_stockouts": ("POST", "stockouts"),
    "add_raw_stockouts": ("POST", "stockouts/raw"),
    "modify": ("POST", "modify"),
    "statuses": ("GET", "statuses"),
    "bad": ("GET", "bad"),
    "records": ("GET", "records"),
    "delete_record": ("POST", "records/delete"),
    "duplicate_record": ("POST", "records/duplicate"),
    "add_record": ("POST", "records/add"),
    "set_key_memory": ("POST", "key-memory"),
    "forget_keys": ("POST", "key-memory/forget"),
    "revoke_tokens": ("POST", "revoke"),
    "set_bip_list": ("POST", "bip-list"),
    "set_wdt_lookup": ("POST", "wdt-lookup"),
    "set_faults": ("POST", "faults"),
    "faults": ("GET", "faults"),
    "set_rate_limits": ("POST", "rate-limits"),
    "set_latency": ("POST", "latency"),
    "counters": ("GET", "counters"),
    "reset": ("POST", "reset"),
    "config": ("GET", "config"),
    "env": ("GET", "env"),
    "state": ("GET", "state"),
    "load_state": ("POST", "state"),
}

TimeArg = datetime | str | None


def wire_time(value: TimeArg) -> str | None:
    return format_wire(value) if isinstance(value, datetime) else value


class Controls(ABC):
    """What a test, the demo or the bench can ask of a sandbox, wherever it runs. Arguments travel as
    JSON would carry them (times as wire strings), so both ways check them the same."""

    @property
    @abstractmethod
    def url(self) -> str: ...

    @abstractmethod
    def _control(self, name: str, args: dict[str, Any]) -> Any:
        """Carry out control `name`: a missing thing raises KeyError, a bad argument ValueError."""

    @property
    def wdt_url(self) -> str:
        return f"{self.url}{WDT_PATH}"

    @property
    def bip_discovery_url(self) -> str:
        return f"{self.url}{DISCOVERY_PATH}"

    # ---- WDT data

    def generate(self, count: int, bad: int = 0, start: TimeArg = None, end: TimeArg = None,
                 seed: int | None = None) -> list[dict[str, Any]]:
        """`count` new stockouts (`bad` of them malformed), modified between `start` and `end`."""
        args = {"count": count, "bad": bad, "start": wire_time(start), "end": wire_time(end), "seed": seed}
        return cast(list[dict[str, Any]], self._control("generate", args))

    def add_stockouts(self, stockouts: list[dict[str, Any]]) -> int:
        """Add or replace (by stockout_id, like an edit in WDT) raw stockouts."""
        return cast(int, self._control("add_stockouts", {"stockouts": stockouts}))

    def add_raw_stockouts(self, rows: list[str]) -> int:
        """Add or replace stockouts given as JSON object text, served byte for byte (a quantity
        written `1e3` or `1e999999999` reaches the client as written); each needs its `modified`."""
        return cast(int, self._control("add_raw_stockouts", {"rows": rows}))

    def modify(self, stockout_id: str) -> dict[str, Any]:
        """Edit a stockout as WDT would: its `modified` moves to now."""
        return cast(dict[str, Any], self._control("modify", {"stockout_id": stockout_id}))

    def statuses(self) -> dict[str, str]:
        """stockout_id → WDT status of every stockout the sandbox holds."""
        return cast(dict[str, str], self._control("statuses", {}))

    @property
    def bad_ids(self) -> set[str]:
        return set(self.bad_reasons)

    @property
    def bad_reasons(self) -> dict[str, str]:
        """stockout_id → why the generator made it malformed."""
        return cast(dict[str, str], self._control("bad", {}))

    # ---- BIP data

    def records(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._control("records", {}))

    def delete_record(self, record_id: str, forget_key: bool = False) -> None:
        """Remove a record as a BIP user would; its resubmitCheckKey stays remembered unless `forget_key`."""
        self._control("delete_record", {"record_id": record_id, "forget_key": forget_key})

    def duplicate_record(self, record_id: str) -> dict[str, Any]:
        """A second record of the same stockout, as a double save would leave."""
        return cast(dict[str, Any], self._control("duplicate_record", {"record_id": record_id}))

    def add_record(self, code: str, define1: str | None = None, vouchdate: str | None = None) -> dict[str, Any]:
        """A record typed in BIP by hand with `code` (no resubmitCheckKey; `define1` only if given)."""
        args = {"code": code, "define1": define1, "vouchdate": vouchdate}
        return cast(dict[str, Any], self._control("add_record", args))

    def set_key_memory(self, seconds: float | None) -> None:
        """BIP forgets a resubmitCheckKey `seconds` after its save and then saves it again (None: never)."""
        self._control("set_key_memory", {"seconds": seconds})

    def forget_keys(self) -> int:
        """BIP forgets every resubmitCheckKey it holds now, as it does about an hour after each save: the
        next save under one of them is stored again. Returns how many were forgotten."""
        return cast(int, self._control("forget_keys", {})["forgotten"])

    def revoke_tokens(self) -> None:
        self._control("revoke_tokens", {})

    def set_bip_list(self, ignore_filters: bool | None = None, omit_fields: bool | None = None) -> dict[str, bool]:
        """Switch BIP's list between honouring simpleVOs or not, and full or cut-down rows (None: keep)."""
        args = {"ignore_filters": ignore_filters, "omit_fields": omit_fields}
        return cast(dict[str, bool], self._control("set_bip_list", args))

    def set_wdt_lookup(self, needs_window: bool) -> dict[str, bool]:
        """Whether a stockout_no query without start_time/end_time is refused (11000000), as some editions do."""
        return cast(dict[str, bool], self._control("set_wdt_lookup", {"needs_window": needs_window}))

    # ---- faults, limits, counters

    def set_faults(self, bip: dict[str, float] | None = None, wdt: dict[str, float] | None = None) -> None:
        """Fault kind → probability (or milliseconds for latency) per side; no argument clears them."""
        self._control("set_faults", {"bip": bip or {}, "wdt": wdt or {}})

    def faults(self) -> dict[str, dict[str, float]]:
        return cast(dict[str, dict[str, float]], self._control("faults", {}))

    def set_rate_limits(self, bip_per_s: float | None = None, wdt_per_min: float | None = None,
                        window_s: float | None = None) -> None:
        """None switches a limit off. Token buckets (BIP: bursts of `bip_per_s`; WDT: bursts of
        `wdt_per_min`), or with `window_s` sliding windows: at most rate × window_s accepted calls in
        any window_s seconds. Refusals answer 310046 (BIP) and 1012 (WDT)."""
        self._control("set_rate_limits", {"bip_per_s": bip_per_s, "wdt_per_min": wdt_per_min, "window_s": window_s})

    def set_latency(self, wdt_ms: float | None = None, bip_ms: float | None = None) -> dict[str, float]:
        """Every call to WDT / BIP takes this long before its answer, as a real gateway does (e.g. 300 and
        200 ms); None keeps a side's. It is the config's latency: `reset` and `set_faults` keep it (a
        `latency_ms` fault adds to it)."""
        return cast(dict[str, float], self._control("set_latency", {"wdt_ms": wdt_ms, "bip_ms": bip_ms}))

    def counters(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._control("counters", {}))

    def reset(self) -> None:
        """Clear stockouts, records, counters, faults and limits (back to the config's). Stockout
        ids keep increasing so ids from before a reset are never reused."""
        self._control("reset", {})

    def env(self) -> dict[str, str]:
        """The service's environment for this sandbox (its credentials are fakes, not secrets)."""
        return cast(dict[str, str], self._control("env", {}))

    def state(self) -> dict[str, Any]:
        """Every stockout and BIP record, to save and load again (`sandbox --state FILE`, `demo --keep`)."""
        return cast(dict[str, Any], self._control("state", {}))

    def load_state(self, stockouts: list[dict[str, Any]], records: list[dict[str, Any]],
                   bad: dict[str, str] | None = None) -> dict[str, int]:
        """Add what `state()` gave; BIP's resubmitCheckKeys are not kept (as BIP forgets them after an hour)."""
        return cast(dict[str, int], self._control("load_state", {"stockouts": stockouts, "records": records,
                                                                 "bad": bad or {}}))


def listing(implementations: dict[str, Callable[..., Any]]) -> list[dict[str, Any]]:
    """`GET /_sandbox/`: every control with its HTTP method, path and arguments (from the function
    that carries it out), and what it does (from its typed method here)."""
    found = []
    for name, (method, path) in ROUTES.items():
        args = [{"name": p.name, "type": str(p.annotation),
                 **({} if p.default is inspect.Parameter.empty else {"default": p.default})}
                for p in inspect.signature(implementations[name]).parameters.values()]
        doc = inspect.getdoc(getattr(Controls, name, None) or getattr(SandboxControl, name, None)) or ""
        found.append({"control": name, "method": method, "path": CONTROL_PREFIX + path, "args": args,
                      "doc": doc.split("\n\n")[0].replace("\n", " ")})
    return found


class SandboxControl(Controls):
    """Drive a running sandbox over HTTP: the Sandbox's test API for the demo, the bench and compose."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self._url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()

    @property
    def url(self) -> str:
        return self._url

    def _control(self, name: str, args: dict[str, Any]) -> Any:
        method, path = ROUTES[name]
        response = self._session.request(method, f"{self._url}{CONTROL_PREFIX}{path}",
                                         json=args if method == "POST" else None, timeout=self.timeout)
        if response.status_code == 404:
            raise KeyError(response.json().get("error", name))
        if response.status_code == 400:
            raise ValueError(response.json().get("error", ""))
        response.raise_for_status()
        return response.json()

    def config(self) -> SandboxConfig:
        return SandboxConfig.model_validate(self._control("config", {}))

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> SandboxControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
