"""Exit codes of every command (docs/design.md §8), named once."""

from __future__ import annotations

OK = 0
REPLICATION_FAILED = 1  # some replication failed permanently or was given up in this run
USAGE = 2
REFUSED = 3  # refused by a replication rule; nothing was sent
WAIT_TIMED_OUT = 4  # --wait ran out (--wait-timeout) with replications unfinished, none failed
UNAVAILABLE = 75  # EX_TEMPFAIL: cloud unreachable or throttled after retries
NO_PERMISSION = 77  # EX_NOPERM: authentication or permission denied
CONFIG = 78  # EX_CONFIG: configuration error
# Stopped by a signal, after saying what it knows: 128 + the signal's number, as a shell shows
# a process the signal killed.
HANGUP = 129  # SIGHUP
INTERRUPTED = 130  # SIGINT (Ctrl-C)
STDOUT_CLOSED = 141  # the reader of stdout went away (a pipe into `head`): 128 + SIGPIPE
TERMINATED = 143  # SIGTERM


def signalled(signum: int) -> int:
    """The exit code of a command stopped by signal ``signum``."""
    return 128 + signum
