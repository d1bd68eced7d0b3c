"""Every dead letter is made by `DeadLetter.new` (shared/deadletters/model.py): no other code of the
service, its tools or its benchmarks builds a DeadLetter or a HistoryEntry itself, so the host, the
times and the error's fields are filled one way (tests/unit/test_deadletter_model.py runs each maker).
Tests may build letters as they like: they make the records a situation needs."""
from __future__ import annotations

import ast

from tests.repo.test_layers import ROOT, sources

MODEL = "shared/deadletters/model.py"
BUILT = {"DeadLetter", "HistoryEntry"}


def builds(path) -> list[str]:
    """Where `path` calls DeadLetter(…) or HistoryEntry(…), or their model_construct (which checks nothing)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        called = node.func
        if isinstance(called, ast.Attribute) and called.attr == "model_construct":
            called = called.value
        if isinstance(called, ast.Name) and called.id in BUILT:
            found.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {called.id}(…)")
    return found


def test_the_scan_finds_the_one_constructor():
    assert builds(ROOT / MODEL), "the model builds its letters: a scan that finds nothing judges nothing"


def test_no_code_but_the_model_builds_a_letter():
    paths = [p for p in sources("shared", "producer", "worker", "ops", "sandbox", "bench")
             if p.relative_to(ROOT).as_posix() != MODEL]
    found = [where for p in paths for where in builds(p)]
    assert found == [], "a letter is made by DeadLetter.new, the one constructor:\n" + "\n".join(found)
