"""Replica names and descriptions fit the API's limits (docs/design.md §2, the seed's Table 1)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core import naming

VALID_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def values(backup_name: str = "web-01", backup_id: str = "b-1") -> dict[str, str]:
    return naming.replica_values(
        backup_name, backup_id, "eu-west-1", "eu-west-101", datetime(2024, 5, 1, tzinfo=UTC)
    )


@pytest.mark.parametrize(
    "name",
    ["web-01", "a", "A_b-C", "x" * 64, "double--hyphen", "-leading", "trailing_", "2024"],
)
def test_a_valid_name_renders_unchanged(name: str) -> None:
    assert naming.render_name("{backup_name}", values(name)) == name


@pytest.mark.parametrize(
    ("template", "backup_name", "expected"),
    [
        pytest.param("{backup_name}", "web server", "web-server", id="space"),
        pytest.param("{backup_name}", "a  /  b", "a-b", id="run_collapses"),
        pytest.param("{backup_name}", "a - b", "a-b", id="run_with_hyphen_collapses"),
        pytest.param("{backup_name}", "db.prod:1", "db-prod-1", id="punctuation"),
        pytest.param("{backup_name}", "sauvegarde-été", "sauvegarde-t-", id="accents"),
        pytest.param("{backup_name}", "备份", "-", id="cjk"),
        pytest.param("{backup_name}", "<b>", "-b-", id="angle_brackets"),
        pytest.param("{backup_name}-{date}", "web 01 ", "web-01-20240501", id="literal_joins"),
        pytest.param(
            "r_{backup_name}_{destination_region}",
            "x",
            "r_x_eu-west-101",
            id="several_placeholders",
        ),
        pytest.param("{{{backup_name}}}", "x", "-x-", id="escaped_braces"),
    ],
)
def test_render_name_sanitises_substituted_text(
    template: str, backup_name: str, expected: str
) -> None:
    assert naming.render_name(template, values(backup_name)) == expected


def test_render_name_cuts_to_64() -> None:
    rendered = naming.render_name("{backup_name}-{date}", values("n" * 60))
    assert rendered == "n" * 60 + "-202"


def test_render_name_cut_counts_characters_after_collapsing() -> None:
    assert naming.render_name("{backup_name}", values("a" + " " * 100 + "b")) == "a-b"


@pytest.mark.parametrize(
    ("backup_id", "expected"),
    [
        pytest.param("0f1e-2d3c", "replica-0f1e-2d3c", id="from_backup_id"),
        pytest.param("", "replica", id="no_backup_id"),
        pytest.param("x" * 80, "replica-" + "x" * 56, id="long_backup_id"),
    ],
)
def test_an_empty_name_falls_back_to_the_backup_id(backup_id: str, expected: str) -> None:
    assert naming.render_name("{backup_name}", values("", backup_id)) == expected


@pytest.mark.parametrize("template", ["{nope}", "{date!r}", "{date:>10}", "{", "}"])
def test_render_name_refuses_a_template_that_skipped_validation(template: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        naming.render_name(template, values())


def test_render_name_refuses_a_missing_value() -> None:
    with pytest.raises(ValueError, match="backup_id"):
        naming.render_name("{backup_id}", {"backup_name": "x"})


@pytest.mark.parametrize(
    ("template", "backup_name", "expected"),
    [
        pytest.param("from {backup_name}", "web 01", "from web 01", id="spaces_kept"),
        pytest.param("{backup_name}", "<script>x</script>", "scriptx/script", id="drops_angles"),
        pytest.param("<{backup_name}>", "é 备份", "é 备份", id="unicode_kept"),
        pytest.param("", "x", "", id="empty"),
    ],
)
def test_render_description(template: str, backup_name: str, expected: str) -> None:
    assert naming.render_description(template, values(backup_name)) == expected


def test_render_description_cuts_to_255() -> None:
    rendered = naming.render_description("{backup_name}!", values("d" * 300))
    assert rendered == "d" * 255


def test_replica_values_date_is_the_utc_day() -> None:
    late_evening_east = datetime(2024, 5, 2, 1, 30, tzinfo=timezone(timedelta(hours=8)))
    got = naming.replica_values("n", "i", "src", "dst", late_evening_east)
    assert got == {
        "backup_name": "n",
        "backup_id": "i",
        "source_region": "src",
        "destination_region": "dst",
        "date": "20240501",
    }


def test_replica_values_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        naming.replica_values("n", "i", "src", "dst", datetime(2024, 5, 1))


# -- properties ----------------------------------------------------------------------------

placeholder = st.sampled_from(sorted(naming.PLACEHOLDERS)).map(lambda name: "{" + name + "}")
literal = st.text(max_size=20).map(lambda text: text.replace("{", "{{").replace("}", "}}"))
templates = st.lists(st.one_of(placeholder, literal), max_size=6).map("".join)
any_values = st.fixed_dictionaries({name: st.text(max_size=80) for name in naming.PLACEHOLDERS})


@settings(max_examples=400, deadline=None)
@given(templates, any_values)
def test_render_name_is_always_a_valid_name(template: str, given_values: dict[str, str]) -> None:
    assert VALID_NAME.match(naming.render_name(template, given_values))


@settings(max_examples=300, deadline=None)
@given(st.from_regex(VALID_NAME, fullmatch=True))
def test_render_name_leaves_every_valid_name_alone(name: str) -> None:
    assert naming.render_name("{backup_name}", values(name)) == name


@settings(max_examples=400, deadline=None)
@given(templates, any_values)
def test_render_description_is_always_short_and_free_of_angle_brackets(
    template: str, given_values: dict[str, str]
) -> None:
    rendered = naming.render_description(template, given_values)
    assert len(rendered) <= 255
    assert "<" not in rendered
    assert ">" not in rendered


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("web-01_copy", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("a b", False),
        ("web\n", False),
    ],
)
def test_a_hand_given_name_is_held_to_the_apis_limits(name: str, valid: bool) -> None:
    assert naming.valid_name(name) is valid


@pytest.mark.parametrize(
    ("text", "valid"),
    [("nightly copy", True), ("x" * 255, True), ("x" * 256, False), ("<b>", False)],
)
def test_a_hand_given_description_is_held_to_the_apis_limits(text: str, valid: bool) -> None:
    assert naming.valid_description(text) is valid
