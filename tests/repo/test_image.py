"""The image is reproducible: the Dockerfile installs the locked dependencies, hash-checked, in a layer
before any source is copied; the lock agrees with pyproject (offline: no resolver, no index)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name not in ("tests", "bench"))


def dockerfile_lines() -> list[str]:
    return [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def locked() -> dict[str, tuple[str, int]]:
    """name → (version, number of hashes) of every package pinned in requirements.lock."""
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=\S)", LOCK.read_text()):
        match = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;\\]+)", block)
        if match:
            pins[canonicalize_name(match.group(1))] = (match.group(2), block.count("--hash=sha256:"))
    return pins


def test_dependencies_are_installed_from_the_lock_before_the_sources_are_copied():
    lines = dockerfile_lines()
    install = next(i for i, line in enumerate(lines) if line.startswith("RUN") and "-r requirements.lock" in line)
    assert "--require-hashes" in lines[install]
    assert lines.index("COPY requirements.lock ./") < install
    copies = [i for i, line in enumerate(lines) if line.startswith("COPY") and "requirements.lock" not in line]
    assert copies and min(copies) > install, "source copied before the dependency layer: every edit reinstalls"
    for package in PACKAGES:
        assert f"COPY {package} ./{package}" in lines, f"the image lacks the {package} package"
    project = next(line for line in lines if line.startswith("RUN") and "install" in line and " ." in line)
    assert "--no-deps" in project and "--no-build-isolation" in project, "the project install must not resolve"


def test_base_image_is_pinned_to_an_exact_version_or_digest():
    base = next(line for line in dockerfile_lines() if line.startswith("FROM")).split()[1]
    assert "@sha256:" in base or re.search(r":\d+\.\d+\.\d+-", base), base


def test_the_lock_pins_every_dependency_of_pyproject_with_hashes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [Requirement(r) for r in project["project"]["dependencies"]]
    wanted += [Requirement(line) for line in (ROOT / "requirements-build.in").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    pins = locked()
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is in pyproject but not in requirements.lock: run `make lock`"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside pyproject's {requirement}: run `make lock`")
    assert all(hashes for _, hashes in pins.values()), "every locked package carries its hashes"
    # celery[redis] needs the redis client: the extra's packages are locked too
    assert "redis" in pins and "kombu" in pins


def test_the_lock_says_how_it_was_made_as_the_makefile_makes_it():
    command = re.search(r"#\s+(uv pip compile .*)", LOCK.read_text()).group(1).split()
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    target = re.search(r"\nlock:.*\n\t(.*)", makefile).group(1).split()
    assert command == [w.replace("$(VENV)/bin/", "") for w in target]


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build_context():
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "ignore everything, then let in what the Dockerfile copies"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert {".env", "sync.env", "mapping.toml", ".venv", ".git"}.isdisjoint(allowed)
    copied = {line.split()[1] for line in dockerfile_lines() if line.startswith("COPY")}
    assert copied <= allowed, f"the Dockerfile copies what .dockerignore leaves out: {copied - allowed}"
