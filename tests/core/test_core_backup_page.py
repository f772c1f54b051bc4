"""``BackupPage``: a listing page whose backups are built when first read (issue 7)."""

from __future__ import annotations

import pytest

from daemon.core.model import Backup, BackupPage


def backup(backup_id: str) -> Backup:
    return Backup(backup_id, f"name-{backup_id}", "v1", "OS::Nova::Server", "backup", "available")


class Builder:
    def __init__(self) -> None:
        self.built: list[str] = []

    def __call__(self, raw: str) -> Backup:
        self.built.append(raw)
        return backup(raw)


def lazy(ids: list[str]) -> tuple[BackupPage, Builder]:
    builder = Builder()
    return BackupPage(ids, list(ids), builder), builder


def test_ids_are_read_without_building_any_backup() -> None:
    page, builder = lazy(["a", "b", "c"])
    assert (list(page.ids), len(page)) == (["a", "b", "c"], 3)
    assert builder.built == []


def test_a_backup_is_built_once_when_first_read() -> None:
    page, builder = lazy(["a", "b", "c"])
    assert page[1] is page[1]
    assert page[-1].id == "c"
    assert builder.built == ["b", "c"]
    assert [item.id for item in page] == ["a", "b", "c"]
    assert builder.built == ["b", "c", "a"]


def test_a_slice_is_a_list_of_built_backups() -> None:
    page, _ = lazy(["a", "b", "c", "d"])
    assert [item.id for item in page[1:3]] == ["b", "c"]
    assert page[::-2] == [backup("d"), backup("b")]


def test_without_drops_those_ids_and_builds_nothing() -> None:
    page, builder = lazy(["a", "b", "c"])
    rest = page.without({"a", "c", "x"})
    assert list(rest.ids) == ["b"]
    assert builder.built == []
    assert rest == [backup("b")]
    assert page.without(set()) is page
    assert not page.without({"a", "b", "c"})


def test_a_page_of_built_backups_equals_its_list() -> None:
    backups = [backup("a"), backup("b")]
    page = BackupPage.of(backups)
    assert list(page.ids) == ["a", "b"]
    assert page == backups
    assert page == tuple(backups)
    assert page == lazy(["a", "b"])[0]
    assert page != [backup("a")]
    assert page != "ab"
    with pytest.raises(IndexError):
        page[2]
    with pytest.raises(TypeError):
        hash(page)


def in_vault(backup_id: str, vault_id: str) -> Backup:
    return backup(backup_id)._replace(vault_id=vault_id)


def test_by_vault_splits_a_project_page_in_listing_order_building_nothing() -> None:
    raws = [in_vault("a", "v1"), in_vault("b", "v2"), in_vault("c", "v1"), in_vault("d", "v3")]
    built: list[str] = []

    def build(raw: Backup) -> Backup:
        built.append(raw.id)
        return raw

    parts = BackupPage([raw.id for raw in raws], raws, build).by_vault()

    assert {vault: list(part.ids) for vault, part in parts.items()} == {
        "v1": ["a", "c"],
        "v2": ["b"],
        "v3": ["d"],
    }
    assert built == []
    assert parts["v1"] == [raws[0], raws[2]]
    assert built == ["a", "c"]
    assert BackupPage.of([]).by_vault() == {}
