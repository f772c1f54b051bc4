"""One function classifies every SDK failure (docs/design.md §12)."""

from __future__ import annotations

import pytest
from huaweicloudsdkcore.exceptions import exceptions as sdk

from daemon.adapters.cloud.classify import classify_error
from daemon.core.errors import (
    AlreadyReplicatedError,
    AmbiguousError,
    MalformedAnswerError,
    NotFoundError,
    PermanentError,
    PermissionDeniedError,
    TransientError,
)


def client_error(status: int, code: str) -> sdk.ClientRequestException:
    return sdk.ClientRequestException(status, sdk.SdkError("req-1", code, "message"))


def server_error(status: int, code: str) -> sdk.ServerResponseException:
    return sdk.ServerResponseException(status, sdk.SdkError("req-2", code, "message"))


@pytest.mark.parametrize(
    ("error", "mutating", "expected"),
    [
        (client_error(429, "APIGW.0308"), True, TransientError),
        (client_error(429, "APIGW.0308"), False, TransientError),
        (server_error(500, "BackupService.9910"), False, TransientError),
        (server_error(500, "BackupService.9910"), True, AmbiguousError),
        (server_error(503, "503"), True, AmbiguousError),
        (client_error(400, "BackupService.1009"), True, AlreadyReplicatedError),
        (client_error(400, "BackupService.1002"), True, PermanentError),
        (client_error(400, "BackupService.6129"), True, PermanentError),
        (client_error(404, "BackupService.6200"), False, NotFoundError),
        (client_error(400, "BackupService.6105"), False, NotFoundError),
        (client_error(401, "APIGW.0301"), False, PermissionDeniedError),
        (client_error(403, "BackupService.8600"), True, PermissionDeniedError),
        (server_error(500, "BackupService.9998"), True, PermissionDeniedError),
        (sdk.ConnectionException("Read timed out"), True, AmbiguousError),
        (sdk.ConnectionException("Read timed out"), False, TransientError),
        (sdk.ConnectionException("NewConnectionError: Connection refused"), True, TransientError),
        (MalformedAnswerError("garbled"), True, AmbiguousError),
        (MalformedAnswerError("garbled"), False, MalformedAnswerError),
        (RuntimeError("surprise"), True, AmbiguousError),
    ],
)
def test_classification(error: Exception, mutating: bool, expected: type) -> None:
    classified = classify_error(error, mutating=mutating)
    assert type(classified) is expected


def test_throttling_keeps_retry_after_and_code() -> None:
    classified = classify_error(client_error(429, "APIGW.0308"), mutating=False, retry_after=7.0)
    assert isinstance(classified, TransientError)
    assert classified.retry_after == 7.0
    assert classified.code == "APIGW.0308"
    assert classified.request_id == "req-1"


def test_json_nested_too_deeply_is_a_malformed_answer() -> None:
    """A parser's RecursionError (the SDK parsing an error body) is a malformed answer, not
    an unexpected crash: retried as one for a read, ambiguous for a POST."""
    assert isinstance(classify_error(RecursionError(), mutating=False), MalformedAnswerError)
    assert isinstance(classify_error(RecursionError(), mutating=True), AmbiguousError)
