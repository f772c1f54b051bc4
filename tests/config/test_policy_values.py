"""Pure value parsing of the schema: durations, sizes, cron, templates."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger

from daemon.core.naming import PLACEHOLDERS, check_description_template, check_name_template
from daemon.core.policy import ScheduleSettings
from daemon.core.units import (
    apscheduler_crontab,
    cron_longest_gap,
    parse_cron,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("6h", timedelta(hours=6)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        (90, timedelta(seconds=90)),
        ("90", timedelta(seconds=90)),
        (0, timedelta(0)),
    ],
)
def test_durations(text: str | int, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5 minutes", "1w", "m5", "1.5h", "-5m", "5m1h"])
def test_invalid_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2TiB", 2 * 2**40),
        ("500GiB", 500 * 2**30),
        ("1TB", 10**12),
        ("500GB", 500 * 10**9),
        ("10MiB", 10 * 2**20),
        ("1.5GiB", 3 * 2**29),
        ("1024", 1024),
        (4096, 4096),
        ("7B", 7),
    ],
)
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["2 tera", "TiB", "-1GiB", "1XB"])
def test_invalid_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


VALID_CRONS = [
    ("0 * * * *", timedelta(hours=1)),
    ("30 */6 * * *", timedelta(hours=6)),
    ("*/15 * * * *", timedelta(minutes=15)),
    ("0 9 * * MON-FRI", timedelta(days=3)),
    ("0 9 * * 1-5", timedelta(days=3)),
    ("0 0 * * 0", timedelta(days=7)),
    ("0 0 * * 7", timedelta(days=7)),
    ("0 0 1 JAN,JUL *", timedelta(days=184)),
    ("5,35 1-5/2 * * *", timedelta(hours=19, minutes=30)),
    ("0 0 29 2 *", timedelta(days=1461)),
    ("10/20 * * * *", timedelta(minutes=20)),
]


@pytest.mark.parametrize(("expression", "gap"), VALID_CRONS)
def test_valid_cron_and_its_period(expression: str, gap: timedelta) -> None:
    assert cron_longest_gap(parse_cron(expression)) == gap


@pytest.mark.parametrize(("expression", "_gap"), VALID_CRONS)
def test_valid_cron_is_accepted_by_apscheduler(expression: str, _gap: timedelta) -> None:
    CronTrigger.from_crontab(apscheduler_crontab(expression), timezone="UTC")


@pytest.mark.parametrize(
    ("expression", "weekday"),
    [("0 0 * * 0", 6), ("0 0 * * 7", 6), ("0 0 * * SUN", 6), ("0 0 * * 1", 0), ("0 0 * * 6", 5)],
)
def test_cron_weekdays_mean_the_same_in_apscheduler(expression: str, weekday: int) -> None:
    # APScheduler 3 counts Monday as 0; cron counts Sunday as 0 (and 7).
    trigger = CronTrigger.from_crontab(apscheduler_crontab(expression), timezone="UTC")
    start = datetime(2026, 1, 7, tzinfo=ZoneInfo("UTC"))  # a Wednesday
    fire = trigger.get_next_fire_time(None, start)
    assert fire is not None
    assert fire.weekday() == weekday


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("61 * * * *", "minute field: '61' is outside 0-59"),
        ("* 24 * * *", "hour field"),
        ("0 0 0 * *", "day of month field"),
        ("0 0 * 13 *", "month field"),
        ("0 0 * FOO *", "unknown name 'FOO'"),
        ("0 0 * * 8", "day of week field"),
        ("* * * *", "has 4 fields"),
        ("@hourly", "has 1 fields"),
        ("*/0 * * * *", "the step must be"),
        ("*/60 * * * *", "the step must be"),
        ("5-1 * * * *", "must go upwards"),
        ("0 0 * * MON/2", "not names, with a step"),
        ("0 0 L * *", "not a value"),
        ("0 0 31 2 *", "never fires"),
        ("0 0 1 * MON", "not both"),
    ],
)
def test_invalid_cron(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_cron(expression)


def test_schedule_period_of_interval() -> None:
    assert ScheduleSettings(interval=timedelta(hours=3)).period == timedelta(hours=3)


@pytest.mark.parametrize(
    "template",
    ["{backup_name}", "dr-{source_region}_{date}", "{backup_id}", "x" * 64, "{backup_name}" * 9],
)
def test_valid_name_templates(template: str) -> None:
    assert check_name_template(template) == []


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("", "empty"),
        ("x" * 65, "65 characters"),
        ("{host}", "unknown placeholder {host}"),
        ("dr copy", "' '"),
        ("{backup_name", "unbalanced '{'"),
        ("name}", "unbalanced '}'"),
    ],
)
def test_invalid_name_templates(template: str, message: str) -> None:
    problems = check_name_template(template)
    assert any(message in problem for problem in problems), problems


def test_description_templates() -> None:
    assert check_description_template("DR copy of {backup_id} <any text>") == []
    assert check_description_template("d" * 255 + "{backup_name}") == []
    assert "256 characters" in check_description_template("d" * 256)[0]
    assert "unknown placeholder {vm}" in check_description_template("{vm}")[0]


def test_placeholders() -> None:
    expected = {"backup_name", "backup_id", "source_region", "destination_region", "date"}
    assert expected == PLACEHOLDERS
