"""The console's users file, password hashes and CSRF tokens (no Redis)."""
from __future__ import annotations

import pytest

from ops.console.auth import (
    LOGIN_MAX_FAILURES,
    LoginLimiter,
    UsersFileError,
    authenticate,
    csrf_ok,
    hash_password,
    load_users,
    verify_password,
)


def test_a_hash_verifies_its_password_only_and_never_holds_it():
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert verify_password("correct horse", stored)
    assert not verify_password("correct hors", stored)
    assert hash_password("correct horse") != stored, "a salt of its own each time"
    assert not verify_password("x", "scrypt$broken") and not verify_password("x", "plain:text")


def test_users_file_gives_users_and_roles(tmp_path):
    path = tmp_path / "users"
    path.write_text(f"# comment\n\nvera:viewer:{hash_password('pw-vera-1')}\n"
                    f"otto:operator:{hash_password('pw-otto-1')}\n")
    users = load_users(path)
    assert {u.name: (u.role, u.can_change) for u in users.values()} == {
        "vera": ("viewer", False), "otto": ("operator", True)}
    assert authenticate(users, "otto", "pw-otto-1") is users["otto"]
    assert authenticate(users, "otto", "pw-vera-1") is None
    assert authenticate(users, "nobody", "pw-otto-1") is None


@pytest.mark.parametrize(("line", "says"), [
    ("vera:viewer", "expected 'user:role:hash'"),
    ("vera:admin:scrypt$1$1$1$a$b", "role 'admin' is not one of viewer, operator"),
    ("vera:viewer:plaintext-password", "must be a hash made by `stockout-sync console hash-password`"),
    ("ve ra:viewer:scrypt$1$1$1$a$b", "user name 've ra'"),
])
def test_a_bad_users_file_names_the_line_and_the_fault_never_the_secret(tmp_path, line, says):
    path = tmp_path / "users"
    path.write_text(f"# first\n{line}\n")
    with pytest.raises(UsersFileError) as err:
        load_users(path)
    assert "line 2" in str(err.value) and says in str(err.value)
    assert "plaintext-password" not in str(err.value)


def test_a_missing_or_empty_users_file_is_an_error(tmp_path):
    with pytest.raises(UsersFileError, match="cannot be read"):
        load_users(tmp_path / "nope")
    (tmp_path / "empty").write_text("# nobody yet\n")
    with pytest.raises(UsersFileError, match="no users"):
        load_users(tmp_path / "empty")


def test_csrf_tokens_compare_whole():
    assert csrf_ok("abc", "abc")
    assert not csrf_ok("abc", "abd") and not csrf_ok("", "") and not csrf_ok(None, "abc") and not csrf_ok("abc", None)


def test_the_login_limit_counts_failures_per_name_and_per_address(fake_redis):
    limiter = LoginLimiter(fake_redis, "t")
    for _ in range(LOGIN_MAX_FAILURES):
        assert limiter.blocked_for_s("otto", "10.0.0.1") == 0
        limiter.failed("otto", "10.0.0.1")
    assert limiter.blocked_for_s("otto", "10.0.0.2") > 0, "the name is held from any address"
    assert limiter.blocked_for_s("vera", "10.0.0.1") > 0, "the address is held for any name"
    assert limiter.blocked_for_s("vera", "10.0.0.2") == 0
