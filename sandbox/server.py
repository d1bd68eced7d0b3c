"""The sandbox process: one HTTP server in front of the fake WDT and BIP, plus `/_sandbox/` control
endpoints so another process (demo, bench) can drive it as the tests drive it in-process.
"""
from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ConfigDict, ValidationError, validate_call

from shared.core.timeutil import parse_wire
from shared.core.validation import describe

from .bip import BipApi
from .config import SandboxConfig
from .control import CONTROL_PREFIX, ROUTES, Controls, listing
from .data import generate_stockouts
from .faults import Counters, Faults, RateLimit, Reply, Request, json_reply, parse_params
from .wdt import WDT_PATH, WdtApi

FIRST_STOCKOUT_ID = 1_000_001
# "yes" is not a bool, "12" not a count: a control takes what JSON carries, as the real APIs would
_STRICT = ConfigDict(strict=True)


class Sandbox(Controls):
    """Both remote APIs on one loopback port. Start it, point the clients at `env()`, drive it with
    the controls (`Controls`), in process or from another through `SandboxControl`."""

    def __init__(self, config: SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 public_url: str | None = None) -> None:
        self.config = (config or SandboxConfig()).model_copy()
        self._host, self._port, self._public_url = host, port, public_url
        self._counters = Counters()
        self._faults = Faults(self.config.fault_seed, self._counters)
        self._wdt_limit, self._bip_limit = RateLimit(), RateLimit()
        self.wdt = WdtApi(self.config, self._counters, self._faults, self._wdt_limit)
        self.bip = BipApi(self.config, self._counters, self._faults, self._bip_limit, base_url=lambda: self.url)
        self._routes: dict[tuple[str, str], Callable[[Request], Reply]] = {
            **self.bip.routes(), ("GET", WDT_PATH): self.wdt.handle, ("POST", WDT_PATH): self.wdt.handle,
        }
        # every control checked as the HTTP endpoint checks it: a bad argument names itself
        self._controls: dict[str, Callable[..., Any]] = {
            name: validate_call(config=_STRICT)(getattr(self, f"_do_{name}")) for name in ROUTES}
        self._control_paths = {(method, CONTROL_PREFIX + path): name for name, (method, path) in ROUTES.items()}
        self._lock = threading.Lock()
        self._next_id = FIRST_STOCKOUT_ID
        self._generate_calls = 0
        self._bad_reasons: dict[str, str] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._default_rate_limits()

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
        if isinstance(host, bytes):
            host = host.decode()
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{port}"

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
        if request.method == "GET" and request.path in (CONTROL_PREFIX, CONTROL_PREFIX.rstrip("/")):
            return json_reply(listing({name: getattr(self, f"_do_{name}") for name in ROUTES}))
        name = self._control_paths.get((request.method, request.path))
        if name is None:
            return json_reply({"error": f"no control endpoint {request.method} {request.path}"}, 404)
        try:
            args = request.json() if request.body else {}
            if not isinstance(args, dict):
                raise ValueError("the body must be a JSON object")
            return json_reply(self._control(name, args))
        except KeyError as e:
            return json_reply({"error": str(e.args[0]) if e.args else "not found"}, 404)
        except (ValueError, TypeError) as e:
            return json_reply({"error": str(e)}, 400)

    def _control(self, name: str, args: dict[str, Any]) -> Any:
        try:
            return self._controls[name](**args)
        except ValidationError as e:  # "count: input should be a valid integer, got 'x'", not pydantic's page
            raise ValueError("; ".join(
                describe(err, ".".join(map(str, err["loc"])) or name,
                         None if err["type"].startswith("missing") else repr(err.get("input")))
                for err in e.errors())) from None

    # ---- the controls, carried out (argument names and types are their wire form)

    def _do_generate(self, count: int, bad: int = 0, start: str | None = None, end: str | None = None,
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

    def _do_add_stockouts(self, stockouts: list[dict[str, Any]]) -> int:
        added = self.wdt.add(stockouts)
        numeric = [int(s["stockout_id"]) for s in stockouts if str(s["stockout_id"]).isdigit()]
        if numeric:
            with self._lock:
                self._next_id = max(self._next_id, max(numeric) + 1)
        return added

    def _do_add_raw_stockouts(self, rows: list[str]) -> int:
        return self.wdt.add_raw(rows)

    def _do_modify(self, stockout_id: str) -> dict[str, Any]:
        return self.wdt.modify(stockout_id)

    def _do_statuses(self) -> dict[str, str]:
        return self.wdt.statuses()

    def _do_bad(self) -> dict[str, str]:
        with self._lock:
            return dict(self._bad_reasons)

    def _do_records(self) -> list[dict[str, Any]]:
        return self.bip.records()

    def _do_delete_record(self, record_id: str, forget_key: bool = False) -> dict[str, str]:
        self.bip.delete_record(record_id, forget_key=forget_key)
        return {"deleted": record_id}

    def _do_duplicate_record(self, record_id: str) -> dict[str, Any]:
        return self.bip.duplicate_record(record_id)

    def _do_add_record(self, code: str, define1: str | None = None, vouchdate: str | None = None) -> dict[str, Any]:
        return self.bip.add_record(code, define1=define1, vouchdate=vouchdate)

    def _do_set_key_memory(self, seconds: float | None = None) -> dict[str, float | None]:
        return {"seconds": self.bip.set_key_memory(seconds)}

    def _do_forget_keys(self) -> dict[str, int]:
        return {"forgotten": self.bip.forget_keys()}

    def _do_revoke_tokens(self) -> dict[str, bool]:
        self.bip.revoke()
        return {"ok": True}

    def _do_set_bip_list(self, ignore_filters: bool | None = None, omit_fields: bool | None = None) -> dict[str, bool]:
        return self.bip.set_list_mode(ignore_filters, omit_fields)

    def _do_set_wdt_lookup(self, needs_window: bool) -> dict[str, bool]:
        self.wdt.lookup_needs_window = needs_window
        return {"needs_window": needs_window}

    def _do_set_faults(self, bip: dict[str, float] | None = None,
                       wdt: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
        self._faults.set(bip=bip, wdt=wdt)
        return self._faults.settings()

    def _do_faults(self) -> dict[str, dict[str, float]]:
        return self._faults.settings()

    def _do_set_rate_limits(self, bip_per_s: float | None = None, wdt_per_min: float | None = None,
                            window_s: float | None = None) -> dict[str, bool]:
        self._bip_limit.set(bip_per_s, burst=bip_per_s, window_s=window_s)
        self._wdt_limit.set(wdt_per_min / 60.0 if wdt_per_min else None, burst=wdt_per_min, window_s=window_s)
        return {"ok": True}

    def _do_set_latency(self, wdt_ms: float | None = None, bip_ms: float | None = None) -> dict[str, float]:
        for name, value in (("wdt_ms", wdt_ms), ("bip_ms", bip_ms)):
            if value is not None and not 0 <= value <= 60_000:
                raise ValueError(f"{name}: milliseconds from 0 to 60000, got {value!r}")
        if wdt_ms is not None:
            self.config.wdt_latency_ms = wdt_ms
        if bip_ms is not None:
            self.config.bip_latency_ms = bip_ms
        return {"wdt_ms": self.config.wdt_latency_ms, "bip_ms": self.config.bip_latency_ms}

    def _default_rate_limits(self) -> None:
        self._do_set_rate_limits(self.config.bip_rate_per_s, self.config.wdt_rate_per_min, self.config.rate_window_s)

    def _do_counters(self) -> dict[str, Any]:
        return {**self._counters.snapshot(), "duplicate_stockouts": self.bip.duplicate_stockouts()}

    def _do_reset(self) -> dict[str, bool]:
        self.wdt.clear()
        self.bip.clear()
        self._counters.reset()
        self._faults.set()
        self._default_rate_limits()
        self.bip.set_list_mode(self.config.bip_list_ignores_filters, self.config.bip_list_omits_fields)
        self.bip.set_key_memory(self.config.bip_key_memory_s)
        self.wdt.lookup_needs_window = self.config.wdt_lookup_needs_window
        with self._lock:
            self._bad_reasons.clear()
        return {"ok": True}

    def _do_state(self) -> dict[str, Any]:
        with self._lock:
            bad = dict(self._bad_reasons)
        return {"stockouts": self.wdt.stockouts(), "records": self.bip.records(), "bad": bad}

    def _do_load_state(self, stockouts: list[dict[str, Any]], records: list[dict[str, Any]],
                       bad: dict[str, str] | None = None) -> dict[str, int]:
        added = self._do_add_stockouts(stockouts) if stockouts else 0
        restored = self.bip.restore(records)
        with self._lock:
            self._bad_reasons.update(bad or {})
        return {"stockouts": added, "records": restored}

    def _do_config(self) -> dict[str, Any]:
        return self.config.model_dump()

    def _do_env(self) -> dict[str, str]:
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


def _time_arg(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_wire(value)
    except ValueError:
        raise ValueError(f"{name} must be 'yyyy-MM-dd HH:mm:ss' (Beijing), got {value!r}") from None


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
          public_url: str | None = None, stockouts: int = 0, bad: int = 0, state_file: Path | None = None) -> None:
    """Run a sandbox in the foreground until SIGINT or SIGTERM, with `stockouts` generated at start.
    `state_file`: loaded at start when it exists, written back at the end (its data across restarts)."""
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    sandbox = Sandbox(config, host=host, port=port, public_url=public_url).start()
    try:
        if state_file is not None and state_file.exists():
            loaded = sandbox.load_state(**json.loads(state_file.read_text(encoding="utf-8")))
            print(f"loaded {loaded['stockouts']} stockouts and {loaded['records']} BIP records from {state_file}",
                  flush=True)
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
        if state_file is not None:
            state_file.write_text(json.dumps(sandbox.state(), ensure_ascii=False), encoding="utf-8")
        sandbox.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
