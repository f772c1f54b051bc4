"""The daemon's sections of the config: the ledger, the cloud (credentials, endpoints, the
emulator), notifications, metrics and logging. Frozen pydantic models; pure.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from daemon.core.units import (
    HttpUrl,
    LeaseLength,
    PositiveDuration,
    PositiveInt,
    Timeout,
    at_most,
    url_problem,
)

# --- models ------------------------------------------------------------------------------


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LedgerSettings(Model):
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


class CredentialsSettings(Model):
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


class EndpointsSettings(Model):
    iam: HttpUrl | None = Field(default=None, description="IAM endpoint URL (IAM is global)")
    cbr: dict[str, HttpUrl] = Field(default_factory=dict, description="region -> CBR endpoint URL")


class EmulatorSettings(Model):
    scenario: Path | None = Field(default=None, description="scenario YAML seeding the emulator")
    state: Path | None = Field(default=None, description="JSON file persisting emulator state")
    permissive: bool = Field(default=False, description="accept any credentials and projects")
    time_scale: float = Field(
        default=1.0, gt=0, le=1e6, description="emulator clock speed vs real time"
    )


# Validation context key: the credentials were left unread (a command that never calls the
# cloud, such as ``status``), so their absence is no error.
CREDENTIALS_DEFERRED = "credentials_deferred"


class CloudSettings(Model):
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
    throttle_budget: Annotated[PositiveDuration, at_most(timedelta(days=1))] = Field(
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
    sweep_deadline: Annotated[PositiveDuration, at_most(timedelta(days=7))] = Field(
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


class WebhookSettings(Model):
    url: HttpUrl = Field(pattern=r"^https?://", description="URL receiving state-change events")
    secret: SecretStr | None = Field(default=None, description="HMAC key signing each event")
    timeout: Timeout = Field(
        default=timedelta(seconds=10),
        description="timeout of one delivery try, the whole of it (a slow drip included)",
    )


class HeartbeatSettings(Model):
    url: HttpUrl = Field(pattern=r"^https?://", description="URL pinged after each healthy sweep")


class NotifySettings(Model):
    webhook: WebhookSettings | None = Field(default=None, description="state-change webhook")
    heartbeat: HeartbeatSettings | None = Field(default=None, description="liveness ping")


class MetricsSettings(Model):
    listen: str | None = Field(
        default=None,
        pattern=r"^.+:\d{1,5}$",
        description="HOST:PORT of the Prometheus endpoint; absent: no endpoint",
    )


class LogSettings(Model):
    format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="auto: JSON unless the log stream (daemon: stdout, commands: stderr) is a tty",
    )
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="lowest level logged"
    )
