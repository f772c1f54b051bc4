"""The command line. ``main`` is the ``cbr-replicator`` entry point; it is loaded on first use
so that importing one of the CLI's modules does not load them all."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "main":
        from daemon.cli.entry import main

        return main
    raise AttributeError(name)
