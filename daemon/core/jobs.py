"""The job state machine (docs/design.md §5): which event may move a job from which state to
which. Every place that makes a job or changes its state goes through ``create`` or
``advance``, so a transition the diagram does not have fails where it is attempted instead
of reaching the ledger. Pure: no clock, no I/O.

The events are what the engine learned or did. Leaving ``submitting`` takes an event that
says what became of the POST: its answer (``accepted``, ``refused``), a reconcile read that
found a live record or the source gone (``reconciled``), or a reconcile read that found no
record to the region, after which the intent is written again (``resubmit``). Nothing leaves
``succeeded``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from daemon.core.model import Job, JobState


class Event(StrEnum):
    ELIGIBLE = "eligible"  # a policy's sweep found a backup to replicate
    MANUAL = "manual"  # an operator's replicate-backup or replicate-vault
    ADOPTED = "adopted"  # a sweep found a live record no job of ours had followed
    INTENT = "intent"  # claimed and due: the intent is committed before the POST
    RESUBMIT = "resubmit"  # a reconcile read found no record: the intent is written again
    ACCEPTED = "accepted"  # the POST was answered with a replication record
    REFUSED = "refused"  # the POST was refused: nothing was applied
    RECONCILED = "reconciled"  # a read of a submitting job's backup said what the POST did
    TRACKED = "tracked"  # a replicating job's record was read
    RETRY = "retry"  # the operator's retry of a failed or given-up job


Q, S, R = JobState.QUEUED, JobState.SUBMITTING, JobState.REPLICATING
OK, F, G = JobState.SUCCEEDED, JobState.FAILED, JobState.GIVEN_UP

# event -> {state before (None: a new job) -> the states it may lead to}
TRANSITIONS: Mapping[Event, Mapping[JobState | None, frozenset[JobState]]] = {
    Event.ELIGIBLE: {None: frozenset({Q})},
    # A manual job is new, or an old row of the same pair reset (a success whose replica is
    # gone: the operator may replicate again); replicate-vault's jobs start replicating.
    Event.MANUAL: {None: frozenset({Q, R})},
    Event.ADOPTED: {Q: frozenset({R, OK}), F: frozenset({R, OK})},
    Event.INTENT: {Q: frozenset({S}), F: frozenset({S})},
    Event.RESUBMIT: {S: frozenset({S})},
    Event.ACCEPTED: {S: frozenset({R})},
    Event.REFUSED: {S: frozenset({F, G})},
    # A live record (replicating or done), the source deleted (given up), or, read by a sweep,
    # the record the job last knew of ended (failed or given up).
    Event.RECONCILED: {S: frozenset({R, OK, F, G})},
    Event.TRACKED: {R: frozenset({R, OK, F, G})},
    Event.RETRY: {F: frozenset({Q}), G: frozenset({Q})},
}


class TransitionError(ValueError):
    """A state change the state machine does not have: a bug in the caller."""


def next_state(state: JobState | None, event: Event, wanted: JobState) -> JobState:
    """``wanted`` if ``event`` may move a job in ``state`` (None: no job yet) there."""
    if wanted not in TRANSITIONS[event].get(state, frozenset()):
        before = "a new job" if state is None else state.value
        raise TransitionError(f"{event.value}: {before} cannot become {wanted.value}")
    return wanted


def create(event: Event, state: JobState, **fields: Any) -> Job:
    """A new job, in the state ``event`` makes it."""
    return Job(state=next_state(None, event, state), **fields)


def advance(job: Job, event: Event, state: JobState, **changes: Any) -> Job:
    """``job`` moved by ``event`` to ``state``, with ``changes``."""
    return job.evolve(state=next_state(job.state, event, state), **changes)
