"""Composition root: settings -> ledger, cloud (real or the embedded emulator), clock, engine.

The only place that reads the real clock and picks concrete adapters; tests build an ``App``
from a config file like any operator would, pointing it at an emulator.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from pydantic import SecretStr

from daemon.adapters.cloud.client import HuaweiCloud
from daemon.adapters.cloud.options import CloudOptions, Credentials
from daemon.adapters.cloud.sdk import ApiCallback
from daemon.adapters.ledger import DatabaseTimeouts, SqlLedger, open_ledger
from daemon.config.load import LoadedConfig
from daemon.core.errors import ConfigError
from daemon.core.policy import Policy, Settings
from daemon.core.ports import Cloud
from daemon.core.redaction import redact_text, register_secrets
from daemon.core.settings import CloudSettings
from daemon.engine.context import Engine, ambiguous_recheck


def utc_now() -> datetime:
    return datetime.now(UTC)


def instance_id() -> str:
    """host:pid:start, recorded on every lease this process holds."""
    return f"{socket.gethostname()}:{os.getpid()}:{int(utc_now().timestamp())}"


def owner_gone(owner: str) -> bool:
    """Is ``owner`` (an ``instance_id``) a process of this host that no longer runs? Another
    host's owner, a pid that exists (even reused) or an unreadable owner count as running:
    a wrong "no" only delays work until the lease expires, a wrong "yes" never happens."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # EPERM: it runs, as another user
    return False


@dataclass
class App:
    loaded: LoadedConfig
    engine: Engine
    ledger: SqlLedger
    emulator: Any = None
    # False for an App built on a ledger that another App opened (the daemon's reload): its
    # close() leaves that ledger, and the jobs claimed under the shared owner, to the owner.
    owns_ledger: bool = True
    closed: bool = field(default=False)

    @property
    def settings(self) -> Settings:
        return self.loaded.settings

    def policies(self, names: list[str] | None = None) -> list[Policy]:
        """Enabled policies, or the named ones (enabled or not); unknown names are an error."""
        known = {policy.name: policy for policy in self.settings.policies}
        if not names:
            return [policy for policy in known.values() if policy.enabled]
        unknown = [name for name in names if name not in known]
        if unknown:
            known_names = ", ".join(known) or "none"
            raise ConfigError(
                [f"{self.loaded.path}: no policy named {', '.join(unknown)}; known: {known_names}"]
            )
        return [known[name] for name in names]

    def endpoints(self, regions: list[str]) -> dict[str, str]:
        """The IAM and CBR endpoints the cloud adapter resolved (``check-config --cloud``)."""
        cloud = self.engine.cloud
        return cloud.endpoints(regions) if isinstance(cloud, HuaweiCloud) else {}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.owns_ledger:
            self.ledger.release_jobs(self.engine.owner)
            self.ledger.close()
        if self.emulator is not None:
            self.emulator.stop()


class _NoCloud:
    """The cloud of a command that only reads the ledger (``status``, ``history``, ...):
    built without credentials, it refuses every call with the reason they are missing."""

    def __init__(self, problems: tuple[str, ...]) -> None:
        self.problems = problems or ("cloud.credentials: not loaded by this command",)

    def __getattr__(self, name: str) -> Any:
        raise ConfigError(list(self.problems))


def build_app(
    loaded: LoadedConfig,
    *,
    open_cloud: bool = True,
    create_ledger: bool = True,
    on_api_call: ApiCallback | None = None,
    on_retry: Callable[[str], None] | None = None,
    reuse: App | None = None,
    ledger: SqlLedger | None = None,
) -> App:
    """``on_api_call(operation, outcome)`` and ``on_retry(operation)`` observe every API
    call of the adapter (the daemon's metrics). Without ``open_cloud`` the embedded emulator
    is not started and credentials left unread are no error (until the cloud is called);
    without ``create_ledger`` a missing ledger is a ``LedgerError``. ``reuse``: a running App
    whose ledger and identity the new one shares (a reload): the ledger is not opened again,
    because opening the file anew beside live connections is how SQLite's locks get lost.
    ``ledger``: use (and own) this one instead of opening ``ledger.url``."""
    settings = loaded.settings
    if open_cloud and loaded.credential_problems:
        raise ConfigError(list(loaded.credential_problems))
    register_secrets(loaded.secrets)
    if reuse is not None:
        ledger = reuse.ledger
    elif ledger is None:
        ledger = open_ledger(
            settings.ledger.url, _database_timeouts(settings), create=create_ledger
        )
    ledger.redact = redact_text
    emulator = _start_emulator(settings) if open_cloud else None
    try:
        cloud: Cloud
        if open_cloud or settings.cloud.credentials is not None:
            cloud = HuaweiCloud(
                _credentials(settings, emulator),
                _options(settings, emulator),
                on_api_call=on_api_call,
                on_retry=on_retry,
            )
        else:
            cloud = cast(Cloud, _NoCloud(loaded.credential_problems))
    except BaseException:
        if reuse is None:
            ledger.close()
        if emulator is not None:
            emulator.stop()
        raise
    engine = Engine(
        cloud=cloud,
        ledger=ledger,
        clock=utc_now,
        owner=reuse.engine.owner if reuse is not None else instance_id(),
        lease=settings.cloud.lease,
        max_in_flight_per_region=settings.cloud.max_in_flight_per_region,
        rng=random.Random(),
        concurrency=settings.cloud.concurrency,
        owner_gone=owner_gone,
        recheck=ambiguous_recheck(settings.cloud.connect_timeout, settings.cloud.timeout),
    )
    return App(
        loaded=loaded, engine=engine, ledger=ledger, emulator=emulator, owns_ledger=reuse is None
    )


def _start_emulator(settings: Settings) -> Any:
    """``cloud.provider: emulator``: the local CBR + IAM server, in this process."""
    if settings.cloud.provider != "emulator":
        return None
    from daemon.emulator import Emulator

    options = settings.cloud.emulator
    state = Path(options.state) if options.state else None
    if state is not None:
        state.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    emulator = Emulator(
        Path(options.scenario) if options.scenario else {},
        state_file=state,
        permissive=options.permissive,
        time_scale=options.time_scale,
    )
    emulator.start()
    return emulator


def _credentials(settings: Settings, emulator: Any) -> Credentials:
    configured = settings.cloud.credentials
    if configured is not None:
        return Credentials(
            access_key=configured.access_key,
            secret_key=configured.secret_key,
            security_token=configured.security_token,
            domain_id=configured.domain_id or (emulator.domain_id if emulator else None),
        )
    if emulator is None:
        raise ConfigError(["cloud.credentials: required for provider huaweicloud"])
    return Credentials(
        access_key=SecretStr(emulator.access_key),
        secret_key=SecretStr(emulator.secret_key),
        domain_id=emulator.domain_id,
    )


def _database_timeouts(settings: Settings) -> DatabaseTimeouts:
    ledger = settings.ledger
    return DatabaseTimeouts(
        connect=ledger.connect_timeout,
        statement=ledger.statement_timeout,
        lock=ledger.lock_timeout,
        keepalive=ledger.keepalive,
    )


def _options(settings: Settings, emulator: Any) -> CloudOptions:
    cloud = settings.cloud
    return CloudOptions(
        cbr_endpoints=dict(cloud.endpoints.cbr),
        iam_endpoint=cloud.endpoints.iam,
        projects=dict(cloud.projects),
        verify_tls=cloud.verify_tls,
        ca_bundle=str(cloud.ca_bundle) if cloud.ca_bundle else None,
        proxy=cloud.proxy,
        connect_timeout=cloud.connect_timeout,
        read_timeout=cloud.timeout,
        requests_per_second=cloud.requests_per_second,
        concurrency=cloud.concurrency,
        max_listing_pages=cloud.max_listing_pages,
        all_regions_endpoint=emulator.url if emulator is not None else None,
        site=cloud.site,
        throttle_budget=cloud.throttle_budget,
        mutation_throttle_wait=mutation_throttle_wait(cloud),
    )


def mutation_throttle_wait(cloud: CloudSettings) -> timedelta:
    """How long a POST may wait for the throttle: half of what its job's lease leaves beyond
    the request itself (the other half for its turn in the batch), so that the POST is over
    before another instance may take the job over."""
    slack = cloud.lease - cloud.connect_timeout - cloud.timeout
    return max(timedelta(0), slack / 2)
