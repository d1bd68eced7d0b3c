"""用友BIP gateway discovery and the access token, shared by every worker on every machine: cached in
Redis, renewed by one process under a lock, kept in memory per process.
Why: docs/design.md, "The BIP token, shared through Redis"."""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis as redis_lib
import requests

from shared.bip import errors as codes
from shared.bip.errors import API, code_of
from shared.bip.sign import self_app_signature
from shared.core.errors import APIConnectionError, Kind, StockoutSyncError, make_error
from shared.core.http import request_json
from shared.core.settings import Settings
from shared.redis.keys import Keys
from shared.redis.lock import OwnedLock

log = logging.getLogger("stockout_sync.bip")

TOKEN_PATH = "/open-auth/selfAppAuth/base/v1/getAccessToken"
GATEWAY_CACHE_TTL_S = 86400
POLL_INTERVAL_S = 0.05

# compare-and-delete for JSON values {"token": ...}: only the token the caller saw is removed
_INVALIDATE = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, obj = pcall(cjson.decode, v)
if ok and type(obj) == 'table' and obj['token'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Endpoints:
    gateway_url: str
    token_url: str


class GatewayResolver:
    """The tenant's gateway and token addresses: from settings when both are given, else from the
    discovery service, cached in memory and in Redis for a day (discovery answers slowly and
    rarely changes; one worker's answer serves all)."""

    def __init__(self, settings: Settings, redis: redis_lib.Redis | None, session: requests.Session) -> None:
        self.settings = settings
        self.redis = redis
        self.session = session
        self.key = Keys(settings.redis_prefix).bip_gateway
        self._cached: Endpoints | None = None
        self._lock = threading.Lock()

    def get(self) -> Endpoints:
        if self._cached is not None:
            return self._cached
        with self._lock:
            if self._cached is None:
                self._cached = self._resolve()
            return self._cached

    def forget(self) -> None:
        self._cached = None
        if self.redis is not None:
            self.redis.delete(self.key)

    def _resolve(self) -> Endpoints:
        s = self.settings
        if s.bip_gateway_url and s.bip_token_url:
            return Endpoints(s.bip_gateway_url.rstrip("/"), s.bip_token_url.rstrip("/"))
        if self.redis is not None:
            raw = self.redis.get(self.key)
            if raw:
                try:
                    obj = json.loads(raw)
                    if obj.get("tenant") == s.bip_tenant_id:
                        return self._override(Endpoints(obj["gateway_url"], obj["token_url"]))
                except (ValueError, KeyError, TypeError, AttributeError):
                    pass  # unreadable cache: discover again
        reply = request_json(self.session, "GET", s.bip_discovery_url, api=API, failure_code=codes.failure_code,
                             params={"tenantId": s.bip_tenant_id})
        data = reply.data if isinstance(reply.data, dict) else {}
        inner: dict[str, Any] = data["data"] if isinstance(data.get("data"), dict) else {}
        gateway, token_url = inner.get("gatewayUrl"), inner.get("tokenUrl")
        if code_of(data) != "00000" or not gateway or not token_url:
            message = str(data.get("message") or "")
            # a wrong tenant is a configuration error, but a busy or failing discovery service is not
            kind = codes.kind_of(code_of(data))
            kind = kind if kind in (Kind.RATE_LIMITED, Kind.TRANSIENT) else Kind.CONFIG
            said = f"bip discovery {reply.url} failed (code={code_of(data) or '-'} {message})"
            if kind is Kind.CONFIG:
                said += (" — BIP discovery failed, configuration error: check BIP_TENANT_ID or set BIP_GATEWAY_URL"
                         " and BIP_TOKEN_URL")
            raise make_error(kind, said, api=API, code=code_of(data), api_message=message, http_status=reply.status)
        found = Endpoints(str(gateway).rstrip("/"), str(token_url).rstrip("/"))
        if self.redis is not None:
            self.redis.set(
                self.key,
                json.dumps({"tenant": s.bip_tenant_id, "gateway_url": found.gateway_url, "token_url": found.token_url}),
                ex=GATEWAY_CACHE_TTL_S,
            )
        return self._override(found)

    def _override(self, found: Endpoints) -> Endpoints:
        # one of the two addresses configured: it wins over what discovery said
        s = self.settings
        return Endpoints(
            (s.bip_gateway_url or found.gateway_url).rstrip("/"), (s.bip_token_url or found.token_url).rstrip("/")
        )


class TokenProvider:
    def __init__(
        self,
        settings: Settings,
        redis: redis_lib.Redis,
        session: requests.Session,
        *,
        resolver: GatewayResolver | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.session = session
        self.resolver = resolver or GatewayResolver(settings, redis, session)
        self.key = Keys(settings.redis_prefix).bip_token
        self.lock_key = Keys(settings.redis_prefix).bip_token_lock
        timeout = settings.http_connect_timeout_s + settings.http_read_timeout_s
        # the lock outlives the slowest token request, so two renewals never overlap
        self.lock_ttl_ms = int((timeout + 5) * 1000)
        self.wait_budget_s = timeout + 10
        self.requests_made = 0  # token requests this object sent (for tests and metrics)
        self._token: str | None = None
        self._deadline = 0.0  # time.monotonic() after which the memory copy is not trusted
        self._mutex = threading.Lock()
        self._invalidate = redis.register_script(_INVALIDATE)
        self._lock = OwnedLock(redis, self.lock_key)

    def __repr__(self) -> str:  # never the token
        return f"TokenProvider(app_key={self.settings.bip_app_key!r}, cached={self._token is not None})"

    def endpoints(self) -> Endpoints:
        return self.resolver.get()

    def get(self) -> str:
        """A token valid for at least the margin; renewed (by one process of all) when needed."""
        if self._token is not None and time.monotonic() < self._deadline:
            return self._token
        with self._mutex:  # the threads of one process wait for one answer together
            if self._token is not None and time.monotonic() < self._deadline:
                return self._token
            token = self._read_cached()
            return token if token is not None else self._renew()

    def invalidate(self, token: str) -> bool:
        """Forget `token` here and in Redis, unless Redis already holds a newer one."""
        with self._mutex:
            if self._token == token:
                self._token, self._deadline = None, 0.0
        return bool(self._invalidate(keys=[self.key], args=[token]))

    # internals ----------------------------------------------------------------------------------

    def _read_cached(self) -> str | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.key)
        pipe.pttl(self.key)
        raw, pttl = pipe.execute()
        if not raw or pttl is None or pttl <= 0:
            return None
        try:
            obj = json.loads(raw)
            token = obj["token"]
            # a token is only good at the gateway that issued it, for the app it was issued to
            if (
                obj.get("app_key") != self.settings.bip_app_key
                or obj.get("token_url") != self.endpoints().token_url
                or not isinstance(token, str)
                or not token
            ):
                return None
        except (ValueError, KeyError, TypeError):
            return None
        self._token, self._deadline = token, time.monotonic() + pttl / 1000.0
        return token

    def _renew(self) -> str:
        owner = uuid.uuid4().hex
        give_up = time.monotonic() + self.wait_budget_s
        while True:
            if self._lock.acquire(owner, self.lock_ttl_ms / 1000):
                try:
                    # someone may have renewed between our miss and our lock
                    token = self._read_cached()
                    return token if token is not None else self._fetch_and_store()
                finally:
                    # only if still ours: it may have expired and been taken by another process
                    self._lock.release(owner)
            time.sleep(POLL_INTERVAL_S)
            token = self._read_cached()
            if token is not None:
                return token
            if time.monotonic() > give_up:
                raise APIConnectionError(
                    "bip token: another process holds the renewal lock and no token appeared", api=API
                )

    def _fetch_and_store(self) -> str:
        token, expire_s = self.fetch()
        margin = self.settings.bip_token_margin_s
        # a lifetime shorter than twice the margin would leave no usable time: keep half of it
        ttl_s = expire_s - margin if expire_s - margin >= expire_s / 2 else expire_s / 2
        ttl_ms = max(1, int(ttl_s * 1000))
        value = json.dumps(
            {
                "token": token,
                "expires_at": time.time() + expire_s,
                "app_key": self.settings.bip_app_key,
                "token_url": self.endpoints().token_url,
            }
        )
        self.redis.set(self.key, value, px=ttl_ms)
        self._token, self._deadline = token, time.monotonic() + ttl_ms / 1000.0
        log.info("bip token renewed (valid %ss, cached %.0fs)", expire_s, ttl_ms / 1000)
        return token

    def fetch(self) -> tuple[str, float]:
        """One token request: (access_token, lifetime in seconds). Not cached; see `get`."""
        s = self.settings
        timestamp = str(int(time.time() * 1000))
        params = {
            "appKey": s.bip_app_key,
            "timestamp": timestamp,
            # raw Base64: requests URL-encodes it exactly once, as the gateway expects
            "signature": self_app_signature(s.bip_app_key, timestamp, s.bip_app_secret.get_secret_value()),
        }
        url = self.endpoints().token_url + TOKEN_PATH
        self.requests_made += 1
        reply = request_json(self.session, "GET", url, api=API, failure_code=codes.failure_code, params=params)
        data = reply.data if isinstance(reply.data, dict) else {}
        code = code_of(data)
        inner: dict[str, Any] = data["data"] if isinstance(data.get("data"), dict) else {}
        token = inner.get("access_token")
        if code == "00000" and isinstance(token, str) and token:
            try:
                expire = float(inner.get("expire") or 7200)
            except (TypeError, ValueError):
                expire = 7200.0
            return token, expire
        raise _token_error(code, str(data.get("message") or ""), reply.url, reply.status)


def _token_error(code: str, message: str, where: str, status: int) -> StockoutSyncError:
    kind = codes.token_kind(code, message)
    said = f"bip token request {where}: code={code or '-'} {message}".rstrip()
    if kind is Kind.TRANSIENT and "timestamp" in message.lower():
        said += " (check the host clock)"
    elif code == "00000":
        said += ": no access_token in the reply"
    return codes.error(kind, said, code=code, api_message=message, http_status=status,
                       retry_after=1.0 if kind is Kind.RATE_LIMITED else None)
