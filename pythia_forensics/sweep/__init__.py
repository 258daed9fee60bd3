"""Sweeps: score every revision of a suite into the content-keyed results store (replay, store)."""
