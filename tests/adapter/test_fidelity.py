"""What the real CBR and its gateway answer where they differ from the documents' first
reading (docs/design.md §16): through the real SDK, against the emulator in the matching mode."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from daemon.adapters.cloud.client import HuaweiCloud
from daemon.adapters.cloud.options import CloudOptions, Credentials, cbr_endpoint, iam_endpoint
from daemon.core.errors import (
    AmbiguousError,
    EndpointError,
    MalformedAnswerError,
    NotFoundError,
    PermanentError,
    PermissionDeniedError,
    ThrottledError,
)
from daemon.core.model import Destination, ReplicaSpec
from daemon.emulator import Emulator

SOURCE = "cn-north-4"
DEST = "cn-south-1"
OTHER = "af-south-1"  # a region the source cannot replicate to


def server_backup(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "resource_type": "OS::Nova::Server",
        "status": "available",
        "extend_info": {"contain_system_disk": True},
        "resource_size": 40,
    }


def scenario(**source: Any) -> dict[str, Any]:
    return {
        "regions": {
            SOURCE: {
                "replication_destinations": [DEST],
                "vaults": [
                    {"name": "web-prod", "backups": [server_backup(f"web-{i}") for i in range(3)]}
                ],
                **source,
            },
            DEST: {"vaults": [{"name": "web-dr", "protect_type": "replication"}]},
            OTHER: {"vaults": [{"name": "af-dr", "protect_type": "replication"}]},
        }
    }


class Time:
    """The adapter's clock and sleep, moving the emulator's clock along: a pause of the
    throttle gate lets the emulator's throttling window pass, without waiting."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.now = 0.0
        self.waits: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
            self.waits.append(seconds)
            self.emulator.advance(seconds)


def make_cloud(emulator: Emulator, time: Time | None = None, **options: Any) -> HuaweiCloud:
    time = time or Time(emulator)
    secret = options.pop("secret", None) or emulator.secret_key
    settings: dict[str, Any] = {
        "cbr_endpoints": {},
        "all_regions_endpoint": emulator.url,
        "requests_per_second": 1000,
        "read_attempts": 3,
        "read_timeout": timedelta(seconds=5),
    }
    settings.update(options)
    return HuaweiCloud(
        Credentials(
            access_key=SecretStr(emulator.access_key),
            secret_key=SecretStr(secret),
            domain_id=emulator.domain_id,
        ),
        CloudOptions(**settings),
        sleep=time.sleep,
        clock=time.clock,
    )


@pytest.fixture
def emulate() -> Iterator[Any]:
    running: list[Emulator] = []

    def start(world: dict[str, Any] | None = None, **modes: Any) -> Emulator:
        emulator = Emulator(world or scenario(), clock="manual", **modes)
        emulator.start()
        running.append(emulator)
        return emulator

    yield start
    for emulator in running:
        emulator.stop()


def to_dest(emulator: Emulator, region: str = DEST, vault: str = "web-dr") -> Destination:
    return Destination(region, emulator.project_id(region), emulator.vault_id(region, vault))


# -- 1. replication capabilities -----------------------------------------------------------


def test_a_capability_entry_not_named_like_the_region_is_the_regions(emulate: Any) -> None:
    emulator = emulate(scenario(capability_name="northchina"))
    cloud = make_cloud(emulator)
    assert cloud.replication_destinations(SOURCE, emulator.project_id(SOURCE)) == {DEST}


def test_several_capability_entries_none_named_so_fail_showing_them(emulate: Any) -> None:
    world = scenario(capability_name="northchina")
    world["settings"] = {"capabilities_of_every_region": True}
    world["regions"][DEST]["capability_name"] = "southchina"
    emulator = emulate(world)
    cloud = make_cloud(emulator)
    with pytest.raises(MalformedAnswerError) as unclear:
        cloud.replication_destinations(SOURCE, emulator.project_id(SOURCE))
    assert f"'northchina' -> [{DEST}]" in str(unclear.value)
    assert "'southchina' -> []" in str(unclear.value)


# -- 2. a 404 is not always "not found" ----------------------------------------------------


@pytest.mark.parametrize("prefix", ["APIGW", "APIG"])
def test_the_gateways_404_is_an_endpoint_error_naming_the_endpoint(
    emulate: Any, prefix: str
) -> None:
    emulator = emulate(gateway={"unpublished": ["show_backup"], "prefix": prefix})
    cloud = make_cloud(emulator)
    with pytest.raises(EndpointError) as wrong:
        cloud.show_backup(SOURCE, emulator.project_id(SOURCE), emulator.backup_id("web-0"))
    assert wrong.value.code == f"{prefix}.0101"
    assert emulator.url in str(wrong.value)
    assert "cloud.endpoints" in str(wrong.value)


def test_a_404_without_a_cbr_code_is_not_not_found(emulate: Any) -> None:
    emulator = emulate(gateway={"unpublished": ["show_backup"], "unpublished_answer": "proxy"})
    cloud = make_cloud(emulator)
    with pytest.raises(PermanentError) as unknown:
        cloud.show_backup(SOURCE, emulator.project_id(SOURCE), emulator.backup_id("web-0"))
    assert not isinstance(unknown.value, NotFoundError)
    assert unknown.value.status == 404


def test_cbrs_own_not_found_is_still_not_found(emulate: Any) -> None:
    emulator = emulate()
    cloud = make_cloud(emulator)
    with pytest.raises(NotFoundError):
        cloud.show_backup(SOURCE, emulator.project_id(SOURCE), "no-such-backup")


# -- 3. status codes by edition ------------------------------------------------------------


@pytest.mark.parametrize("edition", ["huawei", "otc"])
def test_a_refused_post_is_a_refusal_on_either_edition(emulate: Any, edition: str) -> None:
    """Open Telekom Cloud answers 1005 with a 500: still a refusal, never ambiguous."""
    emulator = emulate(edition=edition)
    cloud = make_cloud(emulator)
    with pytest.raises(PermanentError) as refused:
        cloud.replicate_backup(
            SOURCE,
            emulator.project_id(SOURCE),
            emulator.backup_id("web-0"),
            to_dest(emulator, OTHER, "af-dr"),
            ReplicaSpec("x", ""),
        )
    assert refused.value.code == "BackupService.1005"
    assert refused.value.status == (500 if edition == "otc" else 400)
    assert not isinstance(refused.value, AmbiguousError)


def test_vault_not_found_is_not_found_on_either_edition(emulate: Any) -> None:
    for edition in ("huawei", "otc"):
        emulator = emulate(edition=edition)
        with pytest.raises(NotFoundError):
            make_cloud(emulator).show_vault(SOURCE, emulator.project_id(SOURCE), "no-vault")


# -- 5. throttling -------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["APIGW", "APIG"])
def test_reads_outlast_a_one_minute_window_without_retry_after(emulate: Any, prefix: str) -> None:
    emulator = emulate(
        gateway={"throttle_limit": 10, "throttle_window_seconds": 60, "prefix": prefix}
    )
    time = Time(emulator)
    cloud = make_cloud(emulator, time)
    project = emulator.project_id(SOURCE)
    backup = emulator.backup_id("web-0")
    for _ in range(35):
        assert cloud.show_backup(SOURCE, project, backup).id == backup
    answered = emulator.requests("show_backup")
    throttled = [entry for entry in answered if entry["status"] == 429]
    assert len(answered) - len(throttled) == 35
    assert time.now >= 2 * 60, "windows had to pass"
    assert max(time.waits) <= 120
    # one growing pause per exhausted window, not one request per retry attempt
    assert len(throttled) <= 3 * 8


def test_one_backoff_for_every_thread(emulate: Any) -> None:
    """Throttling that goes on slows every caller: eight threads that all hit one exhausted
    window send the requests already on their way, one more round (a lone 429 pauses only
    the caller that got it, so the others learn of it from their own), then one probe per
    shared pause."""
    emulator = emulate(gateway={"throttle_limit": 4, "throttle_window_seconds": 60})
    time = Time(emulator)
    cloud = make_cloud(emulator, time, concurrency=8)
    project = emulator.project_id(SOURCE)
    backup = emulator.backup_id("web-0")
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda _: cloud.show_backup(SOURCE, project, backup), range(40)))
    assert len(found) == 40
    throttled = [entry for entry in emulator.requests("show_backup") if entry["status"] == 429]
    windows = int(time.now // 60) + 1
    assert len(throttled) <= windows * (8 + 8 + 8)


def test_throttled_past_the_budget_gives_up_without_sending_more(emulate: Any) -> None:
    emulator = emulate(gateway={"throttle_limit": 1, "throttle_window_seconds": 3600})
    time = Time(emulator)
    cloud = make_cloud(emulator, time, throttle_budget=timedelta(seconds=30))
    project = emulator.project_id(SOURCE)
    backup = emulator.backup_id("web-0")
    cloud.show_backup(SOURCE, project, backup)
    with pytest.raises(ThrottledError):
        cloud.show_backup(SOURCE, project, backup)
    sent = len(emulator.requests())
    with pytest.raises(ThrottledError):
        cloud.show_backup(SOURCE, project, backup)
    assert len(emulator.requests()) == sent, "exhausted: refused here, nothing sent"
    time.sleep(120)  # the longest pause: one probe may go, and its success ends the episode
    emulator.set_gateway({})
    assert cloud.show_backup(SOURCE, project, backup).id == backup


def test_a_window_that_stays_closed_cuts_the_rate(emulate: Any) -> None:
    """A minute's window used up: still closed after the pauses of 1 s and 2 s, the episode
    is sustained and the rate is halved. (The first window's end may fall within those 3 s,
    as the emulator's windows start at its clock's whole minutes: the second is used up from
    its start, so 600 calls always see one that stays closed.)"""
    emulator = emulate(gateway={"throttle_limit": 200, "throttle_window_seconds": 60})
    time = Time(emulator)
    cloud = make_cloud(emulator, time, requests_per_second=50)
    project = emulator.project_id(SOURCE)
    backup = emulator.backup_id("web-0")
    for _ in range(600):
        cloud.show_backup(SOURCE, project, backup)
    assert cloud._rate.rate < 50, "cut on a window that stayed closed"
    answered = emulator.requests("show_backup")
    throttled = [entry for entry in answered if entry["status"] == 429]
    assert len(throttled) / len(answered) < 0.1


def test_a_one_second_window_costs_a_pause_not_the_rate(emulate: Any) -> None:
    """At 50/s against 20 per second, the shared pause after the window's first 429 outlasts
    the window: few 429s, and no rate cut, since the next window answers at once."""
    emulator = emulate(gateway={"throttle_limit": 20, "throttle_window_seconds": 1})
    time = Time(emulator)
    cloud = make_cloud(emulator, time, requests_per_second=50)
    project = emulator.project_id(SOURCE)
    backup = emulator.backup_id("web-0")
    for _ in range(400):
        cloud.show_backup(SOURCE, project, backup)
    answered = emulator.requests("show_backup")
    throttled = [entry for entry in answered if entry["status"] == 429]
    # at a fixed 50/s against 20/s without the pause, three requests in five would be refused
    assert len(throttled) / len(answered) < 0.1
    assert cloud._rate.rate == 50


def test_scattered_429s_do_not_ratchet_the_rate_down(emulate: Any) -> None:
    """One request in twenty refused at random (another client of the key, a passing fault):
    each costs the shared pause, none is a sustained episode, so the rate stays put. Cut on
    each, the rate would halve about twenty times here and sit at its floor."""
    emulator = emulate()
    emulator.set_faults({"throttle_rate": 0.05})
    time = Time(emulator)
    cloud = make_cloud(emulator, time, requests_per_second=50)
    project = emulator.project_id(SOURCE)
    backup = emulator.backup_id("web-0")
    for _ in range(400):
        cloud.show_backup(SOURCE, project, backup)
    throttled = [e for e in emulator.requests("show_backup") if e["status"] == 429]
    assert len(throttled) >= 10, "the faults were injected"
    assert cloud._rate.rate >= 25, "at most one cut (two 429s in a row after pauses is rare)"


# -- 7. authentication and clock -----------------------------------------------------------


def test_a_signature_of_a_host_whose_clock_is_off_says_check_the_clock(emulate: Any) -> None:
    emulator = emulate(gateway={"clock_offset_seconds": 3600})
    cloud = make_cloud(emulator)
    project = emulator.project_id(SOURCE)
    with pytest.raises(PermissionDeniedError) as denied:
        cloud.show_backup(SOURCE, project, emulator.backup_id("web-0"))
    message = str(denied.value)
    assert "signature expired" in message
    assert "check this host's clock" in message
    assert "60 min behind the gateway's" in message


def test_a_wrong_secret_does_not_blame_the_clock(emulate: Any) -> None:
    emulator = emulate()
    cloud = make_cloud(emulator, secret="not-the-secret")
    with pytest.raises(PermissionDeniedError) as denied:
        cloud.show_backup(SOURCE, emulator.project_id(SOURCE), emulator.backup_id("web-0"))
    assert "clock" not in str(denied.value)
    assert "not-the-secret" not in str(denied.value)


def test_after_a_401_no_more_signed_requests_go_to_that_region(emulate: Any) -> None:
    """The gateway locks the key after more than five failed signatures: one per region and
    process is all this adapter sends."""
    emulator = emulate()
    cloud = make_cloud(emulator, secret="not-the-secret")
    project = emulator.project_id(SOURCE)
    for _ in range(8):
        with pytest.raises(PermissionDeniedError):
            cloud.show_backup(SOURCE, project, emulator.backup_id("web-0"))
    with pytest.raises(PermissionDeniedError):
        cloud.find_vault(SOURCE, project, "web-prod")
    assert len(emulator.requests()) == 1
    with pytest.raises(PermissionDeniedError):
        cloud.show_vault(DEST, emulator.project_id(DEST), emulator.vault_id(DEST, "web-dr"))
    assert len(emulator.requests()) == 2, "another region: one of its own"
    locked = [entry for entry in emulator.requests() if entry["status"] == 401]
    assert len(locked) == 2


# -- 8. sites ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("site", "region", "iam", "cbr"),
    [
        (
            "international",
            "ap-southeast-1",
            "https://iam.myhuaweicloud.com",
            "https://cbr.ap-southeast-1.myhuaweicloud.com",
        ),
        (
            "europe",
            "eu-west-101",
            "https://iam.myhuaweicloud.eu",
            "https://cbr.eu-west-101.myhuaweicloud.eu",
        ),
        (
            "otc",
            "eu-de",
            "https://iam.eu-de.otc.t-systems.com",
            "https://cbr.eu-de.otc.t-systems.com",
        ),
    ],
)
def test_each_site_has_its_endpoints(site: str, region: str, iam: str, cbr: str) -> None:
    options = CloudOptions(cbr_endpoints={}, site=site)
    assert iam_endpoint(options) == iam
    assert cbr_endpoint(options, region) == cbr


def test_a_region_of_another_site_is_named_so() -> None:
    with pytest.raises(PermanentError) as unknown:
        cbr_endpoint(CloudOptions(cbr_endpoints={}), "eu-de")
    assert "cloud.site 'otc'" in str(unknown.value)


def test_explicit_endpoints_override_the_site(emulate: Any) -> None:
    emulator = emulate()
    cloud = make_cloud(
        emulator,
        site="otc",
        all_regions_endpoint=None,
        iam_endpoint=emulator.url,
        cbr_endpoints={SOURCE: emulator.url},
    )
    assert cloud.resolve_project(SOURCE) == emulator.project_id(SOURCE)
    assert cloud.replication_destinations(SOURCE, emulator.project_id(SOURCE)) == {DEST}
    assert cloud.endpoints([SOURCE, "eu-nl"]) == {
        "iam": emulator.url,
        SOURCE: emulator.url,
        "eu-nl": "https://cbr.eu-nl.otc.t-systems.com",
    }
