"""What operators run: the CLI, status, reconcile, the demo and process helpers.

The only package that imports producer, worker and sandbox; nothing imports it but tests and bench.
"""
