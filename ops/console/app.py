"""The console's web application (`create_app`): the pages of ops/console/pages.py behind the
session, the login guard and the security headers of ops/console/web.py."""
from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware

from ops.console.auth import User
from ops.console.pages import routes
from ops.console.web import SESSION_MAX_AGE_S, Console, RequireLogin, SecurityHeaders
from shared.runtime import Runtime


def create_app(rt: Runtime, users: dict[str, User], *, secret_key: str, refresh_s: float = 5.0,
               https_only: bool = False, gather_timeout_s: float = 1.0) -> Starlette:
    console = Console(rt, users, refresh_s=refresh_s, gather_timeout_s=gather_timeout_s)

    app = Starlette(
        routes=routes(),
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(SessionMiddleware, secret_key=secret_key, session_cookie="sos_console",
                       max_age=SESSION_MAX_AGE_S, same_site="strict", https_only=https_only),
            Middleware(RequireLogin, users=users),
        ],
    )
    app.state.console = console
    return app
