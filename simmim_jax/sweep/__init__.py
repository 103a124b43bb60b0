"""Sweeps: points and their names, the resumable runner, and the summary
tables and plots (importable from a notebook)."""
