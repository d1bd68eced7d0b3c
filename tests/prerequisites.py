"""A test that needs a tool this machine may lack (openssl, promtool, the team's Compose schema) is
skipped where it is missing — but not in CI (`CI=true`), where the invariant it holds must be checked:
there a missing prerequisite fails the test, naming what to install."""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def prerequisite(available: bool, reason: str) -> Callable[[Callable[..., Any]], Any]:
    if available:
        return lambda test: test
    if not IN_CI:
        return pytest.mark.skip(reason=reason)

    def failing(test: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(test)  # keeps the signature, so pytest still hands it its fixtures
        def run(*args: Any, **kwargs: Any) -> None:
            pytest.fail(f"{reason}; CI=true, so a missing prerequisite fails instead of skipping")

        return run

    return failing
