"""Benchmarks: scripts that print figures (docs/design.md §10), plus a smoke test of each."""
