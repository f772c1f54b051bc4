"""Secrets and locations: ``${VAR}`` substitution, secret files, the credentials (checked
and held apart from the rest), relative ledger and file paths made absolute.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.config.files import MAX_FILE_BYTES, owner_problem, parent_problem, read_bounded_file
from daemon.config.problems import Problems
from daemon.core.policy import Loc, Settings
from daemon.core.settings import credential_problem

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Where ``X_file`` may replace a secret ``X``: (path suffix, secret keys).
SECRET_PLACES: tuple[tuple[Loc, frozenset[str]], ...] = (
    (("cloud", "credentials"), frozenset({"access_key", "secret_key", "security_token"})),
    (("notify", "webhook"), frozenset({"secret"})),
)
_SQLITE_RELATIVE = re.compile(r"^(sqlite(?:\+\w+)?:///)(?!/)(?!:memory:)(.+)$")
PASSWORD_IN_URL = re.compile(r"(?<=://)([^:/@]*):([^@/]+)@")


# --- environment and secrets -------------------------------------------------------------


def substitute_text(text: str, loc: Loc, environ: Mapping[str, str], problems: Problems) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match[1]
        if name not in environ:
            problems.at(loc, f"environment variable {name} is not set; {_unset_fix(name)}")
            problems.tainted.add(loc)
            return ""
        return environ[name]

    return _ENV_REFERENCE.sub(replace, text)


def _unset_fix(name: str) -> str:
    if name == "CREDENTIALS_DIRECTORY":  # set by systemd for the unit's processes only
        return (
            "systemd sets it inside the unit (LoadCredential=): run the command as the "
            "service does, e.g. with the README's cbr() helper"
        )
    return "set it or edit the file"


def substitute(value: Any, loc: Loc, environ: Mapping[str, str], problems: Problems) -> Any:
    """``value`` with every ``${NAME}`` in its strings read from ``environ``."""
    if isinstance(value, str):
        return substitute_text(value, loc, environ, problems)
    if isinstance(value, Mapping):
        return {k: substitute(v, (*loc, str(k)), environ, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, (*loc, i), environ, problems) for i, v in enumerate(value)]
    return value


def _secret_file_problem(path: Path) -> str | None:
    try:
        info = path.lstat()
    except OSError as error:
        return f"secret file {path}: {error.strerror}; create it or fix the path"
    if stat.S_ISLNK(info.st_mode):
        return f"secret file {path} is a symlink; name the file itself"
    if not stat.S_ISREG(info.st_mode):
        return f"secret file {path} is not a regular file; name a file"
    if info.st_mode & 0o077:
        return (
            f"secret file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
        )
    if info.st_size > MAX_FILE_BYTES:
        return f"secret file {path} is larger than 1 MiB; name the right file"
    owner = owner_problem(path, info)
    return f"secret file {path} {owner}" if owner else parent_problem(path)


def _read_secret(path: Path) -> str:
    """The secret in ``path``: its text less one trailing line break, which editors and
    `echo` add and which is not part of the secret. ``ValueError`` names what is wrong."""
    try:
        data = read_bounded_file(path, follow=False)
    except OSError as error:
        raise ValueError(f"secret file {path}: {error.strerror}; check the file") from None
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"secret file {path} is larger than 1 MiB; name the right file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"secret file {path} is not UTF-8 text (byte {error.start + 1}); name the file "
            "holding the secret as text"
        ) from None
    return text.removesuffix("\n").removesuffix("\r")


class SecretResolver:
    """Replaces ``X_file`` keys by the content of the named files."""

    def __init__(self, base: Path, problems: Problems) -> None:
        self.base = base
        self.problems = problems
        self.values: list[str] = []

    def resolve(self, value: Any, loc: Loc = ()) -> Any:
        if isinstance(value, list):
            return [self.resolve(item, (*loc, i)) for i, item in enumerate(value)]
        if not isinstance(value, Mapping):
            return value
        resolved = {k: self.resolve(v, (*loc, str(k))) for k, v in value.items()}
        for suffix, keys in SECRET_PLACES:
            if loc[-len(suffix) :] == suffix:
                self._read_files(resolved, loc, keys)
        return resolved

    def _read_files(self, mapping: dict[str, Any], loc: Loc, keys: frozenset[str]) -> None:
        for key in sorted(keys):
            file_key = f"{key}_file"
            if file_key not in mapping:
                continue
            assert self.problems.locator is not None
            self.problems.locator.aliases[(*loc, key)] = (*loc, file_key)
            name = mapping.pop(file_key)
            if key in mapping:
                self.problems.at((*loc, key), f"give {key} or {file_key}, not both; drop one")
            elif (*loc, file_key) in self.problems.tainted:
                # Its path names an unset ${VAR}, already reported: reading what is left of
                # it ("/ak") would only add a misleading "no such file".
                mapping[key] = "unread"
                self.problems.tainted.add((*loc, key))
            elif isinstance(name, str):
                mapping[key] = self._read(self.base / name, (*loc, key))
            else:
                self.problems.at((*loc, key), "write the path of the file holding the secret")
                self.problems.tainted.add((*loc, key))

    def _read(self, path: Path, loc: Loc) -> str:
        problem = _secret_file_problem(path)
        if problem is None:
            try:
                secret = _read_secret(path)
            except ValueError as error:
                problem = str(error)
            else:
                self.values.append(secret)  # redacted even if refused below
                found = credential_problem(secret) if loc[-2:-1] == ("credentials",) else None
                if found is None:
                    return secret
                problem = f"secret file {path} {found}"
        self.problems.at(loc, problem)
        self.problems.tainted.add(loc)
        return "unread"


def resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Relative paths are relative to the main config file's directory."""
    cloud = raw.get("cloud")
    if isinstance(cloud, dict):
        if isinstance(cloud.get("ca_bundle"), str):
            cloud["ca_bundle"] = str(base / cloud["ca_bundle"])
        emulator = cloud.get("emulator")
        if isinstance(emulator, dict):
            for key in ("scenario", "state"):
                if isinstance(emulator.get(key), str):
                    emulator[key] = str(base / emulator[key])
    ledger = raw.get("ledger")
    if isinstance(ledger, dict) and isinstance(ledger.get("url"), str):
        match = _SQLITE_RELATIVE.match(ledger["url"])
        if match:
            ledger["url"] = match[1] + str(base / match[2])


def settings_secrets(settings: Settings) -> list[str]:
    found = []
    credentials = settings.cloud.credentials
    if credentials is not None:
        found += [credentials.access_key, credentials.secret_key, credentials.security_token]
    for notify in (settings.notify, *(policy.notify for policy in settings.policies)):
        if notify is not None and notify.webhook is not None:
            found.append(notify.webhook.secret)
    values = [secret.get_secret_value() for secret in found if secret is not None]
    password = PASSWORD_IN_URL.search(settings.ledger.url)
    return values + ([password[2]] if password else [])


# --- API ----------------------------------------------------------------------------------


_CREDENTIALS: Loc = ("cloud", "credentials")


def hold_credentials(raw: dict[str, Any]) -> Any:
    """Take ``cloud.credentials`` out of ``raw`` (None when there are none), to read apart."""
    cloud = raw.get("cloud")
    if not isinstance(cloud, Mapping) or "credentials" not in cloud:
        return None
    cloud = dict(cloud)
    raw["cloud"] = cloud
    return cloud.pop("credentials")


def read_credentials(
    raw: dict[str, Any],
    held: Any,
    environ: Mapping[str, str],
    problems: Problems,
    resolver: SecretResolver,
) -> list[str]:
    """Read the held credentials back into ``raw``; when they cannot be read here (a
    ``${NAME}`` unset, a secret file missing: systemd's ``$CREDENTIALS_DIRECTORY`` exists
    only inside the unit), leave them out and return why."""
    trial = Problems(locator=problems.locator)
    value = substitute(held, _CREDENTIALS, environ, trial)
    reader = SecretResolver(resolver.base, trial)
    value = reader.resolve(value, _CREDENTIALS)
    if trial.lines:
        return trial.unique()
    raw["cloud"]["credentials"] = value
    resolver.values += reader.values
    return []
