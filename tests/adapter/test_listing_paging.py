"""Listing pages through the real SDK against the emulator's faulty listing modes: a short or
empty page ends a listing (``count`` alone never does), an explicit ``sort`` keeps offset paging
stable, and a listing that would never end (a server ignoring ``offset``, endless fresh pages)
is ended with a clear error for that listing, whose vault fails while the others are swept."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.adapters.cloud.client import LISTING_SORT, PAGE_SIZE, HuaweiCloud
from daemon.adapters.ledger import open_ledger
from daemon.core.errors import MalformedAnswerError, PermanentError
from daemon.core.model import JobState
from daemon.core.policy import Policy
from daemon.emulator import Emulator
from daemon.engine.sweep import sweep_policy
from tests.engine.harness import policy, server_backup
from tests.reliability.reliability_support import ManualClock, cloud_on, engine_on

SOURCE, DEST = "cn-north-4", "cn-south-1"
BACKUPS = 2500  # two full pages and a short one
START = datetime(2026, 1, 1, tzinfo=UTC)
PAGES_AT_MOST = 50  # a test reads no more before deciding that a listing did not end
ENDS_WITHIN = 60.0  # seconds: a listing still going then never ends (a pass takes far less)


def backups(prefix: str, count: int) -> list[dict[str, Any]]:
    return [
        server_backup(f"{prefix}-{i}", created_at=(START + timedelta(minutes=i)).isoformat())
        for i in range(count)
    ]


def scenario(big: int = BACKUPS) -> dict[str, Any]:
    return {
        "regions": {
            SOURCE: {
                "replication_destinations": [DEST],
                "vaults": [
                    {"name": "big", "backups": backups("big", big)},
                    {"name": "small", "backups": backups("small", 3)},
                ],
            },
            DEST: {"vaults": [{"name": "dr", "protect_type": "replication"}]},
        }
    }


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(scenario(), clock="manual") as running:
        yield running


def listed(cloud: HuaweiCloud, emulator: Emulator, vault: str = "big") -> list[str]:
    project = emulator.project_id(SOURCE)
    pages = cloud.list_backup_pages(SOURCE, project, emulator.vault_id(SOURCE, vault))
    return [backup_id for page in itertools.islice(pages, PAGES_AT_MOST) for backup_id in page.ids]


def within_deadline(work: Callable[[], Any]) -> Any:
    """``work()``'s result (or its exception), or a failure if it is still running after
    ENDS_WITHIN: a listing that never ends must fail the test, not hang it."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(ENDS_WITHIN)
    assert not thread.is_alive(), f"still running after {ENDS_WITHIN}s: it never ends"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def stored_ids(emulator: Emulator, vault: str = "big") -> set[str]:
    vault_id = emulator.vault_id(SOURCE, vault)
    return {b["id"] for b in emulator.state()["backups"].values() if b["vault_id"] == vault_id}


# -- the end of a listing ------------------------------------------------------------------


def test_a_count_that_counts_the_page_does_not_end_the_listing(emulator: Emulator) -> None:
    emulator.set_faults({"listing": "count_is_page"})
    ids = listed(cloud_on(emulator), emulator)
    assert len(ids) == BACKUPS
    assert set(ids) == stored_ids(emulator)


def test_a_full_last_page_is_confirmed_by_an_empty_one() -> None:
    with Emulator(scenario(big=PAGE_SIZE), clock="manual") as emulator:
        ids = listed(cloud_on(emulator), emulator)
        assert set(ids) == stored_ids(emulator)
        offsets = [r["params"]["offset"] for r in emulator.requests("list_backups")]
        assert offsets == [["0"], [str(PAGE_SIZE)]]


def test_listings_ask_for_a_stable_order(emulator: Emulator) -> None:
    emulator.set_faults({"listing": "unstable_unless_sorted"})
    ids = listed(cloud_on(emulator), emulator)
    assert sorted(ids) == sorted(stored_ids(emulator))  # each once, none missing
    sorts = {tuple(r["params"].get("sort", [])) for r in emulator.requests("list_backups")}
    assert sorts == {(LISTING_SORT,)}


def test_backups_deleted_by_retention_during_a_listing_miss_none_of_the_others(
    emulator: Emulator,
) -> None:
    emulator.set_faults({"listing_deletes": 300})  # the oldest, after every page
    ids = listed(cloud_on(emulator), emulator)
    survivors = stored_ids(emulator)
    assert len(survivors) == BACKUPS - 3 * 300
    assert survivors <= set(ids)
    assert len(ids) == len(set(ids))


# -- listings that never end ---------------------------------------------------------------


def test_a_server_ignoring_offset_ends_the_listing_at_the_repeated_page(
    emulator: Emulator,
) -> None:
    emulator.set_faults({"listing": "ignore_offset"})
    with pytest.raises(MalformedAnswerError, match="repeats an earlier page") as raised:
        within_deadline(lambda: listed(cloud_on(emulator), emulator))
    assert raised.value.code == "listing_repeats"
    # Two repeats are tolerated (a burst of exactly a page of new backups shifts a listing by
    # a page); the third ends it.
    assert len(emulator.requests("list_backups")) == 4


@pytest.mark.parametrize("mode", ["endless", "endless_count"])
def test_endless_fresh_pages_stop_at_the_ceiling(emulator: Emulator, mode: str) -> None:
    emulator.set_faults({"listing": mode})
    cloud = cloud_on(emulator)
    cloud._max_pages = 5
    with pytest.raises(PermanentError, match=r"cloud\.max_listing_pages") as raised:
        listed(cloud, emulator)
    assert raised.value.code == "listing_too_long"
    # Without count, five pages then the sixth; a count of 10**12 is refused at once.
    expected = 6 if mode == "endless" else 1
    assert len(emulator.requests("list_backups")) <= expected + 8  # + the read-ahead window


def test_an_endless_vault_fails_alone_and_the_other_vault_is_swept(
    emulator: Emulator, tmp_path: Path
) -> None:
    emulator.set_faults(
        {"listing": "ignore_offset", "listing_vaults": [emulator.vault_id(SOURCE, "big")]}
    )
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    engine = engine_on(emulator, ledger, ManualClock(emulator))
    both = Policy.model_validate(policy("both", ["big", "small"], DEST, "dr", max_in_flight=1000))
    report, _ = within_deadline(lambda: sweep_policy(engine, both, submit=False))
    assert report.error_reason == "listing_repeats"
    assert "repeats an earlier page" in (report.error or "")
    queued = ledger.jobs_in_states({JobState.QUEUED}, limit=10_000)
    small = emulator.vault_id(SOURCE, "small")
    assert {job.source_backup_id for job in queued if job.source_vault_id == small} == (
        stored_ids(emulator, "small")
    )
    ledger.close()
