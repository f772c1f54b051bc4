"""The ledger port on SQLite and PostgreSQL: jobs, claims, bindings, leases, sweeps, reports."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from daemon.adapters.ledger import SCHEMA_VERSION, SqlLedger
from daemon.core.model import (
    GIB,
    Attempt,
    Job,
    JobState,
    Origin,
    SweepReport,
    VaultBinding,
)

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
REGION = "cn-south-1"


def job(backup_id: str, state: JobState = JobState.QUEUED, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "source_backup_id": backup_id,
        "destination_region": REGION,
        "state": state,
        "origin": Origin.POLICY,
        "policy": "web",
        "source_region": "cn-north-4",
        "source_project_id": "p-src",
        "source_vault_id": "v-src",
        "destination_project_id": "p-dst",
        "destination_vault_id": "v-dst",
        "backup_name": f"name-{backup_id}",
    }
    values.update(fields)
    return Job(**values)


def test_jobs_round_trip_with_aware_utc_datetimes(ledger: SqlLedger) -> None:
    created = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
    east = datetime(2026, 11, 25, 16, 0, tzinfo=UTC).astimezone(
        datetime.now(UTC).astimezone().tzinfo
    )
    [saved] = ledger.save_jobs(
        [job("b-1", backup_created_at=created, next_attempt_at=east, bytes=40 * GIB)], NOW
    )
    assert saved.id is not None
    loaded = ledger.get_job("b-1", REGION)
    assert loaded == saved
    assert loaded is not None
    assert loaded.backup_created_at == created
    assert loaded.next_attempt_at == east
    assert loaded.next_attempt_at.tzinfo is not None
    assert loaded.bytes == 40 * GIB
    assert (loaded.created_at, loaded.updated_at) == (NOW, NOW)


def test_naive_datetimes_are_refused(ledger: SqlLedger) -> None:
    with pytest.raises(Exception, match="naive"):
        ledger.save_jobs([job("b-1", next_attempt_at=datetime(2026, 1, 1))], NOW)


def test_save_updates_by_backup_and_region_and_keeps_created_at(ledger: SqlLedger) -> None:
    [first] = ledger.save_jobs([job("b-1")], NOW)
    later = NOW + timedelta(minutes=5)
    [second] = ledger.save_jobs([first.evolve(state=JobState.REPLICATING, attempts=1)], later)
    assert second.id == first.id
    assert (second.created_at, second.updated_at) == (NOW, later)
    assert ledger.count_jobs(list(JobState)) == 1
    other_region = job("b-1", destination_region="ap-southeast-1")
    ledger.save_jobs([other_region], NOW)
    assert ledger.count_jobs(list(JobState)) == 2


def test_get_jobs_reads_a_page_larger_than_one_in_list(ledger: SqlLedger) -> None:
    ids = [f"b-{n:04d}" for n in range(1200)]
    ledger.save_jobs([job(backup_id) for backup_id in ids], NOW)
    found = ledger.get_jobs(REGION, [*ids, "missing"])
    assert sorted(found) == ids
    assert ledger.get_jobs("ap-southeast-1", ids) == {}


def test_page_jobs_give_settled_jobs_by_state_and_the_others_whole(ledger: SqlLedger) -> None:
    states = [JobState.SUCCEEDED, JobState.GIVEN_UP, JobState.QUEUED, JobState.REPLICATING]
    ids = [f"b-{n:04d}" for n in range(1200)]  # more than one IN list
    saved = ledger.save_jobs(
        [job(backup_id, states[n % 4]) for n, backup_id in enumerate(ids)], NOW
    )
    known = ledger.get_page_jobs(REGION, [*ids, "missing"])

    assert len(known) == 1200
    assert known.settled == {
        j.source_backup_id: j.state
        for j in saved
        if j.state in {JobState.SUCCEEDED, JobState.GIVEN_UP}
    }
    assert known.open == {
        j.source_backup_id: j for j in saved if j.state in {JobState.QUEUED, JobState.REPLICATING}
    }
    assert len(ledger.get_page_jobs("ap-southeast-1", ids)) == 0


def test_attempts_with_job_id_zero_belong_to_the_job_at_their_position(ledger: SqlLedger) -> None:
    attempts = [
        Attempt(job_id=0, at=NOW, outcome="accepted", request_id="req-1"),
        Attempt(job_id=0, at=NOW + timedelta(seconds=1), outcome="refused", error_code="E1"),
    ]
    ledger.save_jobs([job("b-1"), job("b-2")], NOW, attempts)
    [newest, oldest] = ledger.history()
    assert (newest.source_backup_id, newest.outcome, newest.error_code) == ("b-2", "refused", "E1")
    assert (oldest.source_backup_id, oldest.request_id) == ("b-1", "req-1")
    assert [entry.source_backup_id for entry in ledger.history(source_backup_id="b-1")] == ["b-1"]


def test_claim_takes_only_due_jobs_submitting_first(ledger: SqlLedger) -> None:
    ledger.save_jobs(
        [
            job("queued"),
            job("failed-due", JobState.FAILED, next_attempt_at=NOW - timedelta(seconds=1)),
            job("failed-later", JobState.FAILED, next_attempt_at=NOW + timedelta(hours=1)),
            job("submitting", JobState.SUBMITTING),
            job("submit-later", JobState.SUBMITTING, next_attempt_at=NOW + timedelta(minutes=1)),
            job("replicating", JobState.REPLICATING),
            job("succeeded", JobState.SUCCEEDED),
            job("given-up", JobState.GIVEN_UP),
        ],
        NOW,
    )
    claimed = ledger.claim_jobs(
        owner="a", now=NOW, lease_until=NOW + timedelta(minutes=2), limit=10
    )
    assert claimed[0].source_backup_id == "submitting"
    assert {claim.source_backup_id for claim in claimed} == {"queued", "failed-due", "submitting"}
    assert all(claim.lease_owner == "a" for claim in claimed)
    assert all(
        claim.state == ledger.get_job(claim.source_backup_id, REGION).state for claim in claimed
    )  # type: ignore[union-attr]


def test_a_leased_job_is_not_claimed_again_until_the_lease_expires(ledger: SqlLedger) -> None:
    ledger.save_jobs([job("b-1")], NOW)
    lease_until = NOW + timedelta(minutes=2)
    assert len(ledger.claim_jobs(owner="a", now=NOW, lease_until=lease_until, limit=5)) == 1
    assert ledger.claim_jobs(owner="b", now=NOW, lease_until=lease_until, limit=5) == []
    assert ledger.claim_jobs(owner="a", now=NOW, lease_until=lease_until, limit=5) == []
    assert ledger.claim_job("b-1", REGION, owner="b", now=NOW, lease_until=lease_until) is None
    after = lease_until + timedelta(seconds=1)
    [taken] = ledger.claim_jobs(
        owner="b", now=after, lease_until=after + timedelta(minutes=2), limit=5
    )
    assert taken.lease_owner == "b"
    ledger.release_jobs("b")
    released = ledger.get_job("b-1", REGION)
    assert released is not None
    assert (released.lease_owner, released.lease_expires_at) == (None, None)


def test_claims_filter_by_policy_and_region_and_respect_the_limit(ledger: SqlLedger) -> None:
    ledger.save_jobs(
        [job(f"b-{n}") for n in range(5)]
        + [job("other", policy="db"), job("apac", destination_region="ap-southeast-1")],
        NOW,
    )
    lease = NOW + timedelta(minutes=1)
    assert len(ledger.claim_jobs(owner="a", now=NOW, lease_until=lease, limit=3, policy="web")) == 3
    [other] = ledger.claim_jobs(owner="a", now=NOW, lease_until=lease, limit=9, policy="db")
    assert other.source_backup_id == "other"
    [apac] = ledger.claim_jobs(
        owner="a", now=NOW, lease_until=lease, limit=9, destination_region="ap-southeast-1"
    )
    assert apac.source_backup_id == "apac"


def test_concurrent_claimers_never_share_a_job(make_ledger: Callable[[], SqlLedger]) -> None:
    setup = make_ledger()
    setup.save_jobs([job(f"b-{n:03d}") for n in range(200)], NOW)
    claimed: dict[str, list[str]] = {}
    start = threading.Barrier(4)

    def claim(owner: str) -> None:
        ledger = make_ledger()
        start.wait()
        mine: list[str] = []
        while batch := ledger.claim_jobs(
            owner=owner, now=NOW, lease_until=NOW + timedelta(minutes=5), limit=7
        ):
            mine.extend(claim.source_backup_id for claim in batch)
        claimed[owner] = mine

    threads = [threading.Thread(target=claim, args=(f"owner-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [backup_id for mine in claimed.values() for backup_id in mine]
    assert len(everything) == 200
    assert len(set(everything)) == 200


def test_counts_paging_traffic_and_oldest_pending(ledger: SqlLedger) -> None:
    yesterday = NOW - timedelta(days=1)
    ledger.save_jobs(
        [
            job("done-old", JobState.SUCCEEDED, bytes=10 * GIB, finished_at=yesterday),
            job("done-new", JobState.SUCCEEDED, bytes=40 * GIB, finished_at=NOW),
            job("done-db", JobState.SUCCEEDED, bytes=7 * GIB, finished_at=NOW, policy="db"),
            job("waiting", backup_created_at=datetime(2026, 11, 20, tzinfo=UTC)),
            job("failing", JobState.FAILED, backup_created_at=datetime(2026, 11, 21, tzinfo=UTC)),
            job("manual", policy=None, origin=Origin.MANUAL),
            job("adopted", JobState.SUCCEEDED, bytes=99 * GIB, origin=Origin.ADOPTED),
        ],
        NOW,
    )
    assert ledger.traffic_bytes() == 57 * GIB
    assert ledger.traffic_bytes(policy="web") == 50 * GIB
    assert ledger.traffic_bytes(policy="web", since=NOW - timedelta(hours=1)) == 40 * GIB
    assert ledger.oldest_pending_backup("web") == datetime(2026, 11, 20, tzinfo=UTC)
    assert ledger.oldest_pending_backup("db") is None
    counts = ledger.job_counts()
    assert counts[("web", JobState.SUCCEEDED)] == 3
    assert counts[(None, JobState.QUEUED)] == 1
    assert ledger.count_jobs([JobState.QUEUED, JobState.FAILED], policy="web") == 2
    first = ledger.jobs_in_states([JobState.SUCCEEDED], limit=2)
    rest = ledger.jobs_in_states([JobState.SUCCEEDED], limit=2, after_id=first[-1].id or 0)
    assert [j.source_backup_id for j in first] == ["done-old", "done-new"]
    assert [j.source_backup_id for j in rest] == ["done-db", "adopted"]
    assert ledger.jobs_in_states([JobState.SUCCEEDED], limit=5, after_id=rest[-1].id or 0) == []


def test_failed_jobs_are_counted_by_when_their_retry_is_due(ledger: SqlLedger) -> None:
    """``--wait`` counts the failed jobs it will retry before its deadline as pending."""
    hour = timedelta(hours=1)
    ledger.save_jobs(
        [
            job("due-now", JobState.FAILED, next_attempt_at=NOW),
            job("due-soon", JobState.FAILED, next_attempt_at=NOW + hour),
            job("due-later", JobState.FAILED, next_attempt_at=NOW + 3 * hour),
            job("unset", JobState.FAILED),
            job("queued", JobState.QUEUED, next_attempt_at=NOW),
        ],
        NOW,
    )
    failed = [JobState.FAILED]
    assert ledger.count_jobs(failed, retry_due_by=NOW + hour) == 3  # the bound is inclusive
    assert ledger.count_jobs(failed, retry_due_by=NOW) == 2
    assert ledger.count_jobs(failed) == 4


def binding(origin: str = "policy:web", vault: str = "v-dst", **fields: Any) -> VaultBinding:
    values: dict[str, Any] = {
        "source_vault_id": "v-src",
        "destination_region": REGION,
        "destination_project_id": "p-dst",
        "destination_vault_id": vault,
        "origin": origin,
        "created_at": NOW,
        "source_region": "cn-north-4",
        "source_vault_name": "web-prod",
    }
    values.update(fields)
    return VaultBinding(**values)


def test_a_vault_binding_is_once_only_and_the_first_one_wins(ledger: SqlLedger) -> None:
    first = ledger.add_binding(binding(state="intent", origin="manual"))
    assert first.state == "intent"
    again = ledger.add_binding(binding(origin="policy:other", vault="v-elsewhere"))
    assert again == first
    ledger.mark_binding_bound("v-src", REGION)
    stored = ledger.get_binding("v-src", REGION)
    assert stored is not None
    assert (stored.state, stored.origin, stored.destination_vault_id) == (
        "bound",
        "manual",
        "v-dst",
    )
    ledger.add_binding(binding(destination_region="ap-southeast-1"))
    assert [b.destination_region for b in ledger.list_bindings()] == [REGION, "ap-southeast-1"]
    assert ledger.get_binding("v-src", "af-south-1") is None


def test_bindings_of_many_vaults_are_read_at_once_for_one_region(ledger: SqlLedger) -> None:
    vaults = [f"v-{index:04d}" for index in range(1200)]  # more than one IN list
    for vault in vaults[::3]:
        ledger.add_binding(binding(source_vault_id=vault))
    ledger.add_binding(binding(source_vault_id=vaults[1], destination_region="ap-southeast-1"))
    found = ledger.get_bindings(REGION, vaults)
    assert sorted(found) == vaults[::3]
    assert all(found[vault].source_vault_id == vault for vault in found)
    assert list(ledger.get_bindings("ap-southeast-1", vaults)) == [vaults[1]]


def test_a_key_given_twice_in_one_save_is_one_row_as_given_last(ledger: SqlLedger) -> None:
    first, last = job("b1", backup_name="first"), job("b1", backup_name="last", attempts=2)
    saved = ledger.save_jobs([first, last], NOW)
    assert saved[0].id == saved[1].id is not None
    stored = ledger.get_job("b1", REGION)
    assert stored is not None
    assert (stored.backup_name, stored.attempts, stored.created_at) == ("last", 2, NOW)


def test_intents_are_written_only_for_jobs_this_owner_still_holds(ledger: SqlLedger) -> None:
    ledger.save_jobs([job("b1"), job("b2")], NOW)
    claimed = ledger.claim_jobs(
        owner="me", now=NOW, lease_until=NOW + timedelta(minutes=5), limit=2
    )
    assert [j.lease_owner for j in claimed] == ["me", "me"]
    later = NOW + timedelta(minutes=6)  # my lease ran out; another process claims b2
    taken = ledger.claim_job("b2", REGION, owner="other", now=later, lease_until=later)
    assert taken is not None
    intents = [j.evolve(state=JobState.SUBMITTING, attempts=1) for j in claimed]
    written = ledger.write_intents(intents, later, owner="me")
    assert [j.source_backup_id for j in written] == ["b1"]
    assert written[0].id == claimed[0].id
    b2 = ledger.get_job("b2", REGION)
    assert b2 is not None
    assert (b2.state, b2.attempts, b2.lease_owner) == (JobState.QUEUED, 0, "other")


def test_named_leases_exclude_other_owners_until_expiry(ledger: SqlLedger) -> None:
    until = NOW + timedelta(minutes=5)
    assert ledger.acquire_lease("sweep:web", owner="a", now=NOW, until=until)
    assert not ledger.acquire_lease("sweep:web", owner="b", now=NOW, until=until)
    assert ledger.acquire_lease("sweep:web", owner="a", now=NOW, until=until + timedelta(minutes=1))
    assert ledger.acquire_lease("sweep:db", owner="b", now=NOW, until=until)
    ledger.release_lease("sweep:web", owner="b")  # not b's: nothing happens
    assert not ledger.acquire_lease("sweep:web", owner="b", now=NOW, until=until)
    later = until + timedelta(minutes=2)
    assert ledger.acquire_lease(
        "sweep:web", owner="b", now=later, until=later + timedelta(minutes=1)
    )
    ledger.release_lease("sweep:web", owner="b")
    assert ledger.acquire_lease("sweep:web", owner="a", now=later, until=later)


def test_a_live_lease_of_a_holder_that_is_gone_is_taken_over(ledger: SqlLedger) -> None:
    # A process killed mid-sweep leaves its lease behind; the next one need not wait it out.
    until = NOW + timedelta(minutes=5)
    assert ledger.acquire_lease("sweep:web", owner="killed", now=NOW, until=until)
    asked: list[str] = []

    def alive(owner: str) -> bool:
        asked.append(owner)
        return False

    assert not ledger.acquire_lease("sweep:web", owner="b", now=NOW, until=until, holder_gone=alive)
    assert asked == ["killed"]
    assert ledger.acquire_lease(
        "sweep:web", owner="b", now=NOW, until=until, holder_gone=lambda owner: owner == "killed"
    )
    assert not ledger.acquire_lease("sweep:web", owner="killed", now=NOW, until=until)


def test_last_sweeps_are_the_newest_finished_per_policy(ledger: SqlLedger) -> None:
    for minute, policy in ((0, "web"), (10, "web"), (5, "db")):
        started = NOW + timedelta(minutes=minute)
        sweep_id = ledger.start_sweep(policy, started)
        ledger.finish_sweep(
            sweep_id,
            SweepReport(
                policy=policy,
                started_at=started,
                finished_at=started + timedelta(seconds=30),
                backups_seen=minute,
                reasons={"eligible": minute},
            ),
        )
    ledger.start_sweep("web", NOW + timedelta(hours=1))  # running, not finished
    last = ledger.last_sweeps()
    assert sorted(last) == ["db", "web"]
    assert last["web"].backups_seen == 10
    assert last["web"].reasons == {"eligible": 10}
    assert last["web"].finished_at == NOW + timedelta(minutes=10, seconds=30)


def test_reopening_keeps_everything(make_ledger: Callable[[], SqlLedger]) -> None:
    first = make_ledger()
    first.save_jobs([job("b-1", JobState.SUBMITTING)], NOW)
    first.add_binding(binding())
    first.close()
    second = make_ledger()
    assert second.schema_version() == SCHEMA_VERSION
    reopened = second.get_job("b-1", REGION)
    assert reopened is not None
    assert reopened.state == JobState.SUBMITTING
    assert second.get_binding("v-src", REGION) is not None


def test_instances_show_who_holds_what_and_when_each_was_last_seen(ledger: SqlLedger) -> None:
    ledger.heartbeat("host-a:10:1", role="daemon", now=NOW)
    ledger.heartbeat("host-b:20:2", role="run-once", now=NOW + timedelta(seconds=5))
    ledger.heartbeat("host-a:10:1", role="daemon", now=NOW + timedelta(seconds=30))
    ledger.acquire_lease(
        "sweep:web", owner="host-a:10:1", now=NOW, until=NOW + timedelta(minutes=5)
    )
    ledger.acquire_lease("sweep:db", owner="host-b:20:2", now=NOW, until=NOW + timedelta(seconds=1))
    ledger.save_jobs([job("b-1"), job("b-2")], NOW)
    ledger.claim_jobs(owner="host-a:10:1", now=NOW, lease_until=NOW + timedelta(minutes=2), limit=5)
    a, b = ledger.instances(NOW + timedelta(minutes=1))
    assert (a.owner, a.role, a.leases, a.jobs_leased) == (
        "host-a:10:1",
        "daemon",
        ("sweep:web",),
        2,
    )
    assert (a.started_at, a.last_seen_at) == (NOW, NOW + timedelta(seconds=30))
    assert (b.owner, b.leases, b.jobs_leased) == ("host-b:20:2", (), 0)  # its lease expired


def test_instances_not_seen_for_a_week_are_forgotten(ledger: SqlLedger) -> None:
    ledger.heartbeat("old:1:1", role="daemon", now=NOW)
    ledger.heartbeat("new:2:2", role="daemon", now=NOW + timedelta(days=8))
    assert [i.owner for i in ledger.instances(NOW + timedelta(days=8))] == ["new:2:2"]


def test_many_bindings_are_added_in_one_transaction_and_existing_ones_win(
    ledger: SqlLedger,
) -> None:
    commits: list[object] = []
    event.listen(ledger.engine, "commit", commits.append)
    vaults = [f"v-{index:03d}" for index in range(50)]
    added = ledger.add_bindings([binding(source_vault_id=vault) for vault in vaults])
    assert [b.source_vault_id for b in added] == vaults
    assert len(commits) == 1  # one transaction, not one per vault
    assert sorted(ledger.get_bindings(REGION, vaults)) == vaults
    # One vault was bound elsewhere meanwhile (another process): its binding is kept and
    # returned, the others are added.
    ledger.add_binding(binding(source_vault_id="v-late", destination_vault_id="v-other"))
    again = ledger.add_bindings(
        [binding(source_vault_id="v-new"), binding(source_vault_id="v-late")]
    )
    assert [(b.source_vault_id, b.destination_vault_id) for b in again] == [
        ("v-new", "v-dst"),
        ("v-late", "v-other"),
    ]
    assert ledger.add_bindings([]) == []
