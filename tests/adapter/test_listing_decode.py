"""The fast decoding of listing pages (msgspec structs) gives exactly what the plain one
(JSON object, checked field by field) gives, for well-formed and malformed pages alike."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from daemon.adapters.cloud import wire
from daemon.core.errors import MalformedAnswerError
from daemon.core.model import Backup

ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**12),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)


class Noise:
    """How often a drawn field is odd (of another type), and how often it is missing, each
    never on some pages: the fast way is taken about as often as the plain one."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.odd_one_in = draw(st.sampled_from([0, 0, 5, 30]))
        self.missing_one_in = draw(st.sampled_from([0, 3, 10]))

    def _one_in(self, chance: int) -> bool:
        return chance > 0 and self.draw(st.integers(1, chance)) == 1

    def value(self, good: st.SearchStrategy[Any]) -> Any:
        if self._one_in(self.odd_one_in):
            return self.draw(
                st.one_of(ODD, st.lists(ODD, max_size=2), st.dictionaries(st.text(max_size=3), ODD))
            )
        return self.draw(good)

    def fields(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Each field drawn from its strategy (or built by its function), or left out."""
        obj = {}
        for key, good in spec.items():
            if not self._one_in(self.missing_one_in):
                obj[key] = good() if callable(good) else self.value(good)
        return obj


def lenient(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field read leniently (a value of another type reads as absent): any value, on any
    page, since it must not send the page the plain way."""
    return st.one_of(good, ODD)


TIMESTAMPS = st.sampled_from(
    [
        "2026-11-01T10:00:00.000000",
        "2026-11-01 10:00:00Z",
        "2026-11-01T12:00:00+02:00",
        "yesterday",
        "",
    ]
)


def record(noise: Noise) -> dict[str, Any]:
    return noise.fields(
        {
            "id": st.text(min_size=1, max_size=6),
            "status": st.sampled_from(["success", "fail", "replicating", "waiting"]),
            "destination_region": st.sampled_from(["cn-south-1", "ap-southeast-1"]),
            "destination_project_id": st.text(max_size=4),
            "destination_vault_id": st.text(max_size=4),
            "destination_backup_id": st.text(max_size=4),
            "created_at": lenient(TIMESTAMPS),
            "extra_info": lambda: noise.fields(
                {
                    "progress": lenient(st.integers(0, 100)),
                    "fail_code": lenient(st.sampled_from(["", "BackupService.6666"])),
                    "fail_reason": lenient(st.text(max_size=5)),
                    "unrelated": ODD,
                }
            ),
        }
    )


def backup(noise: Noise) -> dict[str, Any]:
    draw = noise.draw
    return noise.fields(
        {
            "id": st.text(min_size=1, max_size=6),
            "name": st.text(max_size=6),
            "vault_id": st.just("v1"),
            "resource_type": st.sampled_from(["OS::Nova::Server", "OS::Cinder::Volume"]),
            "image_type": st.sampled_from(["backup", "replication"]),
            "status": st.sampled_from(["available", "creating", "error"]),
            "resource_size": st.one_of(st.integers(0, 2000), st.floats(0, 2000)),
            "created_at": lenient(TIMESTAMPS),
            "extend_info": lambda: noise.fields({"contain_system_disk": lenient(st.booleans())}),
            "children": lambda: [
                noise.fields(
                    {"extend_info": lambda: noise.fields({"bootable": lenient(st.booleans())})}
                )
                for _ in range(draw(st.integers(0, 2)))
            ],
            "replication_records": lambda: [record(noise) for _ in range(draw(st.integers(0, 3)))],
            "provider_id": ODD,
        }
    )


@st.composite
def pages(draw: st.DrawFn) -> dict[str, Any]:
    noise = Noise(draw)
    body = noise.fields({"count": st.integers(0, 5000)})
    body["backups"] = [backup(noise) for _ in range(draw(st.integers(0, 4)))]
    return body


def outcome(body: object) -> tuple[list[Backup], int | None, list[str]] | str:
    """The page as the adapter hands it on (built lazily from the structs on the fast way)."""
    skipped: list[MalformedAnswerError] = []
    try:
        page, count = wire.listing_page(body, "ListBackups", skipped)  # type: ignore[arg-type]
    except MalformedAnswerError as error:
        return str(error)
    backups = list(page)
    assert list(page.ids) == [backup.id for backup in backups]
    return backups, count, [str(error) for error in skipped]


def both_ways(raw: bytes) -> tuple[object, object]:
    try:
        fast = outcome(wire.parse_backup_listing(raw, "ListBackups"))
    except MalformedAnswerError as error:
        fast = f"answer: {error}"
    try:
        plain = outcome(wire.parse_body(raw, "ListBackups"))
    except MalformedAnswerError as error:
        plain = f"answer: {error}"
    return fast, plain


# A page takes a few hundred draws: slow to generate beside the rest of the suite, which is
# what the health check measures, not something to fix.
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(pages())
def test_listing_pages_decode_alike_both_ways(body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    fast_way = isinstance(wire.parse_backup_listing(raw, "x"), wire.BackupListing)
    event("fast way" if fast_way else "plain way")
    fast, plain = both_ways(raw)
    assert fast == plain


def test_a_well_formed_page_takes_the_fast_way() -> None:
    item = {
        "id": "b1",
        "vault_id": "v1",
        "resource_type": "OS::Nova::Server",
        "image_type": "backup",
        "status": "available",
        "resource_size": 40,
        "extend_info": {"contain_system_disk": True, "other": [1, 2]},
        "replication_records": [{"id": "r1", "status": "success", "extra_info": {"progress": 100}}],
    }
    decoded = wire.parse_backup_listing(orjson.dumps({"backups": [item], "count": 1}), "x")
    assert isinstance(decoded, wire.BackupListing)
    [backup], count = wire.parse_backup_page(decoded, "x")
    assert (backup.id, backup.contain_system_disk, backup.bytes, count) == (
        "b1",
        True,
        40 * 2**30,
        1,
    )
    assert backup.replication_records[0].progress == 100


def test_a_page_with_one_odd_backup_takes_the_plain_way_and_skips_only_it() -> None:
    good = {"id": "b1", "vault_id": "v1", "resource_type": "r", "image_type": "i", "status": "s"}
    odd = {**good, "id": "b2", "status": 7}
    decoded = wire.parse_backup_listing(orjson.dumps({"backups": [good, odd]}), "x")
    assert not isinstance(decoded, wire.BackupListing)
    skipped: list[MalformedAnswerError] = []
    page, _ = wire.parse_backup_page(decoded, "x", skipped)
    assert [backup.id for backup in page] == ["b1"]
    assert "'status'" in str(skipped[0])


@settings(deadline=None)
@given(st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_bodies_that_are_not_a_listing_fail_alike_both_ways(raw: bytes) -> None:
    fast, plain = both_ways(raw)
    assert fast == plain
