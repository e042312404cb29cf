"""Scoring: the metric protocol (`base`), the networks, the metrics and their registry entries."""
