"""Backfill jobs: their records and the walk over a past range."""
