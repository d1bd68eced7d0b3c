"""What the console's routes stand on: the login guard in front of every one, security headers, the
CSRF check and role of a change, rendering, and the status snapshot refreshed in the background."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ops.console.audit import AuditTrail
from ops.console.auth import User, csrf_ok, new_csrf_token
from ops.console.bulk import Operations
from ops.console.letters import LetterIndex
from ops.status import Status, gather
from shared.deadletters.store import DeadLetterStore
from shared.runtime import Runtime

HERE = Path(__file__).parent
SESSION_MAX_AGE_S = 8 * 3600
PUBLIC_PATHS = ("/login",)
PUBLIC_PREFIXES = ("/static/",)
# No inline script or style anywhere: what WDT wrote can never run, even if something were left unescaped.
SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"same-origin",
    b"cache-control": b"no-store",
}


class StatusCache:
    """`ops.status.gather` (one call, the same snapshot `stockout-sync status` prints), read again in
    a thread of its own when a page finds it older than refresh_s: a page never waits for the workers'
    broadcast (but the very first), and nobody looking costs nothing."""

    def __init__(self, rt: Runtime, refresh_s: float, gather_timeout_s: float = 1.0) -> None:
        self.rt, self.refresh_s, self.gather_timeout_s = rt, refresh_s, gather_timeout_s
        self._value: Status | None = None
        self._at = 0.0
        self._lock = threading.Lock()
        self._reading = threading.Lock()  # one read at a time

    def refresh(self) -> Status:
        with self._reading:
            value = gather(self.rt, timeout_s=self.gather_timeout_s)
            with self._lock:
                self._value, self._at = value, time.monotonic()
        return value

    def _refresh_quietly(self) -> None:
        with contextlib.suppress(Exception):  # tried again by the next page; the page says how old it is
            self.refresh()

    def get(self) -> Status:
        with self._lock:
            value, age = self._value, time.monotonic() - self._at
        if value is None:
            return self.refresh()
        if age >= self.refresh_s and not self._reading.locked():
            threading.Thread(target=self._refresh_quietly, name="console-status", daemon=True).start()
        return value

    @property
    def age_s(self) -> float:
        return round(time.monotonic() - self._at, 1)


class Console:
    """What every route needs: the runtime, the users, the audit trail, running operations, the snapshot."""

    def __init__(self, rt: Runtime, users: dict[str, User], *, refresh_s: float, gather_timeout_s: float) -> None:
        self.rt = rt
        self.users = users
        self.prefix = rt.settings.redis_prefix
        self.audit = AuditTrail(rt.redis, self.prefix)
        self.operations = Operations(self.audit)
        self.status = StatusCache(rt, refresh_s, gather_timeout_s)
        self.letters = LetterIndex(DeadLetterStore(rt.redis, self.prefix))
        self.refresh_s = refresh_s
        env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
        self.templates = Jinja2Templates(env=env)


class RequireLogin:
    """Every route but the login page and the static files needs a session of a user the users file
    still lists; the user (with the role the file gives now) is put on `request.state.user`."""

    def __init__(self, app: ASGIApp, users: dict[str, User]) -> None:
        self.app, self.users = app, users

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        name = scope.get("session", {}).get("user")
        user = self.users.get(name) if isinstance(name, str) else None
        if user is None:
            await refusal(Request(scope), path)(scope, receive, send)
            return
        scope.setdefault("state", {})["user"] = user
        await self.app(scope, receive, send)


def refusal(request: Request, path: str) -> Response:
    if path.startswith("/api/"):
        return JSONResponse({"error": "log in first: POST /login"}, status_code=401)
    if request.headers.get("hx-request"):  # an htmx refresh after the session ended: the whole page goes to login
        return Response(status_code=401, headers={"HX-Redirect": "/login"})
    return RedirectResponse("/login", status_code=303)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS.items()]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


Handler = Callable[[Request, FormData], Awaitable[Response]]


def change(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A route that changes something: the session's CSRF token must come with the form (or as
    X-CSRF-Token), and the user must be an operator."""

    async def checked(request: Request) -> Response:
        form = await request.form()
        sent = form.get("csrf") or request.headers.get("x-csrf-token")
        if not csrf_ok(request.session.get("csrf"), sent):
            return problem(request, 403, "this form is out of date (its CSRF token does not match your session): "
                                         "reload the page and try again")
        user: User = request.state.user
        if not user.can_change:
            return problem(request, 403, f"{user.name} is a viewer: only an operator may change anything")
        return await handler(request, form)

    checked.__name__ = handler.__name__
    checked.__doc__ = handler.__doc__
    return checked


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str) or not token:
        token = request.session["csrf"] = new_csrf_token()
    return token


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    console = console_of(request)
    user = getattr(request.state, "user", None)
    return console.templates.TemplateResponse(
        request, template, {"user": user, "csrf": csrf_token(request), "refresh_s": console.refresh_s, **context},
        status_code=status_code)


def problem(request: Request, status_code: int, message: str) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status_code)
    if getattr(request.state, "user", None) is None:
        return HTMLResponse(f"<p>{_escape(message)}</p>", status_code=status_code)
    return render(request, "problem.html", status_code, message=message)


def _escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))
