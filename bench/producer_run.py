"""The producer alone, in a process of its own: `python -m bench.producer_run SINCE UNTIL`.

Runs the same backfill as `stockout-sync backfill` (configuration from the environment) and prints
one JSON line: what it published, how long it took, how much of that was spent waiting for WDT's
answers, and the process's peak RSS.
"""
from __future__ import annotations

import json
import resource
import sys
import time


def main(since: str, until: str) -> None:
    from producer.poll import backfill
    from shared.core.timeutil import parse_wire
    from shared.queue.publisher import publish_stockout
    from shared.runtime import runtime

    rt = runtime()
    waited = [0.0]
    session = rt.wdt.session
    send = session.request

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return send(*args, **kwargs)
        finally:
            waited[0] += time.perf_counter() - started

    session.request = timed  # the time the gateway takes to answer is the sandbox's, not ours
    started = time.perf_counter()
    summary = backfill(rt, publish_stockout, parse_wire(since), parse_wire(until))
    elapsed = time.perf_counter() - started
    print(json.dumps({
        "published": summary.published,
        "fetched": summary.fetched,
        "pages": summary.pages,
        "seconds": elapsed,
        "wdt_wait_s": waited[0],
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
