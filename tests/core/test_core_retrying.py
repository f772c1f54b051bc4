"""Backoff math and a job's next state after a failure (docs/design.md §5)."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from core_factories import NOW, job, record
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core import retrying
from daemon.core.jobs import Event
from daemon.core.model import JobState, RecordStatus
from daemon.core.retrying import RetryPolicy

NO_JITTER = RetryPolicy(jitter=0.0)


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        pytest.param(0, timedelta(minutes=5), id="none_yet_counts_as_first"),
        pytest.param(1, timedelta(minutes=5), id="first"),
        pytest.param(2, timedelta(minutes=10), id="second"),
        pytest.param(4, timedelta(minutes=40), id="fourth"),
        pytest.param(7, timedelta(minutes=320), id="seventh"),
        pytest.param(8, timedelta(hours=6), id="capped"),
        pytest.param(10_000, timedelta(hours=6), id="huge_does_not_overflow"),
    ],
)
def test_backoff_grows_exponentially_up_to_the_cap(attempts: int, expected: timedelta) -> None:
    assert retrying.backoff(NO_JITTER, attempts, random.Random(1)) == expected


def test_backoff_is_reproducible_with_the_same_seed() -> None:
    policy = RetryPolicy()
    first = [retrying.backoff(policy, n, random.Random(7)) for n in range(1, 10)]
    again = [retrying.backoff(policy, n, random.Random(7)) for n in range(1, 10)]
    assert first == again


def test_backoff_jitter_spreads_waits() -> None:
    rng = random.Random(3)
    waits = {retrying.backoff(RetryPolicy(), 1, rng) for _ in range(20)}
    assert len(waits) > 1


@pytest.mark.parametrize(
    "fields",
    [
        {"max_attempts": 0},
        {"initial_backoff": timedelta(0)},
        {"max_backoff": timedelta(minutes=1)},
        {"multiplier": 0.5},
        {"jitter": -0.1},
        {"jitter": 1.5},
    ],
)
def test_retry_policy_refuses_out_of_range_settings(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r".+"):
        RetryPolicy(**fields)  # type: ignore[arg-type]


def test_after_failure_backs_off_with_error_kept() -> None:
    submitted = job(JobState.SUBMITTING, attempts=2)
    failed = retrying.after_failure(
        submitted,
        NO_JITTER,
        NOW,
        code="BackupService.6301",
        message="quota",
        rng=random.Random(),
        event=Event.REFUSED,
    )
    assert failed.state == JobState.FAILED
    assert failed.next_attempt_at == NOW + timedelta(minutes=10)
    assert (failed.last_error_code, failed.last_error) == ("BackupService.6301", "quota")
    assert failed.attempts == 2  # counted by the submitter, not here
    assert failed.finished_at is None


@pytest.mark.parametrize(("attempts", "state"), [(5, JobState.FAILED), (6, JobState.GIVEN_UP)])
def test_after_failure_gives_up_at_max_attempts(attempts: int, state: JobState) -> None:
    failed = retrying.after_failure(
        job(JobState.SUBMITTING, attempts=attempts),
        RetryPolicy(max_attempts=6),
        NOW,
        code=None,
        message="refused",
        rng=random.Random(0),
        event=Event.REFUSED,
    )
    assert failed.state == state
    if state == JobState.GIVEN_UP:
        assert failed.finished_at == NOW
        assert failed.next_attempt_at is None


def test_a_single_attempt_policy_gives_up_after_the_first_failure() -> None:
    failed = retrying.after_failure(
        job(JobState.SUBMITTING, attempts=1),
        RetryPolicy(max_attempts=1),
        NOW,
        code="x",
        message="refused",
        rng=random.Random(0),
        event=Event.REFUSED,
    )
    assert failed.state == JobState.GIVEN_UP


def test_an_uncounted_failure_never_gives_up() -> None:
    failed = retrying.after_failure(
        job(JobState.SUBMITTING, attempts=9),
        NO_JITTER,
        NOW,
        code="APIGW.0308",
        message="throttled",
        rng=random.Random(0),
        count_attempt=False,
        event=Event.REFUSED,
    )
    assert failed.state == JobState.FAILED
    assert failed.next_attempt_at == NOW + timedelta(hours=6)


def test_after_record_failure_uses_the_cloud_reason() -> None:
    ended = record(
        RecordStatus.FAIL,
        record_id="rec-7",
        fail_code="BackupService.6403",
        fail_reason="destination vault full",
    )
    failed = retrying.after_record_failure(
        job(JobState.REPLICATING, attempts=1), NO_JITTER, NOW, record=ended, rng=random.Random()
    )
    assert failed.state == JobState.FAILED
    assert (failed.last_error_code, failed.last_error) == (
        "BackupService.6403",
        "destination vault full",
    )
    assert failed.replication_record_id == "rec-7"
    assert failed.next_attempt_at == NOW + timedelta(minutes=5)


def test_after_record_failure_without_reason_names_the_record() -> None:
    skipped = record(RecordStatus.SKIP, record_id="rec-8")
    failed = retrying.after_record_failure(
        job(JobState.REPLICATING, attempts=6),
        RetryPolicy(),
        NOW,
        record=skipped,
        rng=random.Random(),
    )
    assert failed.state == JobState.GIVEN_UP
    assert failed.last_error_code is None
    assert failed.last_error is not None
    assert "rec-8" in failed.last_error


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.GIVEN_UP])
def test_requeue_starts_over(state: JobState) -> None:
    stuck = job(
        state,
        attempts=6,
        next_attempt_at=NOW + timedelta(hours=1),
        finished_at=NOW,
        last_error="quota",
        replication_record_id="rec-1",
    )
    again = retrying.requeue(stuck)
    assert again.state == JobState.QUEUED
    assert again.attempts == 0
    assert again.next_attempt_at is None
    assert again.finished_at is None
    assert again.replication_record_id is None
    assert again.last_error == "quota"  # kept for `status` until the next attempt


@pytest.mark.parametrize(
    "state", [JobState.QUEUED, JobState.SUBMITTING, JobState.REPLICATING, JobState.SUCCEEDED]
)
def test_requeue_refuses_other_states(state: JobState) -> None:
    with pytest.raises(ValueError, match="failed or given-up"):
        retrying.requeue(job(state))


# -- properties ----------------------------------------------------------------------------

policies = st.builds(
    lambda attempts, initial, extra, multiplier, jitter: RetryPolicy(
        max_attempts=attempts,
        initial_backoff=timedelta(seconds=initial),
        max_backoff=timedelta(seconds=initial + extra),
        multiplier=multiplier,
        jitter=jitter,
    ),
    st.integers(1, 20),
    st.integers(1, 3600),
    st.integers(0, 86_400),
    st.floats(1.0, 10.0),
    st.floats(0.0, 1.0),
)


@settings(max_examples=400, deadline=None)
@given(policies, st.integers(-5, 2000), st.integers(0, 2**32))
def test_backoff_stays_within_bounds(policy: RetryPolicy, attempts: int, seed: int) -> None:
    wait = retrying.backoff(policy, attempts, random.Random(seed))
    assert timedelta(0) <= wait
    assert wait <= policy.max_backoff * (1 + policy.jitter) + timedelta(microseconds=1)
    assert wait >= policy.initial_backoff * (1 - policy.jitter) - timedelta(microseconds=1)


@settings(max_examples=200, deadline=None)
@given(policies, st.integers(0, 30), st.integers(0, 2**32))
def test_after_failure_is_failed_in_the_future_or_given_up(
    policy: RetryPolicy, attempts: int, seed: int
) -> None:
    failed = retrying.after_failure(
        job(JobState.SUBMITTING, attempts=attempts),
        policy,
        NOW,
        code=None,
        message="x",
        rng=random.Random(seed),
        event=Event.REFUSED,
    )
    if attempts >= policy.max_attempts:
        assert failed.state == JobState.GIVEN_UP
    else:
        assert failed.state == JobState.FAILED
        assert failed.next_attempt_at is not None
        assert failed.next_attempt_at >= NOW
