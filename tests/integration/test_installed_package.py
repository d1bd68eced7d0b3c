"""`pip install .` (a normal, non-editable install) into a fresh venv, then `stockout-sync demo` from a
directory that is not the checkout: the package must carry everything it needs (the demo's mapping is
package data). The venv borrows this one's dependencies through a .pth line, and the project is
installed with --no-deps from a copy of the sources, so the checkout is left untouched; only the build
backend (pyproject's build-system) comes from pip's index or its cache, as for any `pip install .`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.conftest import TEST_REDIS_URL

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_pip_install_then_demo_runs_from_the_installed_package(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("shared", "producer", "worker", "sandbox", "ops"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # This venv's packages as a plain path: its .pth files (the editable install of the checkout) are
    # not processed from there, so the checkout stays invisible to the new venv.
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    (tmp_path / "tmp").mkdir()
    # the build's temporary folders are this test's own (TMPDIR), so two runs at once never share one
    clean = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)),
             "REDIS_URL": TEST_REDIS_URL, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "LANG": "C.UTF-8",
             "TMPDIR": str(tmp_path / "tmp")}
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", str(source)],
                   env=clean, cwd=tmp_path, check=True, timeout=240)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [python, "-c", "import ops, ops.demo; print(ops.__file__); print(ops.demo.DEMO_MAPPING.is_file())"],
        env=clean, cwd=elsewhere, capture_output=True, text=True, check=True).stdout.split()
    assert where[0].startswith(str(site)), f"not the installed package: {where[0]}"
    assert where[1] == "True", "the demo mapping is not in the installed package"
    console_files = subprocess.run(
        [python, "-c", "from ops.console.web import HERE; print(all((HERE / f).is_file() for f in "
                       "('templates/base.html', 'templates/deadletters.html', 'static/htmx.min.js', "
                       "'static/console.css')))"],
        env=clean, cwd=elsewhere, capture_output=True, text=True, check=True).stdout.strip()
    assert console_files == "True", "the console's templates and static files are package data"

    demo = subprocess.run([env_dir / "bin" / "stockout-sync", "demo", "--stockouts", "150", "--bad", "3"],
                          env=clean, cwd=elsewhere, capture_output=True, text=True, timeout=240)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output[-4000:]
    assert "demo passed" in output
    assert os.listdir(elsewhere) == [], "the demo left files in the working directory"
    assert sys.executable != str(python)
