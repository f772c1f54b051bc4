"""``Job.evolve``: a copy with some fields changed, as ``dataclasses.replace`` would make it
(it copies the slots itself, for speed: issue 7)."""

from __future__ import annotations

import dataclasses

import pytest

from daemon.core.model import Job, JobState
from tests.core.core_factories import job


def test_evolve_changes_the_given_fields_and_copies_the_others() -> None:
    queued = job(JobState.QUEUED, bytes=7, replica_name="r-1")
    claimed = queued.evolve(state=JobState.SUBMITTING, lease_owner="me", id=3)

    assert claimed == dataclasses.replace(queued, state=JobState.SUBMITTING, lease_owner="me", id=3)
    assert hash(claimed) == hash(
        dataclasses.replace(queued, state=JobState.SUBMITTING, lease_owner="me", id=3)
    )
    assert (queued.state, queued.lease_owner, queued.id) == (JobState.QUEUED, None, None)
    assert all(
        getattr(claimed, field.name) == getattr(queued, field.name)
        for field in dataclasses.fields(Job)
        if field.name not in {"state", "lease_owner", "id"}
    )
    assert queued.evolve() == queued


def test_evolve_refuses_an_unknown_field_and_the_copy_stays_frozen() -> None:
    queued = job(JobState.QUEUED)
    with pytest.raises(TypeError, match="no field 'stat'"):
        queued.evolve(stat=JobState.FAILED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        queued.evolve(id=1).id = 2  # type: ignore[misc]
