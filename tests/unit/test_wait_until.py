"""`wait_until` with a progress measure: it waits while the work moves and fails when it stalls."""
from __future__ import annotations

import itertools
import time

import pytest

from ops.processes import wait_until


def test_keeps_waiting_past_the_stall_window_while_progress_moves():
    ticks = itertools.count()
    started = time.monotonic()
    # done after ~0.6 s, three times the stall window: each poll shows progress, so it never stalls
    assert wait_until(lambda: time.monotonic() - started > 0.6, interval=0.02, progress=lambda: next(ticks),
                      stall=0.2) is True


def test_fails_after_the_stall_window_and_names_the_last_progress():
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no progress for 0\.2 s .* waiting for saves; last progress: \(3, 'q'\)"):
        wait_until(lambda: False, interval=0.02, message="saves", progress=lambda: (3, "q"), stall=0.2)
    assert 0.2 <= time.monotonic() - started < 2


def test_the_absolute_cap_holds_even_while_progress_moves():
    ticks = itertools.count()
    with pytest.raises(TimeoutError, match=r"timed out after 0\.3 s waiting for forever; last progress: "):
        wait_until(lambda: False, 0.3, interval=0.02, message="forever", progress=lambda: next(ticks), stall=10)


def test_without_progress_a_fixed_timeout():
    with pytest.raises(TimeoutError, match=r"timed out after 0\.1 s waiting for condition$"):
        wait_until(lambda: 0, 0.1, interval=0.02)
    assert wait_until(lambda: "value", 1) == "value"
