"""Every Redis key is spelled in shared/redis/keys.py and nowhere else, and docs/redis-keys.md is its table."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

from shared.redis.keys import Keys

ROOT = Path(__file__).resolve().parents[2]
FIXED = [name for name, value in inspect.getmembers(Keys, lambda v: isinstance(v, property))]


def test_every_key_of_the_service_is_spelled_in_keys_py_only():
    # a key is a prefix placeholder followed by ':' — in code, docstrings and comments alike
    spelled = re.compile(r"\{(?:[\w.]*prefix[\w.()]*|self\.p|p)\}:")
    found = []
    for package in ("shared", "producer", "worker", "ops", "sandbox"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "shared" / "redis" / "keys.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if spelled.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "keys built outside shared/redis/keys.py:\n" + "\n".join(found)


def test_the_documented_key_table_is_the_layout_keys_builds():
    doc = (ROOT / "docs" / "redis-keys.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", doc, flags=re.M))
    methods = {name for name, _ in inspect.getmembers(Keys, inspect.isfunction) if not name.startswith("_")}
    assert rows == set(FIXED) | methods
