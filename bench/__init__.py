"""`make bench`: the throughput figures of issue 6, measured against the sandbox and a real Redis.

Each figure is a ratio measured within one run (a shared 2-core machine drifts too much for
absolute times to mean anything from one run to the next). `python -m bench` runs them all, prints
one table and writes `bench-results.json`; it exits 1 when a figure misses its target.
"""
