"""Benchmarks: scripts that print figures (DESIGN.md §10), plus a smoke test of each."""
