"""Find and read the config (docs/design.md §8), resolve secrets, build the settings.

Every problem is collected and reported at once, one line each:
``FILE:LINE: field.path: what is wrong; how to fix it``. No message carries a secret value.
"""

from __future__ import annotations

import difflib
import errno
import ipaddress
import os
import re
import stat
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.json_schema import GenerateJsonSchema

from daemon.core.errors import ConfigError
from daemon.core.policy import (
    CREDENTIALS_DEFERRED,
    Loc,
    NotifySettings,
    Policy,
    Settings,
    credential_problem,
    policy_conflicts,
)
from daemon.core.policy import format_duration as _duration_text

MAX_FILE_BYTES = 1 << 20  # docs/design.md §14: refuse anything bigger before parsing
MAX_SHOWN_KEY = 40
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SAFE_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}"
    for name in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "merge")
)
# Where ``X_file`` may replace a secret ``X``: (path suffix, secret keys).
_SECRET_PLACES: tuple[tuple[Loc, frozenset[str]], ...] = (
    (("cloud", "credentials"), frozenset({"access_key", "secret_key", "security_token"})),
    (("notify", "webhook"), frozenset({"secret"})),
)
_SQLITE_RELATIVE = re.compile(r"^(sqlite(?:\+\w+)?:///)(?!/)(?!:memory:)(.+)$")
_PASSWORD_IN_URL = re.compile(r"(?<=://)([^:/@]*):([^@/]+)@")


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


@dataclass
class _Document:
    """One parsed YAML file and the line of every field path in it."""

    path: Path
    data: Any
    lines: dict[Loc, int]


@dataclass(frozen=True)
class _Origin:
    """Where one policy was written: its file and its path there."""

    document: _Document
    base: Loc


@dataclass
class _Locator:
    """Maps a field path of the merged settings to (file, line, shown path)."""

    main: _Document
    origins: list[_Origin] = field(default_factory=list)
    aliases: dict[Loc, Loc] = field(default_factory=dict)  # secret -> its ``_file`` key

    def locate(self, loc: Loc) -> tuple[Path, int | None, Loc]:
        loc = self._unalias(loc)
        index = loc[1] if len(loc) >= 2 and loc[0] == "policies" else None
        if isinstance(index, int) and index < len(self.origins):
            return self._locate_policy(self.origins[index], loc[2:])
        return self.main.path, _nearest_line(self.main.lines, loc), loc

    def _unalias(self, loc: Loc) -> Loc:
        for secret, file_key in self.aliases.items():
            if loc[: len(secret)] == secret:
                return file_key + loc[len(secret) :]
        return loc

    def _locate_policy(self, origin: _Origin, rest: Loc) -> tuple[Path, int | None, Loc]:
        own = origin.base + rest
        inherited = ("defaults", *rest)
        if own not in origin.document.lines and rest and inherited in self.main.lines:
            # The value came from ``defaults``: point there, where it must be fixed.
            return self.main.path, self.main.lines[inherited], inherited
        shown = ("policies", *origin.base[-1:], *rest)
        return origin.document.path, _nearest_line(origin.document.lines, own), shown


@dataclass
class _Problems:
    locator: _Locator | None = None
    lines: list[str] = field(default_factory=list)
    tainted: set[Loc] = field(default_factory=set)  # already reported: skip follow-up errors
    places: list[tuple[int, int]] = field(default_factory=list)  # (file's rank, line) per line
    files: dict[Path, int] = field(default_factory=dict)

    def file(self, path: Path, message: str, line: int | None = None) -> None:
        self.lines.append(f"{path}:{line}: {message}" if line else f"{path}: {message}")
        self.places.append((self.files.setdefault(path, len(self.files)), line or 0))

    def at(self, loc: Loc, message: str) -> None:
        assert self.locator is not None
        path, line, shown = self.locator.locate(loc)
        self.file(path, f"{_dotted(shown)}: {message}", line)

    def unique(self) -> list[str]:
        """Each problem once, file by file in line order (as an editor shows the file),
        whichever check found it first."""
        order = sorted(range(len(self.lines)), key=self.places.__getitem__)
        return list(dict.fromkeys(self.lines[index] for index in order))


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        name = part if part.isprintable() else repr(part)  # a key may hold a line break
        if len(name) > MAX_SHOWN_KEY:  # a key is quoted to be found, not read back
            name = name[: MAX_SHOWN_KEY - 3] + "..."
        text += f".{name}" if text else name
    return text or "(top level)"


def _nearest_line(lines: Mapping[Loc, int], loc: Loc) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


# --- files -------------------------------------------------------------------------------


def _writable_by_others(mode: int) -> bool:
    return bool(mode & (stat.S_IWGRP | stat.S_IWOTH))


def _parent_problem(path: Path) -> str | None:
    parent = path.parent
    mode = parent.stat().st_mode
    if _writable_by_others(mode) and not mode & stat.S_ISVTX:
        return (
            f"directory {parent} is writable by group or others and not sticky "
            f"(mode {stat.S_IMODE(mode):04o}); run `chmod go-w {parent}`"
        )
    return None


def _owner_problem(path: Path, info: os.stat_result) -> str | None:
    """Like sshd's StrictModes: a file someone else owns may say anything (or be a file
    someone else may read, like /etc/shadow through a symlink)."""
    euid = os.geteuid()
    if info.st_uid in (0, euid):
        return None
    return (
        f"is owned by uid {info.st_uid}, neither root nor the user running cbr-replicator "
        f"(uid {euid}); run `chown root {path}` or name another file"
    )


def _not_regular(mode: int) -> str | None:
    """What a path that is no regular file is (a FIFO or /dev/zero would be read forever)."""
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a device"}
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file; name the config file"


def _read_bounded(path: Path, *, follow: bool = True) -> bytes:
    """At most ``MAX_FILE_BYTES`` + 1 bytes of a regular file: the check is made on the open
    file (the path may have been swapped since it was checked), without blocking on a FIFO."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags if follow else flags | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks, left = [], MAX_FILE_BYTES + 1
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _config_file_problems(path: Path, info: os.stat_result) -> list[str]:
    mode = info.st_mode
    owner = _owner_problem(path, info)
    problems = [owner] if owner else []
    if _writable_by_others(mode):
        problems.append(
            f"is writable by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 640 {path}`"
        )
    parent = _parent_problem(path)
    return [*problems, parent] if parent else problems


def _read_yaml(path: Path, problems: _Problems) -> _Document | None:
    """Check, read and parse one config file; ``None`` when it cannot be used."""
    try:
        info = path.stat()
    except OSError as error:
        problems.file(path, f"cannot read: {error.strerror}; check the path")
        return None
    kind = _not_regular(info.st_mode)
    if kind is not None:
        problems.file(path, kind)
        return None
    for problem in _config_file_problems(path, info):
        problems.file(path, problem)
    if info.st_size > MAX_FILE_BYTES:
        problems.file(path, f"is {info.st_size} bytes; config files are limited to 1 MiB")
        return None
    text = _read_text(path, problems)
    return None if text is None else _parse_yaml(path, text, problems)


def _read_text(path: Path, problems: _Problems) -> str | None:
    try:
        data = _read_bounded(path)
    except OSError as error:
        problems.file(path, _unreadable(path, error))
        return None
    if len(data) > MAX_FILE_BYTES:  # it grew since it was checked
        problems.file(path, "is larger than 1 MiB; config files are limited to 1 MiB")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        problems.file(
            path, f"is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8"
        )
        return None


def _unreadable(path: Path, error: OSError) -> str:
    if isinstance(error, PermissionError):
        return (
            f"cannot read: permission denied for uid {os.geteuid()}; let the service's user "
            f"read it, e.g. `chgrp cbr-replicator {path} && chmod 640 {path}`"
        )
    return f"cannot read: {error.strerror}; check the path"


# libyaml's parser when PyYAML was built with it: ten times faster (a config naming 1,000
# vaults took 76 ms to compose and load in pure Python, 6 ms in C), with the same marks. Its
# error messages say less (no alias name, no offending character), so a file it refuses is
# parsed again in pure Python for the message.
_FAST_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_yaml(
    path: Path, text: str, problems: _Problems, loader: type = _FAST_LOADER
) -> _Document | None:
    try:
        root = yaml.compose(text, Loader=loader)
        if root is None:
            return _Document(path, None, {})
        lines: dict[Loc, int] = {}
        if not _walk_nodes(root, (), lines, lambda line, msg: problems.file(path, msg, line)):
            return None
        # The walk refused what safe_load would choke on; a merge key (<<) naming something
        # else than mappings is still found only here.
        return _Document(path, yaml.load(text, Loader=loader), lines)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, RecursionError) as error:
        if loader is not yaml.SafeLoader:
            return _parse_yaml(path, text, problems, yaml.SafeLoader)
        _report_yaml_error(path, error, problems)
    return None


def _report_yaml_error(path: Path, error: Exception, problems: _Problems) -> None:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else None
        what = _one_line(error.problem or str(error))
        problems.file(path, f"invalid YAML: {what}; fix the syntax", line)
    elif isinstance(error, yaml.YAMLError):  # e.g. a control character (ReaderError, no line)
        problems.file(path, f"invalid YAML: {_one_line(str(error))}; fix the syntax")
    else:  # the composer recurses once per level of nesting
        problems.file(path, f"invalid YAML: nested more than {MAX_YAML_DEPTH} levels deep")


def _one_line(text: str) -> str:
    """PyYAML's messages span lines (they quote the spot); a problem is one line."""
    return " ".join(text.split())


# Aliases may repeat a node any number of times ("billion laughs"); a real config has a few
# hundred values and a few levels. Past these bounds the file is refused before it is loaded.
MAX_YAML_VALUES = 50_000
MAX_YAML_DEPTH = 64
_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "timestamp")
)
_PLAIN: dict[str, type[yaml.Node]] = {  # what needs no check (nearly every node)
    "tag:yaml.org,2002:str": yaml.ScalarNode,
    "tag:yaml.org,2002:map": yaml.MappingNode,
    "tag:yaml.org,2002:seq": yaml.SequenceNode,
}
_NODE_KINDS: dict[str, type[yaml.Node]] = {
    **dict.fromkeys(_SCALAR_TAGS, yaml.ScalarNode),
    "tag:yaml.org,2002:map": yaml.MappingNode,
    "tag:yaml.org,2002:seq": yaml.SequenceNode,
}


def _walk_nodes(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int], report: Callable[[int, str], None]
) -> bool:
    """Record each path's line; report unsafe tags, values that do not fit their tag, keys
    that are not text, duplicate keys, recursive aliases, alias bombs and deep nesting.
    True when clean."""
    return _NodeWalk(lines, report).walk(node, loc)


@dataclass
class _NodeWalk:
    lines: dict[Loc, int]
    report: Callable[[int, str], None]
    values: int = 0
    open: set[int] = field(default_factory=set)  # ids of the nodes being walked (ancestors)

    def walk(self, node: yaml.Node, loc: Loc) -> bool:
        self.values += 1
        if self.values > MAX_YAML_VALUES or id(node) in self.open or len(loc) > MAX_YAML_DEPTH:
            return self._refuse(node, loc)
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if _PLAIN.get(node.tag) is not type(node):
            problem = _tag_problem(node)
            if problem is not None:
                self.report(node.start_mark.line + 1, f"{_dotted(loc)}: {problem}")
                return False
        if not isinstance(node, yaml.SequenceNode | yaml.MappingNode):
            return True
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return self._walk_sequence(node, loc)
            return self._walk_mapping(node, loc)
        finally:
            self.open.discard(id(node))

    def _walk_sequence(self, node: yaml.SequenceNode, loc: Loc) -> bool:
        clean = True
        for index, item in enumerate(node.value):
            clean &= self.walk(item, (*loc, index))
        return clean

    def _walk_mapping(self, node: yaml.MappingNode, loc: Loc) -> bool:
        clean = True
        seen: set[str] = set()
        for key, value in node.value:
            line = key.start_mark.line + 1
            if not isinstance(key, yaml.ScalarNode):
                self.report(line, f"{_dotted(loc)}: a key must be plain text, not a collection")
                clean = False
                continue
            name = str(key.value)
            if name in seen and name != "<<":
                self.report(line, f"{_dotted((*loc, name))}: key given twice")
                clean = False
            seen.add(name)
            self.lines[(*loc, name)] = line
            clean &= self.walk(value, (*loc, name))
        return clean

    def _refuse(self, node: yaml.Node, loc: Loc) -> bool:
        line = node.start_mark.line + 1
        if self.values > MAX_YAML_VALUES:
            if self.values == MAX_YAML_VALUES + 1:  # say it once
                self.report(
                    line,
                    f"YAML aliases expand to more than {MAX_YAML_VALUES} values; "
                    "write the values out instead",
                )
        elif id(node) in self.open:
            self.report(line, f"{_dotted(loc)}: a YAML alias refers to itself; remove it")
        else:
            self.report(line, f"{_dotted(loc[:MAX_YAML_DEPTH])}: nested too deeply; flatten it")
        return False


def _tag_problem(node: yaml.Node) -> str | None:
    """Why this value cannot be loaded as plain YAML, or None. Never quotes the value (it
    may be a secret)."""
    shown = node.tag.replace("tag:yaml.org,2002:", "!!")
    if node.tag not in _SAFE_TAGS:
        return f"YAML tag {shown} is not allowed (plain YAML only); remove the tag"
    kind = _NODE_KINDS.get(node.tag)
    if kind is None or not isinstance(node, kind):  # e.g. !!merge as a value, !!int [1]
        return f"the value does not fit its YAML tag {shown}; remove the tag or fix the value"
    if node.tag in _SCALAR_TAGS and node.tag != "tag:yaml.org,2002:str":
        try:
            yaml.constructor.SafeConstructor().construct_object(node)
        except Exception:  # PyYAML raises ValueError, KeyError, AttributeError, ... here
            return f"the value does not fit its YAML tag {shown}; remove the tag or fix the value"
    return None


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
    raw: dict[str, Any], base: Path, environ: Mapping[str, str], problems: _Problems
) -> list[Path]:
    directory = raw.get("policies_dir")
    if directory is None:
        return []
    if not isinstance(directory, str):
        return []  # the model reports the wrong type
    resolved = base / _substitute_text(directory, ("policies_dir",), environ, problems)
    raw["policies_dir"] = str(resolved)
    if not resolved.is_dir():
        problems.at(("policies_dir",), f"{resolved} is not a directory; create it or fix the path")
        return []
    return sorted(resolved.glob("*.yaml"))


def _collect_policies(main: _Document, files: list[Path], problems: _Problems) -> list[Any]:
    """Every policy of the main file and of ``files``, recording where each was written."""
    assert problems.locator is not None
    found: list[Any] = []
    sources: list[tuple[_Document, Loc, Any]] = [(main, ("policies",), main.data.get("policies"))]
    for path in files:
        document = _read_yaml(path, problems)
        if document is not None:
            sources.append((document, (), document.data))
    for document, base, entries in sources:
        if entries is None:
            continue
        if not isinstance(entries, list):
            line = _nearest_line(document.lines, base)
            problems.file(document.path, f"{_dotted(base)}: must be a YAML list of policies", line)
            continue
        for index, entry in enumerate(entries):
            problems.locator.origins.append(_Origin(document, (*base, index)))
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


# --- environment and secrets -------------------------------------------------------------


def _substitute_text(text: str, loc: Loc, environ: Mapping[str, str], problems: _Problems) -> str:
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


def _substitute(value: Any, loc: Loc, environ: Mapping[str, str], problems: _Problems) -> Any:
    """``value`` with every ``${NAME}`` in its strings read from ``environ``."""
    if isinstance(value, str):
        return _substitute_text(value, loc, environ, problems)
    if isinstance(value, Mapping):
        return {k: _substitute(v, (*loc, str(k)), environ, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*loc, i), environ, problems) for i, v in enumerate(value)]
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
    owner = _owner_problem(path, info)
    return f"secret file {path} {owner}" if owner else _parent_problem(path)


def _read_secret(path: Path) -> str:
    """The secret in ``path``: its text less one trailing line break, which editors and
    `echo` add and which is not part of the secret. ``ValueError`` names what is wrong."""
    try:
        data = _read_bounded(path, follow=False)
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


class _SecretResolver:
    """Replaces ``X_file`` keys by the content of the named files."""

    def __init__(self, base: Path, problems: _Problems) -> None:
        self.base = base
        self.problems = problems
        self.values: list[str] = []

    def resolve(self, value: Any, loc: Loc = ()) -> Any:
        if isinstance(value, list):
            return [self.resolve(item, (*loc, i)) for i, item in enumerate(value)]
        if not isinstance(value, Mapping):
            return value
        resolved = {k: self.resolve(v, (*loc, str(k))) for k, v in value.items()}
        for suffix, keys in _SECRET_PLACES:
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


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
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


# --- validation ----------------------------------------------------------------------------

_HINTS = {
    "missing": "required; add it",
    "int_type": "write a whole number",
    "int_parsing": "write a whole number",
    "int_from_float": "write a whole number",
    "float_type": "write a number",
    "float_parsing": "write a number",
    "bool_type": "write true or false",
    "bool_parsing": "write true or false",
    "string_type": "write text (quote it)",
    "dict_type": "write a mapping (key: value)",
    "model_type": "write a mapping (key: value)",
    "model_attributes_type": "write a mapping (key: value)",
    "tuple_type": "write a list",
    "list_type": "write a list",
    "greater_than": "use a larger value",
    "greater_than_equal": "use a larger value",
    "less_than_equal": "use a smaller value",
    "string_too_short": "it must not be empty",
    "too_short": "list at least one",
    "string_pattern_mismatch": "see the field's format in config/cbr-replicator.yaml",
}
_PATTERN_HINTS = {
    "name": "use 1-64 letters, digits, '_' or '-'",
    "region": "write a region id such as cn-north-4",
    "url": "write an http:// or https:// URL",
    "listen": "write HOST:PORT, e.g. 127.0.0.1:9687",
}


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model whose fields sit at ``loc`` in ``Settings``, for listing allowed keys."""
    annotation: Any = Settings
    for part in loc:
        if isinstance(part, int):
            continue  # an index into the tuple that ``_unwrap`` already opened
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if not isinstance(part, str) or part not in annotation.model_fields:
                return None
            annotation = annotation.model_fields[part].annotation
        annotation = _unwrap(annotation)
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> X; ``tuple[X, ...]`` -> X (the next part of a path is an index)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return options[0] if len(options) == 1 else annotation
    if origin is tuple:
        return typing.get_args(annotation)[0]
    return annotation


def _unknown_key_message(loc: Loc) -> str:
    model = _model_at(loc[:-1])
    allowed = sorted(model.model_fields) if model else []
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    fix = f"did you mean {close[0]}?" if close else "remove it or fix its spelling"
    listing = f" (allowed: {', '.join(allowed)})" if allowed else ""
    return f"unknown key; {fix}{listing}"


def _error_message(error: Mapping[str, Any]) -> str:
    kind, loc = error["type"], tuple(error["loc"])
    if kind == "extra_forbidden":
        return _unknown_key_message(loc)
    if kind == "missing":
        return "required field is missing; add it"
    if kind == "too_short":
        return "must not be empty; list at least one"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(str(loc[-1]), _HINTS[kind])
        return f"has the wrong format; {hint}"
    extra = _HINTS.get(kind)
    return f"{message}; {extra}" if extra and ";" not in message else message


def _validate(
    raw: dict[str, Any], problems: _Problems, *, credentials_deferred: bool = False
) -> Settings | None:
    try:
        return Settings.model_validate(raw, context={CREDENTIALS_DEFERRED: credentials_deferred})
    except ValidationError as error:
        for detail in error.errors(include_input=False, include_url=False):
            loc = tuple(detail["loc"])
            if any(loc[: len(bad)] == bad for bad in problems.tainted):
                continue
            problems.at(loc, _error_message(detail))
        return None


def _settings_secrets(settings: Settings) -> list[str]:
    found = []
    credentials = settings.cloud.credentials
    if credentials is not None:
        found += [credentials.access_key, credentials.secret_key, credentials.security_token]
    for notify in (settings.notify, *(policy.notify for policy in settings.policies)):
        if notify is not None and notify.webhook is not None:
            found.append(notify.webhook.secret)
    values = [secret.get_secret_value() for secret in found if secret is not None]
    password = _PASSWORD_IN_URL.search(settings.ledger.url)
    return values + ([password[2]] if password else [])


# --- API ----------------------------------------------------------------------------------


_CREDENTIALS: Loc = ("cloud", "credentials")


def _hold_credentials(raw: dict[str, Any]) -> Any:
    """Take ``cloud.credentials`` out of ``raw`` (None when there are none), to read apart."""
    cloud = raw.get("cloud")
    if not isinstance(cloud, Mapping) or "credentials" not in cloud:
        return None
    cloud = dict(cloud)
    raw["cloud"] = cloud
    return cloud.pop("credentials")


def _read_credentials(
    raw: dict[str, Any],
    held: Any,
    environ: Mapping[str, str],
    problems: _Problems,
    resolver: _SecretResolver,
) -> list[str]:
    """Read the held credentials back into ``raw``; when they cannot be read here (a
    ``${NAME}`` unset, a secret file missing: systemd's ``$CREDENTIALS_DIRECTORY`` exists
    only inside the unit), leave them out and return why."""
    trial = _Problems(locator=problems.locator)
    value = _substitute(held, _CREDENTIALS, environ, trial)
    reader = _SecretResolver(resolver.base, trial)
    value = reader.resolve(value, _CREDENTIALS)
    if trial.lines:
        return trial.unique()
    raw["cloud"]["credentials"] = value
    resolver.values += reader.values
    return []


def load_settings(
    path: Path, environ: Mapping[str, str] | None = None, *, need_credentials: bool = True
) -> LoadedConfig:
    """Read, check and validate the config at ``path``; ``ConfigError`` lists every problem.

    Without ``need_credentials`` (a command that never calls the cloud), credentials that
    cannot be read are no error: they are left out and ``credential_problems`` says why."""
    environ = os.environ if environ is None else environ
    problems = _Problems()
    main = _read_yaml(path, problems)
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
    problems.locator = _Locator(main)
    base = path.absolute().parent
    raw = dict(main.data)
    files = _policy_files(raw, base, environ, problems)
    raw["policies"] = _merge_defaults(raw, _collect_policies(main, files, problems))
    held = None if need_credentials else _hold_credentials(raw)
    raw = _substitute(raw, (), environ, problems)
    resolver = _SecretResolver(base, problems)
    raw = resolver.resolve(raw)
    deferred = [] if held is None else _read_credentials(raw, held, environ, problems, resolver)
    _resolve_paths(raw, base)
    settings = _validate(raw, problems, credentials_deferred=bool(deferred))
    for loc, message in policy_conflicts(raw["policies"]):
        problems.at(("policies", *loc), message)
    if settings is None or problems.lines:
        raise ConfigError(problems.unique())
    secrets = [*resolver.values, *_settings_secrets(settings)]
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


def _warnings(settings: Settings, problems: _Problems) -> list[str]:
    """What is valid but risky, in the form of a problem line."""
    found = _Problems(problems.locator)
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


class _SchemaGenerator(GenerateJsonSchema):
    """Defaults written as the config writes them (``30s``, not ISO 8601's ``PT30S``)."""

    def encode_default(self, dft: Any) -> Any:
        if isinstance(dft, timedelta):
            return format_duration(dft)
        return super().encode_default(dft)


SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def settings_json_schema() -> dict[str, Any]:
    """The JSON Schema of the main config file, with every field's description, as an editor
    sees the file: before ``${NAME}`` references are read and ``defaults`` merged."""
    schema = Settings.model_json_schema(schema_generator=_SchemaGenerator)
    _as_written(schema["$defs"])
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://cbr-replicator.invalid/config.schema.json",
        **schema,
        "title": "cbr-replicator configuration",
    }


def policies_file_json_schema() -> dict[str, Any]:
    """The JSON Schema of a ``policies_dir`` file: a list of policies."""
    definitions = settings_json_schema()["$defs"]
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://cbr-replicator.invalid/policies.schema.json",
        "title": "cbr-replicator policies file",
        "type": "array",
        "items": {"$ref": "#/$defs/Policy"},
        "$defs": definitions,
    }


def _as_written(definitions: dict[str, Any]) -> None:
    """What the models cannot say: ``X_file`` may stand for a secret ``X`` (one of the two),
    a policy's schedule may come from ``defaults``, and its rpo's default is derived."""
    models: dict[Loc, str] = {
        ("cloud", "credentials"): "CredentialsSettings",
        ("notify", "webhook"): "WebhookSettings",
    }
    for place, keys in _SECRET_PLACES:
        definition = definitions[models[place]]
        required = definition.setdefault("required", [])
        choices: list[dict[str, Any]] = []
        for key in sorted(keys):
            definition["properties"][f"{key}_file"] = {
                "type": "string",
                "description": f"file holding {key} (e.g. a systemd credential); not with {key}",
            }
            if key in required:
                required.remove(key)
                choices.append({"oneOf": [{"required": [key]}, {"required": [f"{key}_file"]}]})
            else:
                choices.append({"not": {"required": [key, f"{key}_file"]}})
        definition["allOf"] = choices
        if not required:
            del definition["required"]
    policy = definitions["Policy"]
    policy["required"] = [name for name in policy["required"] if name != "schedule"]
    policy["properties"]["schedule"]["description"] += " (or defaults.schedule)"
    del policy["properties"]["rpo"]["default"]


# --- describing --------------------------------------------------------------------------


def format_duration(value: timedelta) -> str:
    """``timedelta(hours=1, minutes=30)`` -> ``1h30m``."""
    return _duration_text(value)


def format_size(value: int) -> str:
    """Bytes in the largest binary unit that keeps the number readable."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:g}{unit}"
    return f"{value}B"


def _mask(secret: SecretStr | None) -> str:
    return "(none)" if secret is None else "****"


def _describe_cloud(settings: Settings) -> Iterator[str]:
    cloud = settings.cloud
    yield "ledger: " + _PASSWORD_IN_URL.sub(r"\1:****@", settings.ledger.url)
    yield f"cloud: provider {cloud.provider}"
    if cloud.credentials is not None:
        yield (
            f"  credentials: access_key {_mask(cloud.credentials.access_key)}, secret_key "
            f"{_mask(cloud.credentials.secret_key)}, security_token "
            f"{_mask(cloud.credentials.security_token)}"
        )
    for region, url in {"iam": cloud.endpoints.iam, **cloud.endpoints.cbr}.items():
        if url:
            yield f"  endpoint {region}: {url}"
    yield (
        f"  tls: verify {cloud.verify_tls}, ca_bundle {cloud.ca_bundle or '(system)'}; "
        f"timeouts connect {format_duration(cloud.connect_timeout)}, read "
        f"{format_duration(cloud.timeout)}; lease {format_duration(cloud.lease)}"
    )
    yield (
        f"  limits: {cloud.requests_per_second:g} requests/s, concurrency {cloud.concurrency}, "
        f"in flight per region {cloud.max_in_flight_per_region or 'unlimited'}"
    )
    if cloud.provider == "emulator":
        yield f"  emulator: scenario {cloud.emulator.scenario}, state {cloud.emulator.state}"


def _describe_policy(policy: Policy) -> Iterator[str]:
    schedule, retry = policy.schedule, policy.retry
    when = (
        f'cron "{schedule.cron}"'
        if schedule.cron
        else "every " + format_duration(schedule.interval or timedelta(0))
    )
    budget = format_size(policy.traffic_budget_per_day) if policy.traffic_budget_per_day else None
    yield f"policy {policy.name} ({'enabled' if policy.enabled else 'disabled'})"
    yield f"  source: {policy.source.region} vaults {', '.join(policy.source.vaults)}"
    yield (
        f"  destination: {policy.destination.region} vault {policy.destination.vault}, "
        f"project {policy.destination.project or '(region default)'}"
    )
    yield (
        f"  schedule: {when} {schedule.timezone}, jitter {format_duration(schedule.jitter)}, "
        f"period {format_duration(schedule.period)}"
    )
    yield (
        f"  retry: {retry.max_attempts} attempts, backoff {format_duration(retry.initial_backoff)}"
        f"..{format_duration(retry.max_backoff)} x{retry.multiplier:g}, jitter {retry.jitter:g}"
    )
    yield f'  replica: name "{policy.replica.name}", description "{policy.replica.description}"'
    yield (
        f"  limits: max_in_flight {policy.max_in_flight}, traffic budget "
        f"{budget + '/day' if budget else 'none'}, acceleration {policy.enable_acceleration}"
    )
    yield (
        f"  alerts: rpo {format_duration(policy.rpo)}, "
        f"stuck after {format_duration(policy.stuck_after)}"
    )
    if policy.notify is not None:
        yield f"  notify (overrides the global one): {_describe_notify(policy.notify)}"


def _describe_notify(notify: NotifySettings) -> str:
    """Where notifications go: hosts only (a ping URL's path is a token), secrets masked."""
    parts = []
    if notify.webhook is not None:
        signed = "signed" if notify.webhook.secret is not None else "unsigned"
        parts.append(f"webhook {_url_host(notify.webhook.url)} ({signed})")
    if notify.heartbeat is not None:
        parts.append(f"heartbeat {_url_host(notify.heartbeat.url)}")
    return ", ".join(parts) or "off"


def _url_host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def describe_settings(loaded: LoadedConfig) -> str:
    """A human summary of the resolved settings; secrets are shown as ``****``."""
    settings = loaded.settings
    lines = [f"config: {', '.join(str(path) for path in loaded.files)}"]
    lines += _describe_cloud(settings)
    lines.append(f"metrics: {settings.metrics.listen or 'off'}; log: {settings.log.format}")
    lines.append(f"notify: {_describe_notify(settings.notify)}")
    lines.append(f"policies: {len(settings.policies)}")
    for policy in settings.policies:
        lines += _describe_policy(policy)
    text = "\n".join(lines)
    for secret in loaded.secrets:
        if len(secret) >= 6:  # belt and braces: a secret pasted into a URL or a name
            text = text.replace(secret, "****")
    return text
