"""Sweep-level analysis: statistics, the metric registry, aggregate tables and the report page."""
