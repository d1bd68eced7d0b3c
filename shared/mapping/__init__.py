"""The tenant's mapping file: its model and the per-process cache that reloads it."""
