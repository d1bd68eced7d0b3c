"""The real `stockout-sync` command, run as a process the way an operator runs it (no CliRunner)."""
from __future__ import annotations

import subprocess
import sys
from typing import Any

# Generous: a command starting on a busy 2-core machine takes seconds to import the service.
TIMEOUT_S = 120


def command(*args: str) -> list[str]:
    """The argv of `stockout-sync *args`, for subprocess.Popen."""
    return [sys.executable, "-m", "ops.cli", *args]


def cli(env: dict[str, str], *args: str, timeout: float = TIMEOUT_S, **kw: Any) -> subprocess.CompletedProcess:
    """Run `stockout-sync *args` to its end with `env`; stdout and stderr captured as text (piped, not a TTY)."""
    return subprocess.run(command(*args), env=env, capture_output=True, text=True, timeout=timeout, **kw)


def cli_all(env: dict[str, str], *argvs: list[str], timeout: float = TIMEOUT_S) -> list[subprocess.CompletedProcess]:
    """Run several commands at once and wait for them all."""
    procs = [subprocess.Popen(command(*argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv in argvs]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outputs, strict=True)]
