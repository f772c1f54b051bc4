"""Contract tests: every operation of the cloud adapter, through the real SDK, over HTTP,
against the emulator; and every class of error the adapter must tell apart."""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from daemon.adapters.cloud.client import HuaweiCloud
from daemon.adapters.cloud.options import CloudOptions, Credentials
from daemon.core.errors import (
    AlreadyReplicatedError,
    AmbiguousError,
    BusyError,
    MalformedAnswerError,
    NotFoundError,
    PermanentError,
    PermissionDeniedError,
    ThrottledError,
    TransientError,
)
from daemon.core.model import Destination, ReplicaSpec
from daemon.emulator import Emulator

SOURCE = "cn-north-4"
DEST = "cn-south-1"


def backup(name: str, **fields: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": name,
        "resource_type": "OS::Nova::Server",
        "status": "available",
        "extend_info": {"contain_system_disk": True},
        "resource_size": 40,
    }
    document.update(fields)
    return document


def scenario() -> dict[str, Any]:
    many = [backup(f"bulk-{index:05}") for index in range(2500)]
    return {
        "regions": {
            SOURCE: {
                "replication_destinations": [DEST],
                "projects": [{"name": SOURCE}, {"name": f"{SOURCE}_ops"}],
                "vaults": [
                    {"name": "web-prod", "backups": [backup("web-1"), backup("web-2")]},
                    {"name": "bulk", "backups": many},
                    {"name": "old-dr", "protect_type": "replication"},
                ],
            },
            DEST: {"vaults": [{"name": "web-dr", "protect_type": "replication"}]},
        }
    }


class Sleeps:
    """Injected sleep and clock: records the waits instead of waiting, and the clock moves
    by each wait (the adapter's throttle gate reads it)."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.waits.append(seconds)
            self.now += seconds

    def clock(self) -> float:
        with self._lock:
            return self.now


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(scenario(), clock="manual") as running:
        yield running


@pytest.fixture(autouse=True)
def clean(emulator: Emulator) -> Iterator[None]:
    emulator.set_faults({})
    emulator.clear_requests()
    yield
    emulator.set_faults({})


def make_cloud(
    emulator: Emulator, sleeps: Sleeps | None = None, *, secret: str | None = None, **options: Any
) -> HuaweiCloud:
    credentials = Credentials(
        access_key=SecretStr(emulator.access_key),
        secret_key=SecretStr(secret or emulator.secret_key),
        domain_id=emulator.domain_id,
    )
    settings: dict[str, Any] = {
        "cbr_endpoints": {},
        "all_regions_endpoint": emulator.url,
        "requests_per_second": 1000,
        "read_attempts": 3,
        "read_timeout": timedelta(seconds=5),
    }
    settings.update(options)
    sleeps = sleeps or Sleeps()
    return HuaweiCloud(credentials, CloudOptions(**settings), sleep=sleeps, clock=sleeps.clock)


@pytest.fixture
def cloud(emulator: Emulator) -> HuaweiCloud:
    return make_cloud(emulator)


# -- operations ----------------------------------------------------------------------------


def test_default_and_named_projects_resolve_through_iam(
    cloud: HuaweiCloud, emulator: Emulator
) -> None:
    assert cloud.resolve_project(SOURCE) == emulator.project_id(SOURCE)
    ops = emulator.project_id(SOURCE, f"{SOURCE}_ops")
    assert cloud.resolve_project(SOURCE, f"{SOURCE}_ops") == ops
    assert cloud.resolve_project(SOURCE, ops) == ops
    with pytest.raises(NotFoundError) as missing:
        cloud.resolve_project(SOURCE, "cn-north-4_nope")
    assert missing.value.code == "project_not_found"
    # A project of another region is not accepted as a destination project here.
    with pytest.raises(NotFoundError):
        cloud.resolve_project(DEST, f"{SOURCE}_ops")


def test_projects_are_cached_and_configured_ones_skip_iam(emulator: Emulator) -> None:
    cloud = make_cloud(emulator, projects={SOURCE: "configured-id"})
    assert cloud.resolve_project(SOURCE) == "configured-id"
    assert emulator.requests("list_projects") == []
    cloud.resolve_project(DEST)
    cloud.resolve_project(DEST)
    assert len(emulator.requests("list_projects")) == 1


def test_replication_destinations(cloud: HuaweiCloud, emulator: Emulator) -> None:
    assert cloud.replication_destinations(SOURCE, emulator.project_id(SOURCE)) == {DEST}


def test_find_vault_by_name_and_id(cloud: HuaweiCloud, emulator: Emulator) -> None:
    project = emulator.project_id(SOURCE)
    by_name = cloud.find_vault(SOURCE, project, "web-prod")
    assert by_name.id == emulator.vault_id(SOURCE, "web-prod")
    assert (by_name.protect_type, by_name.object_type, by_name.region) == (
        "backup",
        "server",
        SOURCE,
    )
    assert cloud.find_vault(SOURCE, project, by_name.id) == by_name
    assert cloud.find_vault(SOURCE, project, "old-dr").is_replication_vault
    with pytest.raises(NotFoundError):
        cloud.find_vault(SOURCE, project, "no-such-vault")


def test_listing_pages_through_more_than_1000_backups(
    cloud: HuaweiCloud, emulator: Emulator
) -> None:
    project = emulator.project_id(SOURCE)
    pages = list(cloud.list_backup_pages(SOURCE, project, emulator.vault_id(SOURCE, "bulk")))
    assert [len(page) for page in pages] == [1000, 1000, 500]
    assert len({b.id for page in pages for b in page}) == 2500
    calls = emulator.requests("list_backups")
    assert [call["params"]["offset"][0] for call in calls] == ["0", "1000", "2000"]
    assert all(call["params"]["limit"] == ["1000"] for call in calls)
    assert all(call["params"]["show_replication"] == ["true"] for call in calls)


def test_show_backup_and_missing_backup(cloud: HuaweiCloud, emulator: Emulator) -> None:
    project = emulator.project_id(SOURCE)
    shown = cloud.show_backup(SOURCE, project, emulator.backup_id("web-1"))
    assert (shown.name, shown.contain_system_disk, shown.bytes) == ("web-1", True, 40 * 2**30)
    with pytest.raises(NotFoundError) as missing:
        cloud.show_backup(SOURCE, project, "00000000-0000-0000-0000-000000000000")
    assert missing.value.code == "BackupService.6200"


def destination(emulator: Emulator) -> Destination:
    return Destination(DEST, emulator.project_id(DEST), emulator.vault_id(DEST, "web-dr"))


def test_replicate_backup_then_1009_on_repeat(cloud: HuaweiCloud, emulator: Emulator) -> None:
    project = emulator.project_id(SOURCE)
    backup_id = emulator.backup_id("web-2")
    spec = ReplicaSpec("web-2-copy", "a copy")
    accepted = cloud.replicate_backup(SOURCE, project, backup_id, destination(emulator), spec)
    assert accepted.replication_record_id
    assert accepted.request_id
    body = emulator.requests("replicate_backup")[0]["body"]["replicate"]
    assert body["name"] == "web-2-copy"
    assert body["destination_vault_id"] == emulator.vault_id(DEST, "web-dr")
    records = cloud.show_backup(SOURCE, project, backup_id).replication_records
    assert [r.id for r in records] == [accepted.replication_record_id]
    with pytest.raises(AlreadyReplicatedError) as again:
        cloud.replicate_backup(SOURCE, project, backup_id, destination(emulator), spec)
    assert again.value.code == "BackupService.1009"


def test_replicating_a_replication_vault_backup_is_permanent(
    cloud: HuaweiCloud, emulator: Emulator
) -> None:
    project = emulator.project_id(SOURCE)
    bad = Destination(DEST, emulator.project_id(DEST), "no-such-vault")
    with pytest.raises(PermanentError) as refused:
        cloud.replicate_backup(
            SOURCE, project, emulator.backup_id("web-1"), bad, ReplicaSpec("x", "")
        )
    assert refused.value.code
    assert refused.value.code.startswith("BackupService.")


def test_replicate_vault(cloud: HuaweiCloud, emulator: Emulator) -> None:
    project = emulator.project_id(SOURCE)
    accepted = cloud.replicate_vault(
        SOURCE, project, emulator.vault_id(SOURCE, "web-prod"), destination(emulator), False
    )
    assert set(accepted.records) <= {emulator.backup_id("web-1"), emulator.backup_id("web-2")}
    assert accepted.records, "at least web-1 was eligible"
    again = functools.partial(
        cloud.replicate_vault,
        SOURCE,
        project,
        emulator.vault_id(SOURCE, "web-prod"),
        destination(emulator),
        False,
    )
    with pytest.raises(BusyError) as busy:  # 6130 while its replications run: try later
        again()
    assert busy.value.code == "BackupService.6130"
    emulator.advance(3600)
    with pytest.raises(PermanentError):  # replicated once: the cloud's once-only rule
        again()


# -- error classes -------------------------------------------------------------------------


def test_wrong_secret_key_is_a_permission_error(emulator: Emulator) -> None:
    cloud = make_cloud(emulator, secret="wrong-secret")
    with pytest.raises(PermissionDeniedError) as denied:
        cloud.replication_destinations(SOURCE, emulator.project_id(SOURCE))
    assert denied.value.status == 401
    assert "wrong-secret" not in str(denied.value)
    assert len(emulator.requests("capabilities")) == 1, "a 401 is never retried"


def test_throttled_read_is_sent_again_until_the_throttle_budget(emulator: Emulator) -> None:
    sleeps = Sleeps()
    cloud = make_cloud(emulator, sleeps, throttle_budget=timedelta(seconds=60))
    emulator.set_faults({"operations": {"capabilities": {"throttle_rate": 1.0}}})
    with pytest.raises(ThrottledError) as throttled:
        cloud.replication_destinations(SOURCE, emulator.project_id(SOURCE))
    assert throttled.value.code == "APIGW.0308"
    assert all(wait >= 1.0 for wait in sleeps.waits), "Retry-After: 1 honoured"
    assert sleeps.waits[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0], "one growing backoff"
    # sent once after each pause until a minute of throttling: then given up, not retried
    assert len(emulator.requests("capabilities")) == 7


def test_read_recovers_after_a_transient_error(emulator: Emulator) -> None:
    sleeps = Sleeps()
    cloud = make_cloud(emulator, sleeps)
    emulator.set_faults({"operations": {"capabilities": {"error_before_rate": 0.5}}})
    # With a 50 % error rate, 40 reads of 3 attempts each all succeed unless 3 fail in a row.
    failures = 0
    for _ in range(40):
        try:
            cloud.replication_destinations(SOURCE, emulator.project_id(SOURCE))
        except TransientError:
            failures += 1
    assert sleeps.waits, "some reads were retried"
    assert failures < 20


@pytest.mark.parametrize("kind", ["malformed_rate", "html_rate"])
def test_garbled_read_is_a_malformed_answer(emulator: Emulator, kind: str) -> None:
    cloud = make_cloud(emulator)
    emulator.set_faults({"operations": {"show_vault": {kind: 1.0}, "list_vaults": {kind: 1.0}}})
    with pytest.raises(MalformedAnswerError):
        cloud.find_vault(SOURCE, emulator.project_id(SOURCE), "web-prod")


@pytest.mark.parametrize("kind", ["error_after_rate", "reset_after_rate", "html_rate"])
def test_uncertain_replicate_is_ambiguous(emulator: Emulator, kind: str) -> None:
    cloud = make_cloud(emulator)
    project = emulator.project_id(SOURCE)
    new = emulator.add_backup({**backup(f"fresh-{kind}"), "vault": "web-prod"})
    emulator.set_faults({"operations": {"replicate_backup": {kind: 1.0}}})
    with pytest.raises(AmbiguousError):
        cloud.replicate_backup(
            SOURCE, project, new["id"], destination(emulator), ReplicaSpec("fresh", "")
        )
    assert len(emulator.requests("replicate_backup")) == 1, "a POST is never retried here"


def test_slow_replicate_past_the_read_timeout_is_ambiguous(emulator: Emulator) -> None:
    cloud = make_cloud(emulator, read_timeout=timedelta(seconds=0.3))
    project = emulator.project_id(SOURCE)
    new = emulator.add_backup({**backup("fresh-slow"), "vault": "web-prod"})
    emulator.set_faults(
        {"operations": {"replicate_backup": {"slow_after_rate": 1.0, "slow_seconds": 1.0}}}
    )
    with pytest.raises(AmbiguousError):
        cloud.replicate_backup(
            SOURCE, project, new["id"], destination(emulator), ReplicaSpec("fresh", "")
        )


def test_throttled_replicate_is_transient_not_ambiguous(emulator: Emulator) -> None:
    cloud = make_cloud(emulator)
    project = emulator.project_id(SOURCE)
    emulator.set_faults({"operations": {"replicate_backup": {"throttle_rate": 1.0}}})
    with pytest.raises(TransientError) as throttled:
        cloud.replicate_backup(
            SOURCE,
            project,
            emulator.backup_id("web-1"),
            destination(emulator),
            ReplicaSpec("x", ""),
        )
    assert throttled.value.status == 429
    assert not isinstance(throttled.value, ThrottledError), "the budget is not spent"
    # a 429 was never applied: sent again after each pause while a POST may wait (40 s):
    # after 1 + 2 + 4 + 8 + 16 s, the next pause (32 s) would end past it
    assert len(emulator.requests("replicate_backup")) == 6


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_refused_connection_is_transient_even_for_a_post(emulator: Emulator) -> None:
    cloud = make_cloud(emulator, all_regions_endpoint=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(TransientError):
        cloud.replicate_backup(SOURCE, "p", "b", destination(emulator), ReplicaSpec("x", ""))
    with pytest.raises(TransientError):
        cloud.show_backup(SOURCE, "p", "b")


def test_concurrency_bounds_the_requests_on_the_wire_and_a_failure_frees_its_slot(
    emulator: Emulator,
) -> None:
    """``cloud.concurrency`` slots are held from the SDK's send to the answer (issue 7): more
    threads than slots never put more requests in flight, and a call that fails between the
    send and the answer (a reset) gives its slot back."""
    cloud = make_cloud(emulator, concurrency=2)
    project = cloud.resolve_project(SOURCE)
    web = emulator.vault_id(SOURCE, "web-prod")
    emulator.set_faults({"latency_ms": 20})
    emulator.clear_requests()

    def list_web(_: int) -> int:
        return sum(len(page) for page in cloud.list_backup_pages(SOURCE, project, web))

    with ThreadPoolExecutor(max_workers=6) as pool:
        counts = set(pool.map(list_web, range(12)))
    assert len(counts) == 1
    assert counts.pop() >= 2
    assert emulator.most_in_flight() == 2

    emulator.set_faults({"operations": {"list_backups": {"reset_after_rate": 1.0}}})
    for _ in range(3):  # more failures than slots: a leaked slot blocks a later call
        with pytest.raises(TransientError):
            within_30s(list_web)
    emulator.set_faults({})
    assert within_30s(list_web) >= 2


def within_30s(call: Callable[[int], int]) -> int:
    """``call(0)`` in a daemon thread, so a call blocked for good fails the test instead of
    hanging it (and the interpreter's exit)."""
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(_outcome(call)), daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert outcome, "the call is still blocked: a concurrency slot was never given back"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    result: int = outcome[0]
    return result


def _outcome(call: Callable[[int], int]) -> int | BaseException:
    try:
        return call(0)
    except Exception as error:
        return error
