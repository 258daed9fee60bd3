"""Experiments built on the pipeline: the mini suite (mini/), the demo and sweep jobs (demo) and
the kill/rescue interventions (interventions)."""
