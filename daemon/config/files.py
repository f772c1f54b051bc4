"""Reading config files safely: bounded reads, ownership and mode checks, and a YAML parse
that refuses unsafe tags, too many values and too deep a nesting before building anything.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from daemon.config.problems import Document, Problems, dotted
from daemon.core.policy import Loc

MAX_FILE_BYTES = 1 << 20  # docs/design.md §14: refuse anything bigger before parsing
_SAFE_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}"
    for name in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "merge")
)


# --- files -------------------------------------------------------------------------------


def _writable_by_others(mode: int) -> bool:
    return bool(mode & (stat.S_IWGRP | stat.S_IWOTH))


def parent_problem(path: Path) -> str | None:
    parent = path.parent
    mode = parent.stat().st_mode
    if _writable_by_others(mode) and not mode & stat.S_ISVTX:
        return (
            f"directory {parent} is writable by group or others and not sticky "
            f"(mode {stat.S_IMODE(mode):04o}); run `chmod go-w {parent}`"
        )
    return None


def owner_problem(path: Path, info: os.stat_result) -> str | None:
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


def read_bounded_file(path: Path, *, follow: bool = True) -> bytes:
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
    owner = owner_problem(path, info)
    problems = [owner] if owner else []
    if _writable_by_others(mode):
        problems.append(
            f"is writable by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 640 {path}`"
        )
    parent = parent_problem(path)
    return [*problems, parent] if parent else problems


def read_yaml(path: Path, problems: Problems) -> Document | None:
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


def _read_text(path: Path, problems: Problems) -> str | None:
    try:
        data = read_bounded_file(path)
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
    path: Path, text: str, problems: Problems, loader: type = _FAST_LOADER
) -> Document | None:
    try:
        root = yaml.compose(text, Loader=loader)
        if root is None:
            return Document(path, None, {})
        lines: dict[Loc, int] = {}
        if not _walk_nodes(root, (), lines, lambda line, msg: problems.file(path, msg, line)):
            return None
        # The walk refused what safe_load would choke on; a merge key (<<) naming something
        # else than mappings is still found only here.
        return Document(path, yaml.load(text, Loader=loader), lines)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, RecursionError) as error:
        if loader is not yaml.SafeLoader:
            return _parse_yaml(path, text, problems, yaml.SafeLoader)
        _report_yaml_error(path, error, problems)
    return None


def _report_yaml_error(path: Path, error: Exception, problems: Problems) -> None:
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
                self.report(node.start_mark.line + 1, f"{dotted(loc)}: {problem}")
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
                self.report(line, f"{dotted(loc)}: a key must be plain text, not a collection")
                clean = False
                continue
            name = str(key.value)
            if name in seen and name != "<<":
                self.report(line, f"{dotted((*loc, name))}: key given twice")
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
            self.report(line, f"{dotted(loc)}: a YAML alias refers to itself; remove it")
        else:
            self.report(line, f"{dotted(loc[:MAX_YAML_DEPTH])}: nested too deeply; flatten it")
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
