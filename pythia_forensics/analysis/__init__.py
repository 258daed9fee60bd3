"""Analysis of stored results: trajectory metrics and verdicts (dynamics), the pre-registration
ledger (prereg), figures and the markdown report."""
