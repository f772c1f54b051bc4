"""The error family: every failure the daemon can meet, classified once.

Adapters raise these; the engine turns them into outcomes at one boundary (``engine.submit``
and ``engine.track``).
Messages never carry secrets: the cloud adapter builds them from codes and ids only.
"""

from __future__ import annotations


class ReplicatorError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(ReplicatorError):
    """The configuration is invalid. ``problems`` holds one line per problem found."""

    def __init__(self, problems: list[str]) -> None:
        # One line each, whatever a value quoted in it holds (a path or key with a line break).
        self.problems = [_one_line(problem) for problem in problems]
        super().__init__("\n".join(self.problems))


def _one_line(text: str) -> str:
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class RefusedError(ReplicatorError):
    """A replication rule forbids the request; nothing was sent to the cloud."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{message} ({reason})")


class CloudError(ReplicatorError):
    """An answer (or the lack of one) from the cloud API."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.code = code
        self.status = status
        self.request_id = request_id
        super().__init__(message)


class TransientError(CloudError):
    """Not applied; safe to retry later (network down before sending, 5xx on a read, 429)."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, request_id=request_id)
        self.retry_after = retry_after


class BusyError(TransientError):
    """Refused for now (BackupService.6130, "the vault is being replicated, try again
    later"): certainly not applied; the same request may be sent again later."""


class ThrottledError(TransientError):
    """The gateway kept throttling (429) past ``cloud.throttle_budget``: nothing was applied;
    the run ends as unavailable and the next one carries on."""


class AmbiguousError(CloudError):
    """A mutating request may or may not have been applied: reconcile before any retry."""


class PermanentError(CloudError):
    """The cloud refused the request for a reason that retrying will not change."""


class NotFoundError(PermanentError):
    """The object asked for does not exist (404, BackupService.6200 / 6105)."""


class AlreadyReplicatedError(PermanentError):
    """BackupService.1009: the backup is being or has been replicated to that region."""


class EndpointError(CloudError):
    """The endpoint serves no such API (the gateway's 404 ``APIGW.0101``): a wrong
    ``cloud.site`` or ``cloud.endpoints`` entry, never evidence that an object is gone."""


class MalformedAnswerError(CloudError):
    """A 2xx answer whose body lacks what the API promises (missing keys, wrong types)."""


class PermissionDeniedError(CloudError):
    """401/403: the credentials are wrong or lack a permission. Stop; do not hammer."""


class LedgerError(ReplicatorError):
    """The ledger is unusable (corrupt, locked by another daemon, wrong schema)."""


class Interrupted(KeyboardInterrupt):
    """A stop signal (INT, TERM, HUP) reached a command: it unwinds like Ctrl-C, so every
    ``finally`` runs, and the command says what it knows before it exits 128 + the signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signum)


class LedgerMissingError(LedgerError):
    """No ledger at the configured place yet, and the command may not create one."""


class LedgerUnavailableError(LedgerError):
    """The ledger's database does not answer or cannot write for now (down, failing over, a
    killed or stalled connection, a statement or lock wait timed out, locked beyond the busy
    timeout, a full disk): nothing is wrong with the config or the ledger itself, and a later
    try may succeed."""


class LedgerGoneError(LedgerError):
    """The ledger's file was deleted or replaced under a running process: stop, never go on
    with an empty ledger (its vault bindings and job history would be lost)."""
