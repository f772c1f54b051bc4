"""The plumbing under ``HuaweiCloud``: one SDK client per (region, project) with an explicit
endpoint, the HTTP configuration, and the one way every request is sent (rate limit,
concurrency slot, total deadline, read retries, throttle backoff, error classification).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import requests
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from daemon.adapters.cloud import wire
from daemon.adapters.cloud.classify import (
    DENIED_RESPITE,
    classify_error,
    clock_hint,
    is_throttled,
    untrusted_endpoint,
)
from daemon.adapters.cloud.http import refuse_redirect
from daemon.adapters.cloud.ratelimit import SUSTAINED_STREAK
from daemon.adapters.cloud.sdk import SdkClients
from daemon.adapters.deadlines import GUARD
from daemon.core.errors import (
    CloudError,
    EndpointError,
    MalformedAnswerError,
    PermissionDeniedError,
    ThrottledError,
    TransientError,
)

log = structlog.get_logger("cbr_replicator")


T = TypeVar("T")


class SdkTransport(SdkClients):
    """Sends the cloud adapter's requests; ``HuaweiCloud`` adds the port's operations."""

    # -- calls -----------------------------------------------------------------------------
    def _read(self, operation: str, call: Callable[[], Any], *, scope: str) -> wire.JsonObject:
        return self._read_as(operation, call, wire.parse_body, scope=scope)

    def _read_as(
        self,
        operation: str,
        call: Callable[[], Any],
        parse: Callable[[Any, str], T],
        *,
        scope: str,
    ) -> T:
        """A read, retried on transient errors and malformed answers with full jitter,
        honouring Retry-After, within a capped number of attempts and total time. Throttling
        is waited out inside ``_exchange`` (the shared gate), not here."""
        retrying = Retrying(
            stop=stop_after_attempt(self._options.read_attempts)
            | stop_after_delay(self._options.read_retry_budget.total_seconds()),
            wait=self._read_wait,
            retry=retry_if_exception_type((TransientError, MalformedAnswerError))
            & retry_if_not_exception_type(ThrottledError),
            sleep=self._sleep,
            before_sleep=lambda _state: self._on_retry and self._on_retry(operation),
            reraise=True,
        )
        parsed: T = retrying(self._exchange, operation, call, parse, mutating=False, scope=scope)
        return parsed

    @staticmethod
    def _read_wait(state: RetryCallState) -> float:
        backoff = float(wait_random_exponential(multiplier=0.5, max=30)(state))
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        return max(backoff, float(retry_after)) if retry_after else backoff

    def _call(
        self, operation: str, call: Callable[[], Any], *, mutating: bool, scope: str
    ) -> wire.JsonObject:
        return self._exchange(operation, call, wire.parse_body, mutating=mutating, scope=scope)

    def _exchange(
        self,
        operation: str,
        call: Callable[[], Any],
        parse: Callable[[Any, str], T],
        *,
        mutating: bool,
        scope: str,
    ) -> T:
        """One call, sent again while the gateway throttles it (a 429 was not applied, so
        this holds for a POST too) until the shared gate gives up. A POST waits for the
        gate at most ``mutation_throttle_wait``: its job's lease must outlast it."""
        self._refuse_if_denied(scope)
        deadline = (
            self._gate.now() + self._options.mutation_throttle_wait.total_seconds()
            if mutating
            else None
        )
        while True:
            self._rate.acquire()
            if not self._gate.admit(deadline):
                error = self._throttled_error(operation)
                self._report(operation, error.__class__.__name__)
                raise error
            sent_at = self._gate.now()
            try:
                body = self._send(operation, call, parse, mutating=mutating, scope=scope)
            except TransientError as error:
                if not is_throttled(error):
                    self._gate.succeeded()
                    raise
                streak = self._gate.throttled(sent_at, error.retry_after)
                if streak == SUSTAINED_STREAK:  # once per episode, only when it lasts
                    self._rate.throttled()
                if streak:
                    log.warning(
                        "throttled",
                        operation=operation,
                        code=error.code,
                        rate=round(self._rate.rate, 2),
                    )
                continue
            except BaseException:
                self._gate.succeeded()  # not throttled; a probe's answer frees the others
                raise
            self._gate.succeeded()
            self._rate.succeeded()
            return body

    def _throttled_error(self, operation: str) -> TransientError:
        """Throttled past the budget (ThrottledError: the run gives up), or a POST that may
        wait no longer (TransientError: that job is deferred, the others go on)."""
        if self._gate.exhausted():
            budget = int(self._options.throttle_budget.total_seconds())
            return ThrottledError(
                f"{operation}: throttled by the API gateway (429) for longer than "
                f"cloud.throttle_budget ({budget}s); nothing was applied",
                code="APIGW.0308",
                status=429,
            )
        wait = int(self._options.mutation_throttle_wait.total_seconds())
        return TransientError(
            f"{operation}: throttled by the API gateway (429) for longer than a POST may "
            f"wait ({wait}s); not applied",
            code="APIGW.0308",
            status=429,
        )

    def _send(
        self,
        operation: str,
        call: Callable[[], Any],
        parse: Callable[[Any, str], T],
        *,
        mutating: bool,
        scope: str,
    ) -> T:
        last = self._last
        last.retry_after = None
        last.request_id = None
        last.server_date = None
        budget = self._request_budget
        try:
            with GUARD.bound(budget) as ticket:
                try:
                    response = call()
                except Exception:
                    if not ticket.expired:
                        raise
                    # Its sockets were shut down at the deadline: a read timeout, however
                    # the interrupted read failed (sent, maybe applied, for a POST).
                    raise requests.ReadTimeout(
                        f"no whole answer within {budget:g}s "
                        "(cloud.connect_timeout + cloud.timeout)"
                    ) from None
            refuse_redirect(response)
            body = parse(getattr(response, "raw_content", None), operation)
        except Exception as error:
            untrusted = untrusted_endpoint(error)
            if untrusted is not None:
                self._report(operation, "ConfigError")
                raise untrusted from None
            classified = classify_error(error, mutating=mutating, retry_after=last.retry_after)
            classified = self._explain(classified, scope, last.server_date)
            self._report(operation, classified.__class__.__name__)
            raise classified from None
        finally:
            self._free_slot()  # if the SDK failed between sending and the answer's hook
        self._report(operation, "ok")
        return body

    def _explain(self, error: CloudError, scope: str, server_date: str | None) -> CloudError:
        """Add what the caller needs to act: the endpoint of a "no such API", the clock of a
        refused signature; and latch a 401 so this scope is not asked again."""
        if isinstance(error, EndpointError):
            endpoint = self._endpoint_of(scope)
            return EndpointError(
                f"{endpoint} serves no such API ({error}): check cloud.site and "
                f"cloud.endpoints for {scope}",
                code=error.code,
                status=error.status,
                request_id=error.request_id,
            )
        if isinstance(error, PermissionDeniedError) and error.status == 401:
            hint = clock_hint(str(error), server_date, self._wall_clock())
            if hint:
                error = PermissionDeniedError(
                    f"{error}; {hint}",
                    code=error.code,
                    status=error.status,
                    request_id=error.request_id,
                )
            with self._lock:
                self._denied[scope] = (self._gate.now(), error)
        return error

    def _refuse_if_denied(self, scope: str) -> None:
        """After a 401, this process sends nothing more to that scope for a while: the
        gateway locks an access key after a few failed signatures in a row."""
        with self._lock:
            denied = self._denied.get(scope)
            if denied is None:
                return
            if self._gate.now() - denied[0] >= DENIED_RESPITE:
                del self._denied[scope]
                return
        error = denied[1]
        raise PermissionDeniedError(
            f"not sent: {scope} refused this process's signature earlier ({error})",
            code=error.code,
            status=error.status,
            request_id=error.request_id,
        )

    def _report(self, operation: str, outcome: str) -> None:
        if self._on_api_call is not None:
            self._on_api_call(operation, outcome)
