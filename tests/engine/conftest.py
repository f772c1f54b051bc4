"""Fixtures of the end-to-end tests."""

from tests.engine.harness import deploy

__all__ = ["deploy"]
