"""Who may use the console: users and roles from CONSOLE_USERS_FILE (`user:role:hash` lines, scrypt
hashes), the login rate limit (in Redis) and the CSRF token of a session. Why: docs/console.md."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import redis

from shared.redis.keys import Keys

Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
# scrypt's cost: 2^14 × 8 × 1 takes ~50 ms and 16 MiB, slow enough to make guessing a stolen file costly
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
LOGIN_WINDOW_S = 300
LOGIN_MAX_FAILURES = 5  # per user name and per client address within the window
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


class UsersFileError(ValueError):
    pass


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    password_hash: str

    @property
    def can_change(self) -> bool:
        return self.role == "operator"


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$salt$hash` (base64): the format of the users file's third field."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


# checked against when the user is unknown, so a wrong name costs as long as a wrong password
_DUMMY_HASH = hash_password("not a password", salt=b"0" * 16)


def load_users(path: Path) -> dict[str, User]:
    """The users file; an error names the file, the line and what is wrong (never the hash)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise UsersFileError(f"CONSOLE_USERS_FILE={str(path)!r}: cannot be read ({err.strerror or err})") from err
    users: dict[str, User] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        where = f"CONSOLE_USERS_FILE={str(path)!r} line {number}"
        if len(parts) != 3:
            raise UsersFileError(f"{where}: expected 'user:role:hash'")
        name, role, password_hash = parts
        if not name or not set(name) <= _NAME_OK:
            raise UsersFileError(f"{where}: user name {name!r} may hold letters, digits and . _ - @ only")
        if role not in ROLES:
            raise UsersFileError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        if not password_hash.startswith("scrypt$") or password_hash.count("$") != 5:
            raise UsersFileError(f"{where}: the password must be a hash made by `stockout-sync console hash-password`")
        if name in users:
            raise UsersFileError(f"{where}: user {name!r} appears twice")
        users[name] = User(name, role, password_hash)
    if not users:
        raise UsersFileError(f"CONSOLE_USERS_FILE={str(path)!r}: no users in it")
    return users


def authenticate(users: dict[str, User], name: str, password: str) -> User | None:
    user = users.get(name)
    ok = verify_password(password, user.password_hash if user else _DUMMY_HASH)
    return user if ok and user is not None else None


class LoginLimiter:
    """Failed logins counted per user name and per client address in Redis (shared by every console
    process); either one over LOGIN_MAX_FAILURES within LOGIN_WINDOW_S refuses further attempts."""

    def __init__(self, r: redis.Redis, prefix: str) -> None:
        self.r, self.p = r, prefix

    def _keys(self, name: str, client: str) -> list[str]:
        keys = Keys(self.p)
        return [keys.console_login_failures(f"user:{name}"), keys.console_login_failures(f"addr:{client}")]

    def blocked_for_s(self, name: str, client: str) -> int:
        """0 when attempts are allowed, else how long until they are again."""
        keys = self._keys(name, client)
        pipe = self.r.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.ttl(key)
        values = pipe.execute()
        waits = [max(1, int(ttl)) for count, ttl in zip(values[::2], values[1::2], strict=True)
                 if count is not None and int(count) >= LOGIN_MAX_FAILURES]
        return max(waits, default=0)

    def failed(self, name: str, client: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        for key in self._keys(name, client):
            pipe.incr(key)
            pipe.expire(key, LOGIN_WINDOW_S, nx=True)
        pipe.execute()

    def succeeded(self, name: str) -> None:
        self.r.delete(self._keys(name, "")[0])  # the address keeps its count: one client guessing many names


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(session_token: object, sent: object) -> bool:
    return (isinstance(session_token, str) and isinstance(sent, str) and bool(session_token)
            and hmac.compare_digest(session_token.encode(), sent.encode()))
