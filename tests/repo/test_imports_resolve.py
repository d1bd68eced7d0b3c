"""Every `from <our module> import <name>` anywhere in the project names something that exists, the
ones inside functions too: bench/ and tests/ are not type-checked, and a renamed function once left a
benchmark failing with an ImportError only when its figure ran."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = ("shared", "producer", "worker", "ops", "sandbox", "bench")
SCANNED = (*OURS, "tests")


def imported_names() -> list[tuple[str, int, str, str]]:
    """(file, line, module, name) for every absolute from-import of our packages."""
    found = []
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in OURS:
                    rel = path.relative_to(ROOT).as_posix()
                    found.extend((rel, node.lineno, node.module, alias.name) for alias in node.names)
    return found


def test_the_scan_sees_function_level_imports_in_bench():
    names = imported_names()
    assert len(names) > 300
    assert any(f.startswith("bench/") and m == "shared.queue.publisher" for f, _, m, _ in names)


def test_every_imported_name_exists():
    missing = []
    for rel, line, module, name in imported_names():
        try:
            target = importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{rel}:{line}: {module}: {e}")
            continue
        if name != "*" and not hasattr(target, name):
            try:
                importlib.import_module(f"{module}.{name}")  # a submodule
            except ImportError:
                missing.append(f"{rel}:{line}: from {module} import {name}")
    assert missing == [], "\n".join(missing)
