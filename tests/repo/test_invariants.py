"""Every invariant docs/design.md lists is held by at least one test marked `invariant(N)`."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_each_invariant_of_the_design_has_a_test_that_holds_it():
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    section = design.split("## Invariants", 1)[1].split("\n## ", 1)[0]
    listed = {int(n) for n in re.findall(r"^(\d+)\. ", section, flags=re.M)}
    assert listed == set(range(1, len(listed) + 1)) and len(listed) >= 11
    held: dict[int, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for n in re.findall(r"^@pytest\.mark\.invariant\((\d+)\)", path.read_text(encoding="utf-8"), flags=re.M):
            held.setdefault(int(n), []).append(path.name)
    assert not set(held) - listed, f"markers for invariants the design does not list: {set(held) - listed}"
    assert not listed - set(held), f"invariants no test holds: {sorted(listed - set(held))}"
