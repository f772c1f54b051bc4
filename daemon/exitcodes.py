"""Exit codes of every command (DESIGN.md §8), named once."""

from __future__ import annotations

OK = 0
REPLICATION_FAILED = 1  # some replication failed permanently or was given up in this run
USAGE = 2
REFUSED = 3  # refused by a replication rule; nothing was sent
UNAVAILABLE = 75  # EX_TEMPFAIL: cloud unreachable or throttled after retries
NO_PERMISSION = 77  # EX_NOPERM: authentication or permission denied
CONFIG = 78  # EX_CONFIG: configuration error
