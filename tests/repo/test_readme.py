"""The README a newcomer reads: short, its two commands on top, its configuration table complete."""
from __future__ import annotations

import re
from pathlib import Path

from shared.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# read by a command itself, not through Settings: `flower` hands FLOWER_* to Flower
NOT_SETTINGS = {"FLOWER_DB"}


def test_the_readme_is_read_in_five_minutes_and_starts_with_the_two_commands():
    lines = README.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move detail to docs/"
    top = "\n".join(lines[:20])
    assert "make demo" in top and "make test" in top


def test_the_configuration_table_names_every_setting_and_only_settings():
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    named = set()
    for row in re.findall(r"^\| ([^|]+) \|", section, flags=re.M):
        named |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", row))
    settings = {name.upper() for name in Settings.model_fields}
    assert not settings - named, f"settings the README's table does not name: {sorted(settings - named)}"
    assert not named - settings - NOT_SETTINGS, f"rows naming no setting: {sorted(named - settings - NOT_SETTINGS)}"


def test_every_link_of_the_readme_and_the_docs_leads_somewhere():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert not broken, "\n".join(broken)
