"""Fixtures of the daemon-mode tests (the harness is in ``support.py``)."""

from tests.service.support import service

__all__ = ["service"]
