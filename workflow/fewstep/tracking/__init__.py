"""Experiment tracking: every job a W&B run, and a reader for offline run files."""
