"""A process whose wall clock libfaketime shifts (LD_PRELOAD), the host's clock untouched: the skewed-clock
tests, and a test that must reach a time of day without waiting for it."""
from __future__ import annotations

from pathlib import Path

from tests.prerequisites import prerequisite

ROOT = Path(__file__).resolve().parents[2]
LIBFAKETIME = next((str(p) for p in [ROOT / ".venv" / "lib" / "libfaketime.so.1",
                                     *Path("/usr/lib").glob("*/faketime/libfaketime.so.1")] if p.exists()), None)
needs_faketime = prerequisite(LIBFAKETIME is not None, "libfaketime not found (`make test` fetches it with apt)")

SITE = Path(__file__).resolve().parent / "faketime_site"  # its sitecustomize mends time.sleep under libfaketime


def shifted(offset: str) -> dict[str, str]:
    """The environment of a process whose clock reads `offset` (e.g. -15m, +42) from the real one; its
    monotonic clock is real."""
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "PYTHONPATH": str(SITE)}
