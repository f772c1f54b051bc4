"""Find and read the config (docs/design.md §8), resolve secrets, build the settings.

Every problem is collected and reported at once, one line each:
``FILE:LINE: field.path: what is wrong; how to fix it``. No message carries a secret value.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.config.files import read_yaml
from daemon.config.problems import Document, Locator, Origin, Problems, dotted, nearest_line
from daemon.config.secrets import (
    SecretResolver,
    hold_credentials,
    read_credentials,
    resolve_paths,
    settings_secrets,
    substitute,
    substitute_text,
)
from daemon.config.validation import validate_settings
from daemon.core.errors import ConfigError
from daemon.core.policy import Loc, Settings, policy_conflicts


@dataclass(frozen=True)
class LoadedConfig:
    """Validated settings and where they came from."""

    settings: Settings
    path: Path
    files: tuple[Path, ...]  # the main file and every policies_dir file read
    secrets: tuple[str, ...]  # every secret value loaded, for the log redactor
    # Why ``cloud.credentials`` could not be read, when the caller did not need them (then
    # ``settings.cloud.credentials`` is None): what a command calling the cloud reports.
    credential_problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # FILE:LINE: field: what is risky; how to avoid it


# --- assembling the raw settings -------------------------------------------------------


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _policy_files(
    raw: dict[str, Any], base: Path, environ: Mapping[str, str], problems: Problems
) -> list[Path]:
    directory = raw.get("policies_dir")
    if directory is None:
        return []
    if not isinstance(directory, str):
        return []  # the model reports the wrong type
    resolved = base / substitute_text(directory, ("policies_dir",), environ, problems)
    raw["policies_dir"] = str(resolved)
    if not resolved.is_dir():
        problems.at(("policies_dir",), f"{resolved} is not a directory; create it or fix the path")
        return []
    return sorted(resolved.glob("*.yaml"))


def _collect_policies(main: Document, files: list[Path], problems: Problems) -> list[Any]:
    """Every policy of the main file and of ``files``, recording where each was written."""
    assert problems.locator is not None
    found: list[Any] = []
    sources: list[tuple[Document, Loc, Any]] = [(main, ("policies",), main.data.get("policies"))]
    for path in files:
        document = read_yaml(path, problems)
        if document is not None:
            sources.append((document, (), document.data))
    for document, base, entries in sources:
        if entries is None:
            continue
        if not isinstance(entries, list):
            line = nearest_line(document.lines, base)
            problems.file(document.path, f"{dotted(base)}: must be a YAML list of policies", line)
            continue
        for index, entry in enumerate(entries):
            problems.locator.origins.append(Origin(document, (*base, index)))
            found.append(entry)
    return found


def _inheritable(defaults: Mapping[str, Any], policy: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``defaults`` a policy inherits.

    A null default means "no default". A policy that names its schedule kind (cron or
    interval) does not inherit the other kind, nor the default's kind.
    """
    inherited = {key: value for key, value in defaults.items() if value is not None}
    schedule, own = inherited.get("schedule"), policy.get("schedule")
    names_kind = isinstance(own, Mapping) and ("cron" in own or "interval" in own)
    if isinstance(schedule, Mapping) and names_kind:
        inherited["schedule"] = {k: v for k, v in schedule.items() if k not in ("cron", "interval")}
    return inherited


def _merge_defaults(raw: dict[str, Any], policies: list[Any]) -> list[Any]:
    defaults = raw.get("defaults")
    if not isinstance(defaults, Mapping):
        return policies
    return [
        _deep_merge(_inheritable(defaults, p), p) if isinstance(p, Mapping) else p for p in policies
    ]


def load_settings(
    path: Path, environ: Mapping[str, str] | None = None, *, need_credentials: bool = True
) -> LoadedConfig:
    """Read, check and validate the config at ``path``; ``ConfigError`` lists every problem.

    Without ``need_credentials`` (a command that never calls the cloud), credentials that
    cannot be read are no error: they are left out and ``credential_problems`` says why."""
    environ = os.environ if environ is None else environ
    problems = Problems()
    main = read_yaml(path, problems)
    if main is not None and not isinstance(main.data, dict):
        problems.file(path, "must hold a YAML mapping (ledger:, cloud:, policies:, ...)")
        main = None
    elif main is not None and _foreign(main.data):
        # Some other file (a config symlinked to /etc/shadow): its lines are not quoted back.
        problems.file(
            path,
            "holds none of the config's sections (ledger:, cloud:, policies:, ...): it is not "
            "a cbr-replicator config; name the config file",
        )
        main = None
    if main is None:
        raise ConfigError(problems.unique())
    problems.locator = Locator(main)
    base = path.absolute().parent
    raw = dict(main.data)
    files = _policy_files(raw, base, environ, problems)
    raw["policies"] = _merge_defaults(raw, _collect_policies(main, files, problems))
    held = None if need_credentials else hold_credentials(raw)
    raw = substitute(raw, (), environ, problems)
    resolver = SecretResolver(base, problems)
    raw = resolver.resolve(raw)
    deferred = [] if held is None else read_credentials(raw, held, environ, problems, resolver)
    resolve_paths(raw, base)
    settings = validate_settings(raw, problems, credentials_deferred=bool(deferred))
    for loc, message in policy_conflicts(raw["policies"]):
        problems.at(("policies", *loc), message)
    if settings is None or problems.lines:
        raise ConfigError(problems.unique())
    secrets = [*resolver.values, *settings_secrets(settings)]
    return LoadedConfig(
        settings,
        path,
        (path, *files),
        tuple(dict.fromkeys(s for s in secrets if s)),
        credential_problems=tuple(deferred),
        warnings=tuple(_warnings(settings, problems)),
    )


def _foreign(data: Mapping[Any, Any]) -> bool:
    """Keys but none of the config's sections, not even misspelt: not a config at all."""
    sections = list(Settings.model_fields)
    return bool(data) and not any(
        str(key) in sections or difflib.get_close_matches(str(key), sections, n=1) for key in data
    )


def _warnings(settings: Settings, problems: Problems) -> list[str]:
    """What is valid but risky, in the form of a problem line."""
    found = Problems(problems.locator)
    listen = settings.metrics.listen
    if listen is not None and not _loopback(listen.rpartition(":")[0].strip("[]")):
        found.at(
            ("metrics", "listen"),
            "serves the metrics beyond this host, to anyone who reaches it (no authentication); "
            "listen on 127.0.0.1:PORT unless a firewall keeps others out",
        )
    return found.lines


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface
