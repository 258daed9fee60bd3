"""Scoring: probe sets in (probes), exact per-item log-probs out (score), the thread settings
that keep them reproducible (cpus) and the numerical audit against an independent loop (audit)."""
