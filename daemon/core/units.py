"""The config's value types: durations (``1h30m``), sizes (``500GiB``), URLs and cron
expressions, each parsed, bounded and given its JSON Schema. Pure.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

# --- durations and sizes ---------------------------------------------------------------

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]i?b|b)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1} | {
    f"{prefix}{suffix}": base**power
    for power, prefix in enumerate("kmgtp", start=1)
    for suffix, base in (("b", 1000), ("ib", 1024))
}


def parse_duration(value: object) -> object:
    """``30s``, ``5m``, ``6h``, ``1d``, ``1h30m`` or a number of seconds -> ``timedelta``.

    Anything else is passed through for pydantic to reject with its own message.
    """
    if isinstance(value, bool):
        raise ValueError("write a duration such as 30s, 5m, 6h, 1d or 1h30m, not true/false")
    try:
        if isinstance(value, int | float):
            return timedelta(seconds=value)
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.isdigit():
            return timedelta(seconds=int(text))
        match = _DURATION.fullmatch(text)
        if not text or match is None:
            raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 5m, 6h, 1d or 1h30m")
        days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:  # pydantic reports ValueError only; timedelta tops out at 1e9 days
        raise ValueError("is far too long a duration; write e.g. 30s, 5m, 6h or 1d") from None


def parse_size(value: object) -> object:
    """``2TiB``, ``500GiB``, ``1TB``, ``10MB`` or a plain number of bytes -> ``int`` bytes."""
    if isinstance(value, bool):
        raise ValueError("write a size such as 500GiB or 2TiB, not true/false")
    if not isinstance(value, str):
        return value
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a size; write e.g. 500GiB, 2TiB or 1TB")
    number, unit = match.groups()
    size = float(number) * _SIZE_UNITS[(unit or "b").lower()]
    if not math.isfinite(size):
        raise ValueError(f"{value!r} is far too large a size; write e.g. 500GiB or 2TiB")
    return int(size)


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero; write e.g. 30s, 5m or 6h")
    return value


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("must not be negative; write 0 or e.g. 5m")
    return value


# What the config file may hold, for the JSON Schema (``cbr-replicator schema``): the text
# forms parse_duration and parse_size accept, or plain numbers.
_DURATION_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "string", "pattern": r"^\s*(\d+|(?=\d)(\d+d)?(\d+h)?(\d+m)?(\d+s)?)\s*$"},
            {"type": "number", "minimum": 0},
        ]
    }
)
_SIZE_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([kKmMgGtTpP][iI]?[bB]|[bB])?\s*$"},
            {"type": "integer", "exclusiveMinimum": 0},
        ]
    }
)
Duration = Annotated[timedelta, BeforeValidator(parse_duration), _DURATION_SCHEMA]
PositiveDuration = Annotated[
    timedelta, BeforeValidator(parse_duration), AfterValidator(_positive), _DURATION_SCHEMA
]
NonNegativeDuration = Annotated[
    timedelta, BeforeValidator(parse_duration), AfterValidator(_not_negative), _DURATION_SCHEMA
]


def format_duration(value: timedelta) -> str:
    """``timedelta(hours=1, minutes=30)`` -> ``1h30m``."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def at_most(limit: timedelta, lowest: str = "1s") -> AfterValidator:
    """Every duration has a ceiling: past it, a time computed from it (a next run, a lease's
    end, a socket timeout) overflows, or waits for years, which nobody means."""

    def check(value: timedelta) -> timedelta:
        if value > limit:
            shown = format_duration(limit)
            raise ValueError(
                f"is longer than the {shown} allowed (from {lowest} up to {shown}); shorten it"
            )
        return value

    return AfterValidator(check)


MAX_SIZE = 1 << 50  # 1 PiB: a day's traffic budget beyond it is no budget


def _size_at_most(value: int) -> int:
    if value > MAX_SIZE:
        raise ValueError("is larger than the 1PiB allowed (from 1B up to 1PiB); lower it")
    return value


ByteSize = Annotated[
    int, BeforeValidator(parse_size), Field(gt=0), AfterValidator(_size_at_most), _SIZE_SCHEMA
]
PositiveInt = Annotated[int, Field(gt=0)]
# The ranges of the durations of each kind.
Timeout = Annotated[PositiveDuration, at_most(timedelta(hours=1))]
LeaseLength = Annotated[PositiveDuration, at_most(timedelta(days=1))]
Period = Annotated[PositiveDuration, at_most(timedelta(days=366))]
Jitter = Annotated[NonNegativeDuration, at_most(timedelta(days=366), lowest="0s")]
Backoff = Annotated[PositiveDuration, at_most(timedelta(days=30))]
Horizon = Annotated[PositiveDuration, at_most(timedelta(days=3660))]  # rpo, stuck_after
NonEmptyStr = Annotated[str, Field(min_length=1)]

# --- URLs --------------------------------------------------------------------------------


def url_problem(url: str, schemes: tuple[str, ...] = ("http", "https")) -> str | None:
    """Why ``url`` cannot be used, or None: parsed here as the HTTP client will parse it, so
    a URL that would fail at the first request fails at load. Never quotes the URL (it may
    hold a password)."""
    if any(character.isspace() or not character.isprintable() for character in url):
        return "holds a space or a control character; write the URL without it"
    try:
        parts = urlsplit(url)
        if parts.port == 0:
            raise ValueError("Port 0")
    except ValueError as error:
        if "Port" in str(error):
            return "its port is not a number from 1 to 65535; fix the port"
        return "its host is not a valid name or [IPv6] address; fix the host"
    if parts.scheme.lower() not in schemes:
        return f"write a {' or '.join(f'{scheme}://' for scheme in schemes)} URL"
    return None if parts.hostname else "names no host; write SCHEME://HOST[:PORT]/..."


def _checked_url(url: str | None) -> str | None:
    problem = None if url is None else url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    return url


HttpUrl = Annotated[str, AfterValidator(_checked_url)]

# --- cron --------------------------------------------------------------------------------

_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, start=1)}
_WEEKDAYS = {
    name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))
}
_WEEKDAY_NAMES = {number: name.lower() for name, number in _WEEKDAYS.items()}
_ITEM = re.compile(
    r"(?P<first>\*|\d+|[A-Za-z]{3})(?:-(?P<last>\d+|[A-Za-z]{3}))?(?:/(?P<step>\d+))?"
)
# (field name, lowest, highest, names): standard cron's five fields; 7 is also Sunday.
_CRON_FIELDS: tuple[tuple[str, int, int, Mapping[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _WEEKDAYS),
)
# 28 years from 2024: the Gregorian calendar (weekdays and 29 February) repeats after it
# until 2100, so the gaps found in it, the wrap-around included, are the real ones.
_CYCLE_START = date(2024, 1, 1)
_CYCLE_DAYS = 10227


@dataclass(frozen=True)
class CronSpec:
    """The values of a parsed 5-field cron expression (day of week: 0 = Sunday)."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]


def _value(text: str, names: Mapping[str, int]) -> int:
    if text.isdigit():
        return int(text)
    if text.upper() in names:
        return names[text.upper()]
    raise ValueError(f"unknown name {text!r}")


def _parse_item(item: str, low: int, high: int, names: Mapping[str, int]) -> set[int]:
    match = _ITEM.fullmatch(item)
    if match is None:
        raise ValueError(f"{item!r} is not a value, range, list or step")
    first, last, step = match["first"], match["last"], match["step"]
    is_name = not first.isdigit() and first != "*"
    if step is not None and (is_name or (last is not None and not last.isdigit())):
        # APScheduler, which runs the schedule, accepts no step after a name.
        raise ValueError(f"{item!r}: use numbers, not names, with a step")
    start = low if first == "*" else _value(first, names)
    end = high if first == "*" or (step and last is None) else start
    if last is not None:
        if first == "*":
            raise ValueError(f"{item!r}: '*' cannot start a range")
        end = _value(last, names)
    if not low <= start <= high or not low <= end <= high:
        raise ValueError(f"{item!r} is outside {low}-{high}")
    if start > end:
        raise ValueError(f"{item!r}: the range must go upwards")
    stride = int(step) if step else 1
    if stride < 1 or (step and stride > high - low):
        raise ValueError(f"{item!r}: the step must be between 1 and {high - low}")
    return set(range(start, end + 1, stride))


def _parse_cron_field(text: str, low: int, high: int, names: Mapping[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        values |= _parse_item(item, low, high, names)
    return frozenset(values)


@functools.lru_cache(maxsize=256)
def parse_cron(expression: str) -> CronSpec:
    """Parse a standard 5-field cron expression; ``ValueError`` says what is wrong."""
    parts = expression.split()
    if len(parts) != len(_CRON_FIELDS):
        raise ValueError(
            f"{expression!r} has {len(parts)} fields; write 5: minute hour day month weekday"
        )
    if parts[2] != "*" and parts[4] != "*":
        # cron ORs a restricted day of month with a restricted weekday; APScheduler ANDs them.
        raise ValueError("restrict the day of month or the day of week, not both")
    values = []
    for part, (label, low, high, names) in zip(parts, _CRON_FIELDS, strict=True):
        try:
            values.append(_parse_cron_field(part, low, high, names))
        except ValueError as error:
            raise ValueError(f"{label} field: {error}") from None
    weekdays = frozenset(day % 7 for day in values[4])
    spec = CronSpec(values[0], values[1], values[2], values[3], weekdays)
    if not _firing_days(spec):
        raise ValueError(f"{expression!r} never fires (no such date)")
    return spec


@functools.lru_cache(maxsize=256)
def _firing_days(spec: CronSpec) -> tuple[int, ...]:
    """Day offsets in the 28-year cycle on which ``spec`` fires."""
    days = []
    for offset in range(_CYCLE_DAYS):
        day = _CYCLE_START + timedelta(days=offset)
        weekday = day.isoweekday() % 7
        if day.month in spec.months and day.day in spec.days and weekday in spec.weekdays:
            days.append(offset)
    return tuple(days)


def cron_longest_gap(spec: CronSpec) -> timedelta:
    """The longest time between two consecutive runs of ``spec`` (wall clock, no DST)."""
    times = sorted(hour * 60 + minute for hour in spec.hours for minute in spec.minutes)
    days = _firing_days(spec)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Across days: from the last run of a firing day to the first run of the next one.
    wrapped = [*days, days[0] + _CYCLE_DAYS]
    overnight = times[0] - times[-1]
    gaps += [(later - earlier) * 1440 + overnight for earlier, later in itertools.pairwise(wrapped)]
    return timedelta(minutes=max(gaps))


def apscheduler_crontab(expression: str) -> str:
    """``expression`` rewritten for APScheduler 3's ``CronTrigger.from_crontab``.

    APScheduler 3 counts weekdays from Monday = 0, cron from Sunday = 0; weekday names mean
    the same in both, so the weekday field is spelled out as names.
    """
    parts = expression.split()
    if parts[4] != "*":
        weekdays = parse_cron(expression).weekdays
        parts[4] = ",".join(_WEEKDAY_NAMES[day] for day in sorted(weekdays))
    return " ".join(parts)
