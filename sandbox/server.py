"""The sandbox process: one HTTP server in front of the fake WDT and BIP, plus `/_sandbox/` control
endpoints so another process (demo, bench) can drive it as the tests drive it in-process.
"""
from __future__ import annotations

import contextlib
import copy
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
from pydantic import BaseModel, ConfigDict

from shared.timeutil import format_wire, parse_wire

from .bip import DISCOVERY_PATH, BipApi
from .data import generate_stockouts
from .faults import Counters, Faults, RateLimit, Reply, Request, json_reply, parse_params
from .wdt import WdtApi

WDT_PATH = "/router/qm"
CONTROL_PREFIX = "/_sandbox/"
FIRST_STOCKOUT_ID = 1_000_001


class SandboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wdt_app_key: str = "sandbox-wdt-key"
    wdt_app_secret: str = "sandbox-wdt-secret"
    wdt_sid: str = "sandbox-sid"
    wdt_target_app_key: str = "21363512"
    bip_tenant_id: str = "sandbox-tenant"
    bip_app_key: str = "sandbox-bip-key"
    bip_app_secret: str = "sandbox-bip-secret"
    token_lifetime_s: float = 7200
    replay_window_s: float = 3600  # resubmitCheckKey replays answer the stored result this long
    timestamp_skew_s: int = 600
    numbering: Literal["auto", "manual"] = "auto"
    wdt_total_count_every_page: bool = False
    wdt_rate_per_min: float | None = None
    bip_rate_per_s: float | None = None
    rate_window_s: float | None = None  # None: token buckets; else sliding windows of this many seconds
    bip_latency_ms: float = 0
    bip_list_ignores_filters: bool = False  # othoutrecord/list honours only pageIndex, pageSize, code
    bip_list_omits_fields: bool = False  # its rows carry only id, code, vouchdate, warehouse, status
    wdt_latency_ms: float = 0
    fault_seed: int = 0
    data_seed: int = 42


TimeArg = datetime | str | None


class _Addresses:
    """Where the service should point, given the sandbox's base `url`."""

    url: str

    @property
    def wdt_url(self) -> str:
        return f"{self.url}{WDT_PATH}"

    @property
    def bip_discovery_url(self) -> str:
        return f"{self.url}{DISCOVERY_PATH}"


class Sandbox(_Addresses):
    """Both remote APIs on one loopback port. Start it, point the clients at `env()`, drive it."""

    def __init__(self, config: SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 public_url: str | None = None) -> None:
        self.config = (config or SandboxConfig()).model_copy()
        self._host, self._port, self._public_url = host, port, public_url
        self._counters = Counters()
        self._faults = Faults(self.config.fault_seed, self._counters)
        self._wdt_limit, self._bip_limit = RateLimit(), RateLimit()
        self._default_rate_limits()
        self.wdt = WdtApi(self.config, self._counters, self._faults, self._wdt_limit)
        self.bip = BipApi(self.config, self._counters, self._faults, self._bip_limit, base_url=lambda: self.url)
        self._routes: dict[tuple[str, str], Callable[[Request], Reply]] = {
            **self.bip.routes(), ("GET", WDT_PATH): self.wdt.handle, ("POST", WDT_PATH): self.wdt.handle,
        }
        self._control = _control_routes(self)
        self._lock = threading.Lock()
        self._next_id = FIRST_STOCKOUT_ID
        self._generate_calls = 0
        self._bad_reasons: dict[str, str] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    def start(self) -> Sandbox:
        if self._server is None:
            self._faults.rearm()
            self._server = _Server((self._host, self._port), self)
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                            name="sandbox-http", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._faults.wake()  # cut injected sleeps short instead of waiting out a "slow" fault
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._public_url:
            return self._public_url.rstrip("/")
        if self._server is None:
            raise RuntimeError("the sandbox is not started")
        host, port = self._server.server_address[:2]
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{port}"


    def env(self) -> dict[str, str]:
        """The service's environment for this sandbox (its credentials are fakes, not secrets)."""
        cfg = self.config
        return {
            "WDT_QIMEN_URL": self.wdt_url,
            "WDT_APP_KEY": cfg.wdt_app_key,
            "WDT_APP_SECRET": cfg.wdt_app_secret,
            "WDT_SID": cfg.wdt_sid,
            "WDT_TARGET_APP_KEY": cfg.wdt_target_app_key,
            "BIP_TENANT_ID": cfg.bip_tenant_id,
            "BIP_APP_KEY": cfg.bip_app_key,
            "BIP_APP_SECRET": cfg.bip_app_secret,
            "BIP_DISCOVERY_URL": self.bip_discovery_url,
        }

    # ---- routing (called from the HTTP handler threads)

    def handle(self, request: Request) -> Reply:
        if request.path.startswith(CONTROL_PREFIX):
            return self._control_call(request)
        route = self._routes.get((request.method, request.path))
        if route is not None:
            return route(request)
        if any(path == request.path for _, path in self._routes):
            return json_reply({"code": "405", "message": f"{request.method} not allowed on {request.path}"}, 405)
        return json_reply({"code": "404", "message": f"no API at {request.path}"}, 404)

    def _control_call(self, request: Request) -> Reply:
        action = self._control.get((request.method, request.path))
        if action is None:
            return json_reply({"error": f"no control endpoint {request.method} {request.path}"}, 404)
        try:
            body = request.json() if request.body else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            return json_reply(action(body))
        except KeyError as e:
            return json_reply({"error": str(e.args[0]) if e.args else "not found"}, 404)
        except (ValueError, TypeError) as e:
            return json_reply({"error": str(e)}, 400)

    # ---- WDT data

    def add_stockouts(self, stockouts: list[dict[str, Any]]) -> int:
        """Add or replace (by stockout_id, like an edit in WDT) raw stockouts."""
        added = self.wdt.add(stockouts)
        numeric = [int(s["stockout_id"]) for s in stockouts if str(s["stockout_id"]).isdigit()]
        if numeric:
            with self._lock:
                self._next_id = max(self._next_id, max(numeric) + 1)
        return added

    def generate(self, count: int, bad: int = 0, start: TimeArg = None, end: TimeArg = None,
                 seed: int | None = None) -> list[dict[str, Any]]:
        start_at, end_at = _time_arg("start", start), _time_arg("end", end)
        with self._lock:
            first_id, self._next_id = self._next_id, self._next_id + count
            call, self._generate_calls = self._generate_calls, self._generate_calls + 1
        # without a seed each call differs, yet a whole run repeats for the same data_seed
        seed = seed if seed is not None else self.config.data_seed * 1_000_003 + call
        batch = generate_stockouts(count, first_id=first_id, seed=seed, bad=bad, start=start_at, end=end_at)
        self.wdt.add(batch.stockouts)
        with self._lock:
            self._bad_reasons.update(batch.bad_reasons)
        return batch.stockouts

    def modify(self, stockout_id: str) -> dict[str, Any]:
        return self.wdt.modify(stockout_id)

    @property
    def bad_ids(self) -> set[str]:
        with self._lock:
            return set(self._bad_reasons)

    @property
    def bad_reasons(self) -> dict[str, str]:
        with self._lock:
            return dict(self._bad_reasons)

    # ---- BIP data

    def records(self) -> list[dict[str, Any]]:
        return self.bip.records()

    def delete_record(self, record_id: str, forget_key: bool = False) -> None:
        self.bip.delete_record(record_id, forget_key=forget_key)

    def duplicate_record(self, record_id: str) -> dict[str, Any]:
        return self.bip.duplicate_record(record_id)

    def revoke_tokens(self) -> None:
        self.bip.revoke()

    def set_bip_list(self, ignore_filters: bool | None = None, omit_fields: bool | None = None) -> dict[str, bool]:
        """Switch BIP's list between honouring simpleVOs or not, and full or cut-down rows."""
        return self.bip.set_list_mode(ignore_filters, omit_fields)

    # ---- faults, limits, counters

    def set_faults(self, bip: dict[str, float] | None = None, wdt: dict[str, float] | None = None) -> None:
        self._faults.set(bip=bip, wdt=wdt)

    def faults(self) -> dict[str, dict[str, float]]:
        return self._faults.settings()

    def set_rate_limits(self, bip_per_s: float | None = None, wdt_per_min: float | None = None,
                        window_s: float | None = None) -> None:
        """None switches a limit off. Token buckets (BIP: bursts of `bip_per_s`; WDT: bursts of
        `wdt_per_min`), or with `window_s` sliding windows: at most rate × window_s accepted calls in
        any window_s seconds. Refusals answer 310046 (BIP) and 1012 (WDT)."""
        self._bip_limit.set(bip_per_s, burst=bip_per_s, window_s=window_s)
        self._wdt_limit.set(wdt_per_min / 60.0 if wdt_per_min else None, burst=wdt_per_min, window_s=window_s)

    def _default_rate_limits(self) -> None:
        self.set_rate_limits(bip_per_s=self.config.bip_rate_per_s, wdt_per_min=self.config.wdt_rate_per_min,
                             window_s=self.config.rate_window_s)

    def counters(self) -> dict[str, Any]:
        return {**self._counters.snapshot(), "duplicate_stockouts": self.bip.duplicate_stockouts()}

    def reset(self) -> None:
        """Clear stockouts, records, counters, faults and limits (back to the config's). Stockout
        ids keep increasing so ids from before a reset are never reused."""
        self.wdt.clear()
        self.bip.clear()
        self._counters.reset()
        self._faults.set()
        self._default_rate_limits()
        self.bip.set_list_mode(self.config.bip_list_ignores_filters, self.config.bip_list_omits_fields)
        with self._lock:
            self._bad_reasons.clear()


def _time_arg(name: str, value: TimeArg) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return parse_wire(value)
    except ValueError:
        raise ValueError(f"{name} must be 'yyyy-MM-dd HH:mm:ss' (Beijing), got {value!r}") from None


def _wire_arg(value: TimeArg) -> str | None:
    return format_wire(value) if isinstance(value, datetime) else value


def _arg(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise ValueError(f"missing {name!r}")
    return body[name]


def _control_routes(sb: Sandbox) -> dict[tuple[str, str], Callable[[dict[str, Any]], Any]]:
    def generate(b: dict[str, Any]) -> dict[str, Any]:
        stockouts = sb.generate(int(_arg(b, "count")), bad=int(b.get("bad", 0)), start=b.get("start"),
                                end=b.get("end"), seed=b.get("seed"))
        return {"stockouts": stockouts}

    def delete(b: dict[str, Any]) -> dict[str, Any]:
        sb.delete_record(str(_arg(b, "id")), forget_key=bool(b.get("forget_key", False)))
        return {"deleted": str(b["id"])}

    def faults(b: dict[str, Any]) -> dict[str, Any]:
        sb.set_faults(bip=b.get("bip"), wdt=b.get("wdt"))
        return {"faults": sb.faults()}

    def rate_limits(b: dict[str, Any]) -> dict[str, Any]:
        sb.set_rate_limits(bip_per_s=b.get("bip_per_s"), wdt_per_min=b.get("wdt_per_min"), window_s=b.get("window_s"))
        return {"ok": True}

    def bip_list(b: dict[str, Any]) -> dict[str, Any]:
        for name in ("ignore_filters", "omit_fields"):
            if b.get(name) is not None and not isinstance(b[name], bool):
                raise ValueError(f"{name} must be true, false or null, got {b[name]!r}")
        return {"list": sb.set_bip_list(b.get("ignore_filters"), b.get("omit_fields"))}

    def run(action: Callable[[], object]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        return lambda _b: (action(), {"ok": True})[1]

    p = CONTROL_PREFIX
    return {
        ("POST", f"{p}generate"): generate,
        ("POST", f"{p}stockouts"): lambda b: {"added": sb.add_stockouts(_arg(b, "stockouts"))},
        ("POST", f"{p}modify"): lambda b: {"stockout": sb.modify(str(_arg(b, "stockout_id")))},
        ("GET", f"{p}records"): lambda _b: {"records": sb.records()},
        ("POST", f"{p}records/delete"): delete,
        ("POST", f"{p}records/duplicate"): lambda b: {"record": sb.duplicate_record(str(_arg(b, "id")))},
        ("GET", f"{p}counters"): lambda _b: sb.counters(),
        ("POST", f"{p}faults"): faults,
        ("GET", f"{p}faults"): lambda _b: {"faults": sb.faults()},
        ("POST", f"{p}revoke"): run(sb.revoke_tokens),
        ("POST", f"{p}bip-list"): bip_list,
        ("POST", f"{p}rate-limits"): rate_limits,
        ("POST", f"{p}reset"): run(sb.reset),
        ("GET", f"{p}statuses"): lambda _b: {"statuses": sb.wdt.statuses()},
        ("GET", f"{p}bad"): lambda _b: {"bad_ids": sorted(sb.bad_ids), "bad_reasons": sb.bad_reasons},
        ("GET", f"{p}config"): lambda _b: sb.config.model_dump(),
        ("GET", f"{p}env"): lambda _b: sb.env(),
    }


# ---------------------------------------------------------------------------------------------
# HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a pooled requests.Session reuses connections
    disable_nagle_algorithm = True  # headers and body go out in two writes; don't wait on the ACK
    server_version = "stockout-sync-sandbox"
    sys_version = ""
    timeout = 300  # an idle keep-alive connection ends eventually
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            self._send(json_reply({"code": "411", "message": "Content-Length required"}, 411))
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        request = Request(self.command, split.path, parse_params(split.query), self.headers, body)
        try:
            reply = self.server.sandbox.handle(request)
        except Exception as e:  # a sandbox bug must show as itself, not as a hung client
            traceback.print_exc()
            reply = json_reply({"code": "500", "message": f"sandbox error: {e!r}"}, 500)
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # 20+ clients connecting at once must not overflow the backlog
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End idle keep-alive connections, so a stopped sandbox really answers nothing more."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that gave up (read timeout during a "slow" fault) is expected, not an error
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def serve(config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0, *,
          public_url: str | None = None, stockouts: int = 0, bad: int = 0) -> None:
    """Run a sandbox in the foreground until SIGINT or SIGTERM, with `stockouts` generated at start."""
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    sandbox = Sandbox(config, host=host, port=port, public_url=public_url).start()
    try:
        if stockouts:
            sandbox.generate(stockouts, bad=bad)
        print(f"sandbox listening on {sandbox.url}  (control: {sandbox.url}{CONTROL_PREFIX})", flush=True)
        print("# fake credentials for the service's environment:", flush=True)
        for name, value in sandbox.env().items():
            print(f"{name}={value}", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# the same controls from another process


class SandboxControl(_Addresses):
    """Drive a running sandbox over HTTP: the Sandbox's test API for the demo and the bench."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()


    def _call(self, method: str, name: str, body: dict[str, Any] | None = None) -> Any:
        response = self._session.request(method, f"{self.url}{CONTROL_PREFIX}{name}", json=body,
                                         timeout=self.timeout)
        if response.status_code == 404:
            raise KeyError(response.json().get("error", name))
        if response.status_code == 400:
            raise ValueError(response.json().get("error", ""))
        response.raise_for_status()
        return response.json()

    def generate(self, count: int, bad: int = 0, start: TimeArg = None, end: TimeArg = None,
                 seed: int | None = None) -> list[dict[str, Any]]:
        body = {"count": count, "bad": bad, "start": _wire_arg(start), "end": _wire_arg(end), "seed": seed}
        return self._call("POST", "generate", body)["stockouts"]

    def add_stockouts(self, stockouts: list[dict[str, Any]]) -> int:
        return self._call("POST", "stockouts", {"stockouts": copy.deepcopy(stockouts)})["added"]

    def modify(self, stockout_id: str) -> dict[str, Any]:
        return self._call("POST", "modify", {"stockout_id": stockout_id})["stockout"]

    def records(self) -> list[dict[str, Any]]:
        return self._call("GET", "records")["records"]

    def delete_record(self, record_id: str, forget_key: bool = False) -> None:
        self._call("POST", "records/delete", {"id": record_id, "forget_key": forget_key})

    def duplicate_record(self, record_id: str) -> dict[str, Any]:
        return self._call("POST", "records/duplicate", {"id": record_id})["record"]

    def counters(self) -> dict[str, Any]:
        return self._call("GET", "counters")

    def set_faults(self, bip: dict[str, float] | None = None, wdt: dict[str, float] | None = None) -> None:
        self._call("POST", "faults", {"bip": bip or {}, "wdt": wdt or {}})

    def faults(self) -> dict[str, dict[str, float]]:
        return self._call("GET", "faults")["faults"]

    def revoke_tokens(self) -> None:
        self._call("POST", "revoke")

    def set_bip_list(self, ignore_filters: bool | None = None, omit_fields: bool | None = None) -> dict[str, bool]:
        return self._call("POST", "bip-list", {"ignore_filters": ignore_filters, "omit_fields": omit_fields})["list"]

    def set_rate_limits(self, bip_per_s: float | None = None, wdt_per_min: float | None = None,
                        window_s: float | None = None) -> None:
        self._call("POST", "rate-limits", {"bip_per_s": bip_per_s, "wdt_per_min": wdt_per_min, "window_s": window_s})

    def reset(self) -> None:
        self._call("POST", "reset")

    def statuses(self) -> dict[str, str]:
        """stockout_id → WDT status of every stockout the sandbox holds (a sandbox started with --stockouts)."""
        return self._call("GET", "statuses")["statuses"]

    @property
    def bad_ids(self) -> set[str]:
        return set(self._call("GET", "bad")["bad_ids"])

    @property
    def bad_reasons(self) -> dict[str, str]:
        return self._call("GET", "bad")["bad_reasons"]

    def config(self) -> SandboxConfig:
        return SandboxConfig(**self._call("GET", "config"))

    def env(self) -> dict[str, str]:
        return self._call("GET", "env")

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> SandboxControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
