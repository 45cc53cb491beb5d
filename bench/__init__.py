"""Benchmarks: scripts that print figures, never tests that fail on speed."""
