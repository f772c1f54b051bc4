"""The config schema (docs/design.md §8): frozen pydantic models, durations, sizes and cron.

Pure: no file, no environment, no clock. ``config.py`` reads the files, resolves ``${NAME}``
references and ``*_file`` secrets, merges ``defaults`` into each policy, then validates here.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from daemon.core.templates import check_description_template, check_name_template

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


def _at_most(limit: timedelta, lowest: str = "1s") -> AfterValidator:
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
Timeout = Annotated[PositiveDuration, _at_most(timedelta(hours=1))]
LeaseLength = Annotated[PositiveDuration, _at_most(timedelta(days=1))]
Period = Annotated[PositiveDuration, _at_most(timedelta(days=366))]
Jitter = Annotated[NonNegativeDuration, _at_most(timedelta(days=366), lowest="0s")]
Backoff = Annotated[PositiveDuration, _at_most(timedelta(days=30))]
Horizon = Annotated[PositiveDuration, _at_most(timedelta(days=3660))]  # rpo, stuck_after
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


# --- models ------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LedgerSettings(_Model):
    url: str = Field(
        default="sqlite:////var/lib/cbr-replicator/ledger.db",
        description="SQLAlchemy URL of the ledger: sqlite:///PATH or postgresql+psycopg://...",
    )
    connect_timeout: Timeout = Field(
        default=timedelta(seconds=10),
        description="PostgreSQL: connecting to the server, at most",
    )
    statement_timeout: Timeout = Field(
        default=timedelta(seconds=60),
        description="PostgreSQL: one statement, at most; no answer by this plus connect_timeout "
        "closes the connection (a stalled server or network)",
    )
    lock_timeout: Timeout = Field(
        default=timedelta(seconds=20),
        description="PostgreSQL: waiting for a lock another session holds, at most",
    )
    keepalive: Timeout = Field(
        default=timedelta(seconds=30),
        description="PostgreSQL: TCP keepalive idle time (3 probes, a third of it apart); "
        "unacknowledged data is given up after twice this",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("sqlite:", "postgresql")):
            raise ValueError("use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB")
        if url.startswith("postgresql"):
            # A socket directory (postgresql://user@/db?host=/run/postgresql) names no host.
            scheme = url.partition("://")[0]
            problem = url_problem(url, (scheme,))
            if problem is not None and not problem.startswith("names no host"):
                raise ValueError(problem)
        return url


_CHARACTER_NAMES = {"\n": "a line break", "\r": "a carriage return", "\t": "a tab", " ": "a space"}


def credential_problem(value: str) -> str | None:
    """Why ``value`` cannot be an access key, secret key or token, or None. Such a key goes
    into a request header, where a line break or a space is refused, and the refusal quotes
    the header; the message names the character and its place, never the value."""
    for position, character in enumerate(value, start=1):
        if character.isspace() or not character.isprintable():
            name = _CHARACTER_NAMES.get(character, "a whitespace or control character")
            return (
                f"holds {name} at character {position} of {len(value)}; a key is one word "
                "of printable characters (a *_file may end with one line break): fix the value"
            )
    return None


class CredentialsSettings(_Model):
    access_key: SecretStr = Field(min_length=1, description="access key id (AK)")
    secret_key: SecretStr = Field(min_length=1, description="secret access key (SK)")
    security_token: SecretStr | None = Field(
        default=None, description="security token of temporary credentials"
    )
    domain_id: str | None = Field(default=None, description="account (domain) id, for IAM")

    @field_validator("access_key", "secret_key", "security_token")
    @classmethod
    def _printable_key(cls, value: SecretStr | None) -> SecretStr | None:
        problem = None if value is None else credential_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
        return value


class EndpointsSettings(_Model):
    iam: HttpUrl | None = Field(default=None, description="IAM endpoint URL (IAM is global)")
    cbr: dict[str, HttpUrl] = Field(default_factory=dict, description="region -> CBR endpoint URL")


class EmulatorSettings(_Model):
    scenario: Path | None = Field(default=None, description="scenario YAML seeding the emulator")
    state: Path | None = Field(default=None, description="JSON file persisting emulator state")
    permissive: bool = Field(default=False, description="accept any credentials and projects")
    time_scale: float = Field(
        default=1.0, gt=0, le=1e6, description="emulator clock speed vs real time"
    )


# Validation context key: the credentials were left unread (a command that never calls the
# cloud, such as ``status``), so their absence is no error.
CREDENTIALS_DEFERRED = "credentials_deferred"


class CloudSettings(_Model):
    provider: Literal["huaweicloud", "emulator"] = Field(
        default="huaweicloud", description="the real cloud, or the embedded emulator"
    )
    credentials: CredentialsSettings | None = Field(
        default=None,
        validate_default=True,
        description="AK/SK; required for huaweicloud (emulator: its defaults when absent)",
    )
    site: Literal["international", "europe", "otc"] = Field(
        default="international",
        description="which cloud: Huawei Cloud international or Europe, or Open Telekom Cloud "
        "(the IAM and CBR endpoints)",
    )
    endpoints: EndpointsSettings = Field(
        default_factory=EndpointsSettings, description="endpoint overrides"
    )
    projects: dict[str, str] = Field(
        default_factory=dict, description="region -> project id (skips the IAM lookup)"
    )
    ca_bundle: Path | None = Field(default=None, description="PEM file of trusted CAs")
    verify_tls: bool = Field(
        default=True, validate_default=True, description="verify TLS certificates"
    )
    proxy: HttpUrl | None = Field(
        default=None,
        description="HTTP(S) proxy URL (proxy environment variables are not read)",
    )
    connect_timeout: Timeout = Field(
        default=timedelta(seconds=10), description="TCP/TLS connect timeout"
    )
    timeout: Timeout = Field(
        default=timedelta(seconds=30),
        description="read timeout of one API request; with connect_timeout, the whole "
        "request's budget (a slowly dripped answer included)",
    )
    requests_per_second: float = Field(
        default=10,
        gt=0,
        le=1_000_000,
        description="client-side API rate limit (halved on 429, then raised)",
    )
    throttle_budget: Annotated[PositiveDuration, _at_most(timedelta(days=1))] = Field(
        default=timedelta(minutes=10),
        description="how long the gateway may throttle (429) without a success before the "
        "run gives up (exit 75)",
    )
    concurrency: PositiveInt = Field(
        default=8, le=256, description="API requests in flight at once"
    )
    max_listing_pages: PositiveInt = Field(
        default=1000,
        le=1_000_000,
        description="pages of 1,000 one listing (a vault's, or a project's) may take in one "
        "sweep; a longer one (or one repeating a page) fails that vault, the others go on",
    )
    sweep_deadline: Annotated[PositiveDuration, _at_most(timedelta(days=7))] = Field(
        default=timedelta(hours=1),
        description="longest a daemon's sweep (or tracking round) reads from the cloud; past "
        "it, it stops at its next read and the other policies' work goes on",
    )
    max_in_flight_per_region: Annotated[PositiveInt, Field(le=1_000_000)] | None = Field(
        default=None, description="replications running at once in one destination region"
    )
    lease: LeaseLength = Field(
        default=timedelta(minutes=2),
        validate_default=True,
        description="claim/lease length; must exceed connect_timeout + timeout",
    )
    emulator: EmulatorSettings = Field(
        default_factory=EmulatorSettings, description="embedded emulator (provider emulator)"
    )

    @field_validator("credentials")
    @classmethod
    def _credentials_for_cloud(
        cls, value: CredentialsSettings | None, info: ValidationInfo
    ) -> CredentialsSettings | None:
        deferred = bool((info.context or {}).get(CREDENTIALS_DEFERRED))
        provider = info.data.get("provider", "huaweicloud")
        if value is None and not deferred and provider == "huaweicloud":
            raise ValueError(
                "required for provider huaweicloud; set access_key and secret_key "
                "(e.g. ${HUAWEICLOUD_SDK_AK}) or access_key_file and secret_key_file"
            )
        return value

    @field_validator("verify_tls")
    @classmethod
    def _verification_needs_bundle(cls, value: bool, info: ValidationInfo) -> bool:
        if not value and info.data.get("ca_bundle") is None:
            raise ValueError(
                "TLS verification is off without a CA bundle; set cloud.ca_bundle to the "
                "endpoint's CA file and verify_tls: true"
            )
        return value

    @field_validator("lease")
    @classmethod
    def _lease_outlasts_request(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        connect, read = info.data.get("connect_timeout"), info.data.get("timeout")
        if connect is not None and read is not None and value <= connect + read:
            raise ValueError(
                f"must exceed connect_timeout + timeout ({int((connect + read).total_seconds())}s)"
                " so a crashed worker's request is over before its job is reclaimed; raise it"
            )
        return value


class ScheduleSettings(_Model):
    cron: str | None = Field(default=None, description='5-field cron, e.g. "30 */6 * * *"')
    interval: Period | None = Field(default=None, description="fixed interval, e.g. 6h")
    timezone: str = Field(default="UTC", description="IANA time zone of the cron expression")
    jitter: Jitter = Field(default=timedelta(0), description="random delay added to each run")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None:
            parse_cron(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        if value == "UTC":
            return value  # needs no time zone database, which minimal hosts may lack
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as UTC or Europe/Berlin"
            ) from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleSettings:
        if (self.cron is None) == (self.interval is None):
            raise ValueError('set exactly one of cron (e.g. "0 * * * *") or interval (e.g. 6h)')
        if self.jitter >= self.period:
            raise ValueError("jitter must be shorter than the schedule's period; reduce it")
        return self

    @property
    def period(self) -> timedelta:
        """The interval, or the longest gap between two runs of the cron expression."""
        if self.interval is not None:
            return self.interval
        return cron_longest_gap(parse_cron(self.cron or ""))


class RetrySettings(_Model):
    max_attempts: PositiveInt = Field(
        default=6, le=1000, description="attempts before a job is given up"
    )
    initial_backoff: Backoff = Field(
        default=timedelta(minutes=5), description="wait after the first failure"
    )
    max_backoff: Backoff = Field(
        default=timedelta(hours=6), validate_default=True, description="longest wait"
    )
    multiplier: float = Field(default=2.0, ge=1, le=100, description="backoff growth per attempt")
    jitter: float = Field(default=0.1, ge=0, le=1, description="random fraction of each wait")

    @field_validator("max_backoff")
    @classmethod
    def _not_below_initial(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        initial = info.data.get("initial_backoff")
        if initial is not None and value < initial:
            raise ValueError("must not be shorter than initial_backoff; raise it")
        return value


def _check_template(checker: Callable[[str], list[str]], value: str) -> str:
    problems = checker(value)
    if problems:
        raise ValueError("; ".join(problems))
    return value


class ReplicaTemplate(_Model):
    name: str = Field(
        default="{backup_name}",
        description="replica name template: [A-Za-z0-9_-] and {placeholders}, 1-64 rendered",
    )
    description: str = Field(
        default="Replica of {backup_name} ({backup_id}) from {source_region}",
        description="replica description template, at most 255 rendered characters",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_template(check_name_template, value)

    @field_validator("description")
    @classmethod
    def _valid_description(cls, value: str) -> str:
        return _check_template(check_description_template, value)


class WebhookSettings(_Model):
    url: HttpUrl = Field(pattern=r"^https?://", description="URL receiving state-change events")
    secret: SecretStr | None = Field(default=None, description="HMAC key signing each event")
    timeout: Timeout = Field(
        default=timedelta(seconds=10),
        description="timeout of one delivery try, the whole of it (a slow drip included)",
    )


class HeartbeatSettings(_Model):
    url: HttpUrl = Field(pattern=r"^https?://", description="URL pinged after each healthy sweep")


class NotifySettings(_Model):
    webhook: WebhookSettings | None = Field(default=None, description="state-change webhook")
    heartbeat: HeartbeatSettings | None = Field(default=None, description="liveness ping")


class MetricsSettings(_Model):
    listen: str | None = Field(
        default=None,
        pattern=r"^.+:\d{1,5}$",
        description="HOST:PORT of the Prometheus endpoint; absent: no endpoint",
    )


class LogSettings(_Model):
    format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="auto: JSON unless the log stream (daemon: stdout, commands: stderr) is a tty",
    )
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="lowest level logged"
    )


_REGION = r"^[a-z0-9]+(-[a-z0-9]+)+$"
_POLICY_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class SourceSettings(_Model):
    region: str = Field(pattern=_REGION, description="source region id, e.g. cn-north-4")
    vaults: tuple[NonEmptyStr, ...] = Field(
        min_length=1, description="source backup vaults, by name or id"
    )
    listing: Literal["vault", "project"] = Field(
        default="vault",
        description=(
            "vault: one listing per vault (a vault whose listing fails is skipped alone); "
            "project: one listing of the whole source project, kept to these vaults (fewer "
            "calls when the vaults are many and small; a failed listing skips them all)"
        ),
    )

    @field_validator("vaults")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("a vault is listed twice; list each vault once")
        return value


class DestinationSettings(_Model):
    region: str = Field(pattern=_REGION, description="destination region id")
    vault: NonEmptyStr = Field(description="destination replication vault, by name or id")
    project: NonEmptyStr | None = Field(
        default=None, description="destination project name or id; default: the region's"
    )


class PolicyDefaults(_Model):
    schedule: ScheduleSettings | None = Field(default=None, description="default schedule")
    retry: RetrySettings = Field(default_factory=RetrySettings, description="retry and backoff")
    max_in_flight: PositiveInt = Field(
        default=10, le=1_000_000, description="replications running at once"
    )
    replica: ReplicaTemplate = Field(default_factory=ReplicaTemplate, description="naming")
    enable_acceleration: bool = Field(default=False, description="accelerated replication")
    traffic_budget_per_day: ByteSize | None = Field(
        default=None, description="bytes submitted per day (schedule timezone) at most, e.g. 2TiB"
    )
    rpo: Horizon | None = Field(
        default=None,
        description="longest a backup may wait for its replica; default 2x the schedule's period",
    )
    stuck_after: Horizon = Field(
        default=timedelta(hours=6),
        description="a replication whose record has not moved for this long is stuck",
    )


class Policy(_Model):
    name: str = Field(pattern=_POLICY_NAME, description="unique, 1-64 of [A-Za-z0-9_-]")
    enabled: bool = Field(default=True, description="false: never swept")
    source: SourceSettings = Field(description="where backups are made")
    destination: DestinationSettings = Field(validate_default=True, description="where replicas go")
    schedule: ScheduleSettings = Field(description="when the policy is swept")
    retry: RetrySettings = Field(default_factory=RetrySettings, description="retry and backoff")
    replica: ReplicaTemplate = Field(default_factory=ReplicaTemplate, description="naming")
    enable_acceleration: bool = Field(default=False, description="accelerated replication")
    max_in_flight: PositiveInt = Field(
        default=10, le=1_000_000, description="replications running at once"
    )
    traffic_budget_per_day: ByteSize | None = Field(
        default=None, description="bytes submitted per day (schedule timezone) at most, e.g. 2TiB"
    )
    rpo: Horizon = Field(
        default=timedelta(0),
        description="longest a backup may wait for its replica; default 2x the schedule's period",
    )
    stuck_after: Horizon = Field(
        default=timedelta(hours=6),
        description="a replication whose record has not moved for this long is stuck",
    )
    notify: NotifySettings | None = Field(default=None, description="overrides global notify")

    @field_validator("destination")
    @classmethod
    def _other_region(cls, value: DestinationSettings, info: ValidationInfo) -> DestinationSettings:
        source = info.data.get("source")
        if source is not None and source.region == value.region:
            raise ValueError("the destination region equals the source region; pick another")
        return value

    @model_validator(mode="before")
    @classmethod
    def _null_rpo_is_default(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "rpo" in data and data["rpo"] is None:
            return {key: value for key, value in data.items() if key != "rpo"}
        return data

    @model_validator(mode="after")
    def _default_rpo(self) -> Policy:
        if "rpo" not in self.model_fields_set:
            # Frozen model: set the derived default once, during validation.
            object.__setattr__(self, "rpo", 2 * self.schedule.period)
        return self


class Settings(_Model):
    ledger: LedgerSettings = Field(default_factory=LedgerSettings, description="the ledger")
    cloud: CloudSettings = Field(description="how to reach the cloud")
    defaults: PolicyDefaults = Field(
        default_factory=PolicyDefaults, description="values every policy inherits"
    )
    policies: tuple[Policy, ...] = Field(default=(), description="replication policies")
    policies_dir: Path | None = Field(
        default=None, description="directory whose *.yaml files each hold a list of policies"
    )
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="Prometheus")
    log: LogSettings = Field(default_factory=LogSettings, description="logging")
    notify: NotifySettings = Field(default_factory=NotifySettings, description="notifications")


# --- checks across policies --------------------------------------------------------------

Loc = tuple[str | int, ...]


def policy_conflicts(policies: Sequence[object]) -> list[tuple[Loc, str]]:
    """Duplicate names and two policies for one (source vault, destination region).

    Works on the raw merged mappings, so it runs even when other fields are invalid.
    """
    problems: list[tuple[Loc, str]] = []
    names: set[str] = set()
    owners: dict[tuple[str, str], tuple[int, str]] = {}
    for index, raw in enumerate(policies):
        name = raw.get("name") if isinstance(raw, Mapping) else None
        if not isinstance(raw, Mapping) or not isinstance(name, str):
            continue  # the model reports the malformed policy or its missing name
        if name in names:
            problems.append(((index, "name"), f"duplicate policy name {name!r}; rename one"))
        names.add(name)
        for vault, region in _vault_pairs(raw):
            owner, owner_name = owners.setdefault((vault, region), (index, name))
            if owner != index:
                problems.append(
                    (
                        (index, "source", "vaults"),
                        f"vault {vault!r} -> {region} is also replicated by policy "
                        f"{owner_name!r}; a vault goes to a region through one policy only",
                    )
                )
    return problems


def _vault_pairs(raw: Mapping[Any, Any]) -> list[tuple[str, str]]:
    source, destination = raw.get("source"), raw.get("destination")
    if not isinstance(source, Mapping) or not isinstance(destination, Mapping):
        return []
    vaults, region = source.get("vaults"), destination.get("region")
    if not isinstance(vaults, list | tuple) or not isinstance(region, str):
        return []
    names = (vault for vault in vaults if isinstance(vault, str))  # a list item is unhashable
    return [(vault, region) for vault in dict.fromkeys(names)]
