"""The layers, read from the source: shared/ is the ground, producer/ and worker/ stand on it side by
side, ops/ (the CLI) is the only package above them. Every import statement counts, wherever it is
(TYPE_CHECKING blocks too: an annotation is a dependency as well)."""
from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("shared", "producer", "worker", "ops", "sandbox", "bench", "tests")

# Function-level imports of our own modules in shared/, producer/ and worker/ hide a dependency (or a
# cycle) from the module's head. The only ones allowed, each with its reason:
# (file, function, module) pairs allowed to import inside a function. None today: the metrics
# exporter's import of shared.core.metrics went with the monkeypatching it served (the rate limiter now
# reports to an observer).
ALLOWED_LOCAL_IMPORTS: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class Import:
    path: str  # relative to the repository, with forward slashes
    line: int
    module: str  # absolute dotted name
    function: str | None  # the enclosing function, None at module level (classes and ifs included)

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    def __str__(self) -> str:
        where = f" in {self.function}()" if self.function else ""
        return f"{self.path}:{self.line}{where} imports {self.module}"


def _package_of(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts if parts[-1] == "__init__" else parts[:-1]


def _resolve(node: ast.ImportFrom, path: Path) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        package = _package_of(path)
        package = package[: len(package) - (node.level - 1)] if node.level > 1 else package
        base = ".".join([*package, *([node.module] if node.module else [])])
    if node.module is None:  # `from . import x`: x is a module of the package
        return [f"{base}.{alias.name}" for alias in node.names]
    # `from shared.bip import lookup` imports the module shared.bip.lookup, not only the package
    modules = [f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}")]
    return modules or [base]


def _is_module(dotted: str) -> bool:
    where = ROOT.joinpath(*dotted.split("."))
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def imports_of(path: Path, text: str | None = None) -> list[Import]:
    source = path.read_text(encoding="utf-8") if text is None else text
    tree = ast.parse(source, filename=str(path))
    rel = path.relative_to(ROOT).as_posix()
    found: list[Import] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(rel, child.lineno, alias.name, function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.extend(Import(rel, child.lineno, module, function) for module in _resolve(child, path))
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            visit(child, inner)

    visit(tree, None)
    return [i for i in found if i.top in PROJECT]


def sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py") if ".venv" not in p.parts)


def all_imports(*packages: str) -> list[Import]:
    return [i for path in sources(*packages) for i in imports_of(path)]


def test_the_scan_sees_the_imports_it_judges():
    # a test that reads nothing would pass whatever the code does
    assert len(sources("shared")) >= 20 and len(sources("producer", "worker")) >= 5
    modules = {i.module for i in all_imports("worker")}
    assert {"shared.redis.state", "worker.transform"} <= modules
    assert {"shared.core.errors", "shared.redis.ratelimit"} <= {i.module for i in all_imports("shared")}


def test_shared_imports_only_shared():
    wrong = [str(i) for i in all_imports("shared") if i.top != "shared"]
    assert wrong == [], "shared/ is the ground layer:\n" + "\n".join(wrong)


# The ground's rooms, lowest first (docs/design.md, "Layers"): a room imports only rooms of a lower
# level; rooms of one level never import each other. `runtime` (shared/runtime.py) stands on them all.
GROUND_LEVELS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("redis", "mapping"),
    ("deadletters", "wdt", "bip"),
    ("queue",),
    ("observe",),
    ("runtime",),
)
LEVEL_OF = {room: n for n, rooms in enumerate(GROUND_LEVELS) for room in rooms}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_of_the_ground_is_in_a_room():
    loose = [p.relative_to(ROOT).as_posix() for p in (ROOT / "shared").glob("*.py")
             if p.name not in ("__init__.py", "runtime.py")]
    rooms = {p.name for p in (ROOT / "shared").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert loose == [], f"a module of shared/ belongs in one of its rooms {sorted(LEVEL_OF)}: {loose}"
    assert rooms == set(LEVEL_OF) - {"runtime"}, "a room was added or removed: place it in GROUND_LEVELS"


def test_the_ground_keeps_its_inner_order():
    wrong = []
    for i in all_imports("shared"):
        mine, theirs = _room(_module_of(ROOT / i.path)), _room(i.module)
        if not theirs or theirs == mine:
            continue
        if LEVEL_OF[theirs] >= LEVEL_OF[mine]:
            wrong.append(f"{i} ({mine} is on level {LEVEL_OF[mine]}, {theirs} on {LEVEL_OF[theirs]})")
    assert wrong == [], "a room imports only rooms below it:\n" + "\n".join(wrong)
    assert len(all_imports("shared")) > 100  # the rule judged real imports


@pytest.mark.parametrize(("package", "other"), [("producer", "worker"), ("worker", "producer")])
def test_producer_and_worker_never_import_each_other(package, other):
    wrong = [str(i) for i in all_imports(package) if i.top == other]
    assert wrong == [], f"{package}/ and {other}/ share only shared/:\n" + "\n".join(wrong)


def test_only_ops_tests_and_bench_import_ops():
    wrong = [str(i) for i in all_imports("shared", "producer", "worker", "sandbox") if i.top == "ops"]
    assert wrong == [], "ops/ is the top layer:\n" + "\n".join(wrong)


def test_no_function_level_imports_of_our_own_modules():
    local = [i for i in all_imports("shared", "producer", "worker") if i.function is not None]
    unexplained = [str(i) for i in local if (i.path, i.function, i.module) not in ALLOWED_LOCAL_IMPORTS]
    assert unexplained == [], "import at the module's head (or explain the exception here):\n" + "\n".join(unexplained)
    stale = ALLOWED_LOCAL_IMPORTS - {(i.path, i.function, i.module) for i in local}
    assert not stale, f"allowed exceptions that no longer exist, remove them: {stale}"


def test_the_sandbox_leans_on_shared_only():
    # it stands in for the remote systems: it may share their signing with the clients, nothing more
    wrong = [str(i) for i in all_imports("sandbox") if i.top not in ("sandbox", "shared")]
    assert wrong == [], "sandbox/ imports only itself and shared/:\n" + "\n".join(wrong)


def _module_of(path: Path) -> str:
    return ".".join(_package_of(path) if path.name == "__init__.py" else path.relative_to(ROOT).with_suffix("").parts)


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk, each once (as first met)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the walk's path, 2: done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)
    return cycles


def test_no_import_cycles_anywhere():
    packages = ("shared", "producer", "worker", "ops", "sandbox")
    edges: dict[str, set[str]] = {}
    for path in sources(*packages):
        me = _module_of(path)
        # a module's import of its own package's __init__ is how Python loads it anyway: not an arrow
        edges[me] = {i.module for i in imports_of(path) if i.module != me and not me.startswith(i.module + ".")}
    assert len(edges) >= 60 and "sandbox.server" in edges
    cycles = import_cycles(edges)
    assert cycles == [], "modules that import each other (annotations count):\n" + "\n".join(map(" → ".join, cycles))


def test_the_cycle_walk_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import worker.tasks", [("worker.tasks", None)]),
        ("from producer.poll import x", [("producer.poll", None)]),
        ("from . import paging", [("shared.wdt.paging", None)]),
        ("from ..errors import X", [("shared.errors", None)]),
        ("import json\ndef f():\n    from ops import render", [("ops.render", "f")]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import sandbox", [("sandbox", None)]),
        ("class C:\n    def m(self):\n        import shared.redis.state", [("shared.redis.state", "m")]),
    ],
)
def test_the_scan_reads_every_form_of_import(source, expected):
    probe = ROOT / "shared" / "wdt" / "probe.py"  # never read: the source is given
    assert [(i.module, i.function) for i in imports_of(probe, source)] == expected


def test_loading_every_module_makes_no_counter_before_a_process_starts_its_metrics_exporter():
    # prometheus_client's multiprocess mode must be set up before a counter is made; instruments are
    # made on first use, so `worker` and `beat` may load anything first (no import order is a rule)
    probe = ("import importlib, pkgutil, ops, producer, worker, shared\n"
             "for pkg in (ops, producer, worker, shared):\n"
             "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
             "        if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
             "from shared.core import metrics\n"
             "print(len(metrics._declared), metrics.made() or 'none')")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    declared, made = done.stdout.split()
    assert done.returncode == 0 and int(declared) > 10, done.stderr
    assert made == "none", f"counted at import: {made}"
