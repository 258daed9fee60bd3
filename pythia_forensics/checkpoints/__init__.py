"""Checkpoints: which revisions a suite has (registry, manifest), where their files are (sources,
fetch, lease) and whether they can be scored at all (architecture, validation, health)."""
