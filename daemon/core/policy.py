"""The config schema (docs/design.md §8): frozen pydantic models, durations, sizes and cron.

Pure: no file, no environment, no clock. ``daemon.config`` reads the files, resolves ``${NAME}``
references and ``*_file`` secrets, merges ``defaults`` into each policy, then validates here.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from daemon.core.naming import check_description_template, check_name_template
from daemon.core.settings import (
    CloudSettings,
    LedgerSettings,
    LogSettings,
    MetricsSettings,
    Model,
    NotifySettings,
)
from daemon.core.units import (
    Backoff,
    ByteSize,
    Horizon,
    Jitter,
    NonEmptyStr,
    Period,
    PositiveInt,
    cron_longest_gap,
    parse_cron,
)


class ScheduleSettings(Model):
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


class RetrySettings(Model):
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


class ReplicaTemplate(Model):
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


_REGION = r"^[a-z0-9]+(-[a-z0-9]+)+$"
_POLICY_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class SourceSettings(Model):
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


class DestinationSettings(Model):
    region: str = Field(pattern=_REGION, description="destination region id")
    vault: NonEmptyStr = Field(description="destination replication vault, by name or id")
    project: NonEmptyStr | None = Field(
        default=None, description="destination project name or id; default: the region's"
    )


class PolicyDefaults(Model):
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


class Policy(Model):
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


class Settings(Model):
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
