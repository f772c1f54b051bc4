"""The job state machine against the diagram of docs/design.md §5, written out here on its own
(not read from the code), and its invariants over random sequences of events."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.core.jobs import Event, TransitionError, advance, create, next_state
from daemon.core.model import Job, JobState
from tests.core.core_factories import job

Q, S, R = JobState.QUEUED, JobState.SUBMITTING, JobState.REPLICATING
OK, F, G = JobState.SUCCEEDED, JobState.FAILED, JobState.GIVEN_UP
E = Event

# Every edge of the diagram: (state before, None for a new job; event; state after).
DIAGRAM = {
    (None, E.ELIGIBLE, Q),
    (None, E.MANUAL, Q),
    (None, E.MANUAL, R),
    (Q, E.ADOPTED, R),
    (Q, E.ADOPTED, OK),
    (F, E.ADOPTED, R),
    (F, E.ADOPTED, OK),
    (Q, E.INTENT, S),
    (F, E.INTENT, S),
    (S, E.RESUBMIT, S),
    (S, E.ACCEPTED, R),
    (S, E.REFUSED, F),
    (S, E.REFUSED, G),
    (S, E.RECONCILED, R),
    (S, E.RECONCILED, OK),
    (S, E.RECONCILED, F),
    (S, E.RECONCILED, G),
    (R, E.TRACKED, R),
    (R, E.TRACKED, OK),
    (R, E.TRACKED, F),
    (R, E.TRACKED, G),
    (F, E.RETRY, Q),
    (G, E.RETRY, Q),
}
# What leaves ``submitting`` must say what became of its POST: its answer, or a reconcile read.
POST_OUTCOMES = {E.ACCEPTED, E.REFUSED, E.RECONCILED, E.RESUBMIT}

BEFORE = [None, *JobState]


@pytest.mark.parametrize(
    ("before", "event", "after"), list(itertools.product(BEFORE, Event, JobState))
)
def test_exactly_the_diagrams_transitions_are_allowed(
    before: JobState | None, event: Event, after: JobState
) -> None:
    if (before, event, after) in DIAGRAM:
        assert next_state(before, event, after) == after
    else:
        with pytest.raises(TransitionError):
            next_state(before, event, after)


def allowed_moves(state: JobState | None) -> list[tuple[Event, JobState]]:
    """Every (event, state after) the state machine accepts from ``state``."""
    moves = []
    for event, wanted in itertools.product(Event, JobState):
        try:
            next_state(state, event, wanted)
        except TransitionError:
            continue
        moves.append((event, wanted))
    return moves


@st.composite
def walks(draw: st.DrawFn) -> list[tuple[JobState | None, Event, JobState]]:
    """A job's life through the state machine as it is: each step one of the transitions it
    accepts from where the job is, until it accepts none or the walk is long enough."""
    state: JobState | None = None
    taken = []
    for _ in range(draw(st.integers(min_value=1, max_value=40))):
        moves = allowed_moves(state)
        if not moves:
            break
        event, after = draw(st.sampled_from(moves))
        taken.append((state, event, after))
        state = after
    return taken


@given(walks())
def test_succeeded_never_goes_back(taken: list[tuple[JobState | None, Event, JobState]]) -> None:
    assert not any(before == OK and after != OK for before, _, after in taken)
    assert not any(before == OK for before, _, _ in taken)  # nothing at all moves it


@given(walks())
def test_a_submitting_job_reaches_queued_only_after_its_post_is_accounted_for(
    taken: list[tuple[JobState | None, Event, JobState]],
) -> None:
    accounted = True
    for before, event, after in taken:
        if before == S:
            assert event in POST_OUTCOMES, (before, event, after)
            accounted = True
        if after == S and before != S:
            accounted = False
        if after == Q:
            assert accounted, "reached queued from submitting without a reconcile or an answer"


@given(walks())
def test_a_submitting_job_is_posted_again_only_after_a_reconcile_read(
    taken: list[tuple[JobState | None, Event, JobState]],
) -> None:
    for before, event, after in taken:
        if before == S and after == S:
            assert event == E.RESUBMIT


def test_advance_changes_the_state_and_the_given_fields_only() -> None:
    queued = job(Q, attempts=1)
    intent = advance(queued, E.INTENT, S, attempts=2)
    assert (intent.state, intent.attempts) == (S, 2)
    assert intent.evolve(state=Q, attempts=1) == queued


def test_advance_refuses_what_the_diagram_does_not_have() -> None:
    with pytest.raises(TransitionError, match="intent: succeeded cannot become submitting"):
        advance(job(OK), E.INTENT, S)


def test_create_makes_a_new_job_in_the_state_its_event_gives() -> None:
    fields = {f.name: getattr(job(Q), f.name) for f in dataclasses.fields(Job) if f.name != "state"}
    assert create(E.ELIGIBLE, Q, **fields) == job(Q)
    with pytest.raises(TransitionError):
        create(E.ELIGIBLE, R, **fields)
