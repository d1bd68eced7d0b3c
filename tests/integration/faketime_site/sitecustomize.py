"""Put on PYTHONPATH only for a process the clock tests run under libfaketime. libfaketime 0.9.10 with
FAKETIME_DONT_FAKE_MONOTONIC=1 refuses the absolute monotonic clock_nanosleep that `time.sleep` makes
(EINVAL), while condition waits, select and poll work: so a sleep waits on an Event. The clock the
process reads is libfaketime's, untouched."""
import threading
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(seconds)


time.sleep = _sleep
