"""What the console's tests share: a users file, the app on the test Redis, logging in, letters."""
from __future__ import annotations

import re
from pathlib import Path

from starlette.testclient import TestClient

from ops.console.auth import hash_password, load_users
from shared.deadletters.model import DeadLetter

PASSWORDS = {"vera": "viewer-password-1", "otto": "operator-password-1"}
SECRET_KEY = "k" * 40
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def write_users(path: Path) -> Path:
    path.write_text(f"# test users\nvera:viewer:{hash_password(PASSWORDS['vera'])}\n"
                    f"otto:operator:{hash_password(PASSWORDS['otto'])}\n")
    return path


def make_app(rt, users_file: Path, **kw):
    from ops.console.app import create_app

    return create_app(rt, load_users(users_file), secret_key=SECRET_KEY,
                      gather_timeout_s=0.2, **kw)


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page carries a CSRF token"
    return found.group(1)


def login(client: TestClient, name: str, password: str | None = None):
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"user": name, "password": password or PASSWORDS[name], "csrf": token},
                       follow_redirects=False)


def letter(sid: str, *, stage: str = "transform", error_class: str = "MappingError", code: str = "",
           message: str = "warehouse WH9 is not in [warehouses]", at: str = "2026-11-29 10:00:00",
           **raw) -> DeadLetter:
    stockout = {"stockout_id": sid, "order_no": f"CK{sid}", "warehouse_no": "WH9", **raw}
    return DeadLetter(stockout_id=sid, order_no=str(stockout["order_no"]), stage=stage, error_class=error_class,
                      code=code, api="bip" if code else "", message=message, first_failed_at=at,
                      last_failed_at=at, stockout=stockout)
