"""T5 (docs/design.md §13): malformed API answers, through the real adapter and the engine.

The emulator answers with missing keys, wrong types, nulls, empty pages, truncated JSON, an
HTML page with status 200, and a listing that changes between two calls. Every such answer
must become a classified error of ``daemon.errors`` (never a crash, never an unclassified
exception), change no job beyond ``submitting`` (the intent), and leave the sweep going on
with the next backup or vault. Shapes that the fault injector has no rate for are made by
wrapping the emulator's operation dispatch (the cloud's side; our adapter is untouched); a
truncated answer to an applied POST uses the injector's ``malformed_writes`` switch.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog.testing

from daemon.adapters.cloud import client as cloud_module
from daemon.adapters.cloud.client import HuaweiCloud
from daemon.adapters.ledger import SqlLedger, open_ledger
from daemon.core.errors import AmbiguousError, MalformedAnswerError, TransientError
from daemon.core.model import Destination, Job, JobState
from daemon.core.policy import Policy
from daemon.emulator import Emulator
from daemon.emulator import server as emulator_server
from daemon.engine import run, submit, track
from daemon.engine.context import Engine
from daemon.engine.resolve import resolve_policy
from daemon.engine.sweep import sweep_policy
from tests.reliability.reliability_support import ManualClock, engine_on, meet_at_the_emulator

SOURCE = "cn-north-4"
DEST = "cn-south-1"
Payload = dict[str, Any]
Rewrite = Callable[[Payload, dict[str, list[str]]], Any]


def server_backup(name: str, **fields: Any) -> Payload:
    backup: Payload = {
        "name": name,
        "resource_type": "OS::Nova::Server",
        "status": "available",
        "resource_size": 10,
        "extend_info": {"contain_system_disk": True},
    }
    backup.update(fields)
    return backup


def scenario() -> Payload:
    return {
        "settings": {"wait_seconds": 10, "replicate_seconds": 60},
        "regions": {
            SOURCE: {
                "replication_destinations": [DEST],
                "vaults": [
                    {"name": "bad-prod", "backups": [server_backup(f"bad-{i}") for i in range(3)]},
                    {
                        "name": "good-prod",
                        "backups": [server_backup(f"good-{i}") for i in range(3)],
                    },
                ],
            },
            DEST: {"vaults": [{"name": "dr", "protect_type": "replication"}]},
        },
    }


def make_policy(vaults: list[str], name: str = "dr") -> Policy:
    return Policy.model_validate(
        {
            "name": name,
            "source": {"region": SOURCE, "vaults": vaults},
            "destination": {"region": DEST, "vault": "dr"},
            "schedule": {"interval": "1h"},
            "max_in_flight": 50,
        }
    )


class Answers:
    """Rewrites of the emulator's answers, per operation (the cloud's side of the wire)."""

    def __init__(self) -> None:
        self.rewrites: dict[str, Rewrite] = {}

    def dispatch(self, original: Callable[..., Payload]) -> Callable[..., Any]:
        def dispatch(
            server: Any, operation: str, params: Any, query: dict[str, list[str]], body: Any
        ) -> Any:
            payload = original(server, operation, params, query, body)
            rewrite = self.rewrites.get(operation)
            return payload if rewrite is None else rewrite(copy.deepcopy(payload), query)

        return dispatch


@dataclass
class World:
    """The emulator, an adapter on it, a ledger and an engine: one daemon in a test."""

    emulator: Emulator
    answers: Answers
    ledger: SqlLedger
    engine: Engine
    clock: ManualClock

    @property
    def cloud(self) -> HuaweiCloud:
        assert isinstance(self.engine.cloud, HuaweiCloud)
        return self.engine.cloud

    def vault_id(self, name: str) -> str:
        return self.emulator.vault_id(SOURCE, name)

    def backup_id(self, name: str) -> str:
        return self.emulator.backup_id(name)

    def jobs(self) -> dict[str, Job]:
        return {
            job.source_backup_id: job
            for job in self.ledger.jobs_in_states(set(JobState), limit=10_000)
        }

    def names(self, states: set[JobState] | None = None) -> set[str]:
        by_id = {b["id"]: b["name"] for b in self.emulator.state()["backups"].values()}
        return {
            by_id.get(job.source_backup_id, job.source_backup_id)
            for job in self.jobs().values()
            if states is None or job.state in states
        }

    def posts(self) -> list[Payload]:
        return [r for r in self.emulator.requests() if r["method"] == "POST"]

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    emulator = Emulator(scenario(), clock="manual")
    emulator.start()
    answers = Answers()
    monkeypatch.setattr(emulator_server, "dispatch", answers.dispatch(emulator_server.dispatch))
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    clock = ManualClock(emulator)
    engine = engine_on(emulator, ledger, clock)
    yield World(emulator, answers, ledger, engine, clock)
    ledger.close()
    emulator.stop()


# -- the shapes ----------------------------------------------------------------------------


def for_vault(vault_id: Callable[[], str], rewrite: Callable[[Payload], Any]) -> Rewrite:
    """A listing rewrite that hits one vault's listing only."""

    def apply(payload: Payload, query: dict[str, list[str]]) -> Any:
        return rewrite(payload) if query.get("vault_id") == [vault_id()] else payload

    return apply


def set_in(path: tuple[Any, ...], value: Any) -> Callable[[Payload], Payload]:
    def rewrite(payload: Payload) -> Payload:
        target: Any = payload
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        return payload

    return rewrite


def drop(path: tuple[Any, ...]) -> Callable[[Payload], Payload]:
    def rewrite(payload: Payload) -> Payload:
        target: Any = payload
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]
        return payload

    return rewrite


# Whole-answer shapes of a backup listing page: the page cannot be read at all.
PAGE_SHAPES: dict[str, Callable[[Payload], Any]] = {
    "missing backups": drop(("backups",)),
    "backups null": set_in(("backups",), None),
    "backups a string": set_in(("backups",), "none"),
    "backups an object": set_in(("backups",), {"id": "x"}),
    "count a string": set_in(("count",), "many"),
    "answer a list": lambda payload: [payload],
    "answer a string": lambda payload: "ok",
    "answer null": lambda payload: None,
    # Deeper than any parser recurses, in a field the fast decoder skips (it raised
    # RecursionError, an unclassified crash).
    "nested too deeply": set_in(
        ("backups", 0, "extend_info"), msgspec.Raw(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    ),
}
# Shapes of one backup object (in a listing page, or the answer of ShowBackup).
BACKUP_SHAPES: dict[str, Callable[[Payload], Any]] = {
    "missing id": drop(("id",)),
    "id null": set_in(("id",), None),
    "id a number": set_in(("id",), 12345),
    "missing status": drop(("status",)),
    "status null": set_in(("status",), None),
    "missing vault_id": drop(("vault_id",)),
    "resource_type a list": set_in(("resource_type",), ["OS::Nova::Server"]),
    "image_type a bool": set_in(("image_type",), True),
    "resource_size a string": set_in(("resource_size",), "10GB"),
    # Past a 64-bit integer once in bytes: the ledger overflowed (OverflowError, exit 1).
    "resource_size 1e300": set_in(("resource_size",), 1e300),
    "resource_size 10**30": set_in(("resource_size",), 10**30),
    "resource_size negative": set_in(("resource_size",), -40),
    "extend_info a list": set_in(("extend_info",), []),
    "children a string": set_in(("children",), "none"),
    "replication_records an object": set_in(("replication_records",), {"id": "r"}),
    "replication record a string": set_in(("replication_records",), ["rec"]),
    "replication record without id": set_in(
        ("replication_records",), [{"status": "success", "destination_region": DEST}]
    ),
    "replication record status null": set_in(
        ("replication_records",), [{"id": "r1", "status": None, "destination_region": DEST}]
    ),
    "backup a string": lambda backup: "backup",
    "backup null": lambda backup: None,
}


def backup_in_page(index: int, shape: Callable[[Payload], Any]) -> Callable[[Payload], Payload]:
    def rewrite(payload: Payload) -> Payload:
        payload["backups"][index] = shape(payload["backups"][index])
        return payload

    return rewrite


def in_show(shape: Callable[[Payload], Any]) -> Rewrite:
    def rewrite(payload: Payload, query: dict[str, list[str]]) -> Any:
        payload["backup"] = shape(payload["backup"])
        return payload

    return rewrite


# -- the adapter: a classified error, whatever the shape -----------------------------------


@pytest.mark.parametrize("shape", list(PAGE_SHAPES))
def test_a_malformed_listing_page_is_a_classified_error(world: World, shape: str) -> None:
    rewrite = PAGE_SHAPES[shape]
    world.answers.rewrites["list_backups"] = lambda payload, query: rewrite(payload)
    project = world.emulator.project_id(SOURCE)
    with pytest.raises(MalformedAnswerError):
        for _ in world.cloud.list_backup_pages(SOURCE, project, world.vault_id("good-prod")):
            pass


@pytest.mark.parametrize("shape", list(BACKUP_SHAPES))
def test_a_malformed_backup_in_a_listing_is_skipped_and_logged(world: World, shape: str) -> None:
    """The page's other backups are listed; the odd one is named in a warning."""
    world.answers.rewrites["list_backups"] = lambda payload, query: backup_in_page(
        1, BACKUP_SHAPES[shape]
    )(payload)
    project = world.emulator.project_id(SOURCE)
    with structlog.testing.capture_logs() as logs:
        pages = list(world.cloud.list_backup_pages(SOURCE, project, world.vault_id("good-prod")))
    assert [len(page) for page in pages] == [2]
    warnings = [entry for entry in logs if entry["event"] == "malformed_backup_skipped"]
    assert len(warnings) == 1
    assert "ListBackups" in warnings[0]["error"]


@pytest.mark.parametrize("shape", [*list(BACKUP_SHAPES), "missing backup"])
def test_a_malformed_backup_is_a_classified_error(world: World, shape: str) -> None:
    rewrite = drop(("backup",)) if shape == "missing backup" else None
    world.answers.rewrites["show_backup"] = (
        (lambda payload, query: rewrite(payload)) if rewrite else in_show(BACKUP_SHAPES[shape])
    )
    project = world.emulator.project_id(SOURCE)
    with pytest.raises(MalformedAnswerError):
        world.cloud.show_backup(SOURCE, project, world.backup_id("good-0"))


@pytest.mark.parametrize("fault", ["malformed", "html", "redirect"])
@pytest.mark.parametrize(
    ("operation", "call"),
    [
        ("list_backups", "list"),
        ("show_backup", "show"),
        ("list_vaults", "vault"),
        ("capabilities", "capabilities"),
    ],
)
def test_truncated_json_and_html_pages_are_classified(
    world: World, fault: str, operation: str, call: str
) -> None:
    """Truncated JSON (a 200 whose body stops half-way), an HTML page with status 200, and the
    operation's own answer under a 302 (the SDK raises for 4xx and 5xx only)."""
    world.emulator.set_faults({"operations": {operation: {f"{fault}_rate": 1.0}}})
    project = world.emulator.project_id(SOURCE)
    calls: dict[str, Callable[[], object]] = {
        "list": lambda: list(
            world.cloud.list_backup_pages(SOURCE, project, world.vault_id("good-prod"))
        ),
        "show": lambda: world.cloud.show_backup(SOURCE, project, world.backup_id("good-0")),
        "vault": lambda: world.cloud.find_vault(SOURCE, project, "good-prod"),
        "capabilities": lambda: world.cloud.replication_destinations(SOURCE, project),
    }
    with pytest.raises(MalformedAnswerError):
        calls[call]()


@pytest.mark.parametrize(
    "shape",
    [
        "missing vaults",
        "vault without billing",
        "billing protect_type null",
        "capabilities without regions",
        "capability destinations a string",
        "projects missing",
        "project id null",
    ],
)
def test_malformed_resolution_answers_are_classified(world: World, shape: str) -> None:
    rewrites: dict[str, tuple[str, Callable[[Payload], Any]]] = {
        "missing vaults": ("list_vaults", drop(("vaults",))),
        "vault without billing": ("list_vaults", drop(("vaults", 0, "billing"))),
        "billing protect_type null": (
            "list_vaults",
            set_in(("vaults", 0, "billing", "protect_type"), None),
        ),
        "capabilities without regions": ("capabilities", drop(("regions",))),
        "capability destinations a string": (
            "capabilities",
            set_in(("regions", 0, "replication_destinations"), DEST),
        ),
        "projects missing": ("list_projects", drop(("projects",))),
        "project id null": ("list_projects", set_in(("projects", 0, "id"), None)),
    }
    operation, rewrite = rewrites[shape]
    world.answers.rewrites[operation] = lambda payload, query: rewrite(payload)
    with pytest.raises(MalformedAnswerError):
        resolve_policy(world.engine, make_policy(["good-prod"]))


REPLICATE_SHAPES: dict[str, Callable[[Payload], Any]] = {
    "missing replication": drop(("replication",)),
    "replication null": set_in(("replication",), None),
    "missing record id": drop(("replication", "replication_record_id")),
    "record id null": set_in(("replication", "replication_record_id"), None),
    "record id a number": set_in(("replication", "replication_record_id"), 7),
    "answer a list": lambda payload: [payload],
}


@pytest.mark.parametrize("shape", [*REPLICATE_SHAPES, "truncated", "html", "redirect"])
def test_a_malformed_replicate_answer_is_ambiguous_and_never_resent(
    world: World, shape: str
) -> None:
    """The POST was applied (or, for HTML, maybe not): the job stays ``submitting``, the
    adapter sends it once, and the next pass reconciles instead of posting again."""
    if shape == "truncated":
        world.emulator.set_faults(
            {"operations": {"replicate_backup": {"malformed_rate": 1.0, "malformed_writes": True}}}
        )
    elif shape in ("html", "redirect"):  # a redirect: applied, then answered 302
        world.emulator.set_faults({"operations": {"replicate_backup": {f"{shape}_rate": 1.0}}})
    else:
        rewrite = REPLICATE_SHAPES[shape]
        world.answers.rewrites["replicate_backup"] = lambda payload, query: rewrite(payload)
    policy = make_policy(["good-prod"])
    report, _ = sweep_policy(world.engine, policy)
    assert report.error is None, report.error
    jobs = world.jobs()
    assert len(jobs) == 3
    assert {job.state for job in jobs.values()} == {JobState.SUBMITTING}
    assert all(job.attempts == 1 for job in jobs.values())
    assert len(world.posts()) == 3, "a POST is never retried by the adapter"
    attempts = world.ledger.history(limit=10)
    assert {entry.outcome for entry in attempts} == {"ambiguous"}
    # The cloud answers properly again: reconcile first, never a second POST.
    world.emulator.set_faults({})
    world.answers.rewrites.clear()
    world.advance(world.engine.recheck.total_seconds() + 1)  # past the recheck
    applied = shape != "html"
    sweep_policy(world.engine, policy)
    assert len(world.posts()) == (3 if applied else 6)
    assert world.emulator.duplicates() == []
    assert {job.state for job in world.jobs().values()} == {JobState.REPLICATING}


def test_a_malformed_vault_replicate_answer_is_ambiguous(world: World) -> None:
    world.answers.rewrites["replicate_vault"] = lambda payload, query: set_in(
        ("replication", "backups"), "all"
    )(payload)
    project = world.emulator.project_id(SOURCE)
    destination_project = world.emulator.project_id(DEST)
    destination = Destination(DEST, destination_project, world.emulator.vault_id(DEST, "dr"))
    with pytest.raises(AmbiguousError):
        world.cloud.replicate_vault(
            SOURCE, project, world.vault_id("good-prod"), destination, False
        )
    assert len(world.emulator.requests("replicate_vault")) == 1


def test_an_empty_page_ends_the_listing_quietly(world: World) -> None:
    """An empty page whose count promises more: nothing to decide, no error, no request
    loop (the listing stops)."""
    world.answers.rewrites["list_backups"] = lambda payload, query: {**payload, "backups": []}
    project = world.emulator.project_id(SOURCE)
    pages = list(world.cloud.list_backup_pages(SOURCE, project, world.vault_id("good-prod")))
    assert pages == []
    assert len(world.emulator.requests("list_backups")) == 1


# -- the engine: no state change beyond submitting, the sweep goes on ------------------------


def assert_only_intents(before: dict[str, Job], after: dict[str, Job]) -> None:
    """Every job is as it was, except that a due one may have moved to ``submitting``."""
    for backup_id, job in before.items():
        now = after[backup_id]
        if now.state != job.state:
            assert now.state == JobState.SUBMITTING, (job, now)
        else:
            assert now.replication_record_id == job.replication_record_id
            assert now.replica_backup_id == job.replica_backup_id


@pytest.mark.parametrize("shape", list(PAGE_SHAPES))
def test_a_vault_whose_listing_is_malformed_does_not_stop_the_next_vault(
    world: World, shape: str
) -> None:
    """The bad vault's jobs stay as they were and its new backup waits; the good vault's
    new backup is enqueued and submitted in the same sweep, whose report names the error."""
    policy = make_policy(["bad-prod", "good-prod"])
    sweep_policy(world.engine, policy)  # every backup of both vaults: replicating
    for name in ("bad-new", "good-new"):
        world.emulator.add_backup(server_backup(name, vault=name.replace("new", "prod")))
    before = world.jobs()
    world.answers.rewrites["list_backups"] = for_vault(
        lambda: world.vault_id("bad-prod"), PAGE_SHAPES[shape]
    )
    report, _ = sweep_policy(world.engine, policy)
    assert report.error is not None, "the bad vault is reported"
    assert report.error_reason == "MalformedAnswerError", report
    after = world.jobs()
    assert {key: after[key] for key in before} == before, "no job changed"
    good = {name for name in world.names() if name.startswith("good-")}
    assert good == {"good-0", "good-1", "good-2", "good-new"}, "the good vault was swept"
    assert "bad-new" not in world.names(), "left for the next sweep"
    assert after[world.backup_id("good-new")].state == JobState.REPLICATING


@pytest.mark.parametrize("shape", list(BACKUP_SHAPES))
def test_a_malformed_backup_does_not_stop_the_next_backup(world: World, shape: str) -> None:
    """One bad backup in a page: the others of that page (and of the other vault) go on."""
    policy = make_policy(["bad-prod", "good-prod"])
    world.answers.rewrites["list_backups"] = for_vault(
        lambda: world.vault_id("bad-prod"), backup_in_page(1, BACKUP_SHAPES[shape])
    )
    sweep_policy(world.engine, policy)
    names = world.names()
    assert {"good-0", "good-1", "good-2"} <= names
    assert len(names & {"bad-0", "bad-1", "bad-2"}) == 2, "only the malformed one is skipped"


@pytest.mark.parametrize("shape", [*list(BACKUP_SHAPES), "truncated", "html"])
def test_malformed_reads_while_reconciling_and_tracking_change_nothing(
    world: World, shape: str
) -> None:
    """Jobs ``replicating`` and one left ``submitting`` (its POST landed, the answer was
    garbage); then every ShowBackup answer is malformed. Reconcile is deferred (the job stays
    submitting, no second POST); tracking logs each job's classified error and moves none."""
    policy = make_policy(["good-prod"])
    target = resolve_policy(world.engine, policy).target
    sweep_policy(world.engine, policy)
    world.emulator.add_backup(server_backup("good-new", vault="good-prod"))
    world.answers.rewrites["replicate_backup"] = lambda payload, query: None
    sweep_policy(world.engine, policy)
    world.answers.rewrites.clear()
    before = world.jobs()
    assert before.pop(world.backup_id("good-new")).state == JobState.SUBMITTING
    assert {job.state for job in before.values()} == {JobState.REPLICATING}
    before = world.jobs()
    posts = len(world.posts())
    if shape in ("truncated", "html"):
        kind = "malformed" if shape == "truncated" else "html"
        world.emulator.set_faults({"operations": {"show_backup": {f"{kind}_rate": 1.0}}})
    else:
        world.answers.rewrites["show_backup"] = in_show(BACKUP_SHAPES[shape])
    world.advance(120)  # the records have finished: only a read could tell
    report = submit.submit_due(world.engine, target)
    assert report.deferred == 1
    replicating = world.ledger.jobs_in_states({JobState.REPLICATING}, limit=100)
    with structlog.testing.capture_logs() as logs:
        assert track.track_jobs(world.engine, replicating, target.retry) == []
    skipped = [entry for entry in logs if entry["event"] == "track_skipped"]
    assert len(skipped) == len(replicating) == 3, "each one classified and logged"
    after = world.jobs()
    assert {key: job.state for key, job in after.items()} == {
        key: job.state for key, job in before.items()
    }
    assert all(after[key].attempts == job.attempts for key, job in before.items())
    assert len(world.posts()) == posts, "a job left submitting is reconciled, never re-posted"
    # Proper answers again: everything is learnt from the cloud, still without a POST.
    world.emulator.set_faults({})
    world.answers.rewrites.clear()
    world.advance(world.engine.recheck.total_seconds() + 1)  # past the recheck
    submit.submit_due(world.engine, target)
    track.track_jobs(
        world.engine,
        world.ledger.jobs_in_states({JobState.REPLICATING}, limit=100),
        target.retry,
    )
    assert {job.state for job in world.jobs().values()} == {JobState.SUCCEEDED}
    assert len(world.posts()) == posts
    assert world.emulator.duplicates() == []


@pytest.mark.parametrize("change", ["added", "deleted"])
def test_a_listing_that_changes_between_pages(
    world: World, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Backups added (the listing shifts down: page 2 repeats the end of page 1) or deleted
    (it shifts up: one backup slips past) between two pages of one listing: no error, no
    backup decided twice into two jobs, and the next sweep decides every backup."""
    monkeypatch.setattr(cloud_module, "PAGE_SIZE", 2)
    vault = world.vault_id("good-prod")
    for index in range(3, 7):
        world.emulator.add_backup(server_backup(f"good-{index}", vault="good-prod"))
    policy = make_policy(["good-prod"])
    pages = itertools.count()

    def shift(payload: Payload, query: dict[str, list[str]]) -> Payload:
        if next(pages) == 0:  # the first page has gone out: now the vault changes
            if change == "added":
                for name in ("late-1", "late-2"):
                    late = server_backup(name, vault="good-prod", created_at="2030-01-01T00:00:00")
                    world.emulator.world.add_backup(late)
            else:
                world.emulator.world.delete_backup(payload["backups"][0]["id"])
        return payload

    world.answers.rewrites["list_backups"] = shift
    report, _ = sweep_policy(world.engine, policy, submit=False)
    assert report.error is None, report.error
    listed = {
        b["name"] for b in world.emulator.state()["backups"].values() if b["vault_id"] == vault
    }
    decided = world.names()
    if change == "added":
        assert decided == listed - {"late-1", "late-2"}, "the repeats were dropped, none lost"
    else:
        assert len(listed - decided) == 1, "one backup slipped past this sweep"
    world.answers.rewrites.clear()
    report, _ = sweep_policy(world.engine, policy, submit=False)
    assert report.error is None
    assert listed <= world.names(), "the next sweep decided every backup"
    assert len(world.jobs()) == len(world.names())


def test_one_malformed_backup_does_not_stop_tracking_the_others(world: World) -> None:
    policy = make_policy(["good-prod"])
    target = resolve_policy(world.engine, policy).target
    sweep_policy(world.engine, policy)
    odd = world.backup_id("good-1")

    def one_odd(payload: Payload, query: dict[str, list[str]]) -> Payload:
        if payload["backup"]["id"] == odd:
            payload["backup"]["status"] = None
        return payload

    world.answers.rewrites["show_backup"] = one_odd
    world.advance(120)  # every replication has finished
    replicating = world.ledger.jobs_in_states({JobState.REPLICATING}, limit=100)
    assert len(replicating) == 3
    track.track_jobs(world.engine, replicating, target.retry)
    assert world.names({JobState.SUCCEEDED}) == {"good-0", "good-2"}
    assert world.names({JobState.REPLICATING}) == {"good-1"}


def test_tracking_reads_the_backups_at_once(world: World) -> None:
    """Each backup's read waits at the emulator for the other two: one by one, the first
    waits alone and the barrier breaks."""
    policy = make_policy(["good-prod"])
    target = resolve_policy(world.engine, policy).target
    sweep_policy(world.engine, policy)
    world.advance(120)
    replicating = world.ledger.jobs_in_states({JobState.REPLICATING}, limit=100)
    met = meet_at_the_emulator(world.emulator, "show_backup", parties=len(replicating))
    track.track_jobs(world.engine, replicating, target.retry)
    assert met == [True] * 3
    assert world.names({JobState.SUCCEEDED}) == {"good-0", "good-1", "good-2"}


def test_the_cloud_unreachable_ends_a_tracking_round_and_saves_nothing(world: World) -> None:
    policy = make_policy(["good-prod"])
    target = resolve_policy(world.engine, policy).target
    sweep_policy(world.engine, policy)
    world.advance(120)  # every replication has finished, but nobody can tell
    replicating = world.ledger.jobs_in_states({JobState.REPLICATING}, limit=100)
    world.emulator.set_faults({"operations": {"show_backup": {"error_before_rate": 1.0}}})
    with pytest.raises(TransientError):
        track.track_jobs(world.engine, replicating, target.retry)
    assert world.names({JobState.REPLICATING}) == {"good-0", "good-1", "good-2"}


def test_a_wait_round_tracks_every_replicating_job_a_batch_at_a_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = make_policy(["good-prod"])
    target = resolve_policy(world.engine, policy).target
    sweep_policy(world.engine, policy)
    world.advance(120)
    monkeypatch.setattr(track, "TRACK_BATCH", 1)
    run._track_policy(world.engine, policy.name, target.retry)
    assert world.names({JobState.SUCCEEDED}) == {"good-0", "good-1", "good-2"}


def test_the_cloud_unreachable_still_stops_the_sweep(world: World) -> None:
    """Only a vault's own odd answers let the sweep go on to the next vault: when the cloud
    does not answer (retries exhausted), the other vaults would only wait for the same."""
    world.emulator.set_faults({"operations": {"list_backups": {"error_before_rate": 1.0}}})
    report, _ = sweep_policy(world.engine, make_policy(["bad-prod", "good-prod"]))
    assert report.error_reason == "BackupService.9910", report
    assert len(world.emulator.requests("list_backups")) <= 2 * 3  # read_attempts per vault
    assert world.jobs() == {}
