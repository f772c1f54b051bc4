"""The engine: sweeps, submissions, tracking and manual replications, on the core's ports
only (never an adapter)."""
