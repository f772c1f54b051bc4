"""How config problems are collected and placed: each one a line
``FILE:LINE: field.path: what is wrong; how to fix it``, its line found from the YAML nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.core.policy import Loc
from daemon.core.redaction import mask_url_passwords

MAX_SHOWN_KEY = 40


@dataclass
class Document:
    """One parsed YAML file and the line of every field path in it."""

    path: Path
    data: Any
    lines: dict[Loc, int]


@dataclass(frozen=True)
class Origin:
    """Where one policy was written: its file and its path there."""

    document: Document
    base: Loc


@dataclass
class Locator:
    """Maps a field path of the merged settings to (file, line, shown path)."""

    main: Document
    origins: list[Origin] = field(default_factory=list)
    aliases: dict[Loc, Loc] = field(default_factory=dict)  # secret -> its ``_file`` key

    def locate(self, loc: Loc) -> tuple[Path, int | None, Loc]:
        loc = self._unalias(loc)
        index = loc[1] if len(loc) >= 2 and loc[0] == "policies" else None
        if isinstance(index, int) and index < len(self.origins):
            return self._locate_policy(self.origins[index], loc[2:])
        return self.main.path, nearest_line(self.main.lines, loc), loc

    def _unalias(self, loc: Loc) -> Loc:
        for secret, file_key in self.aliases.items():
            if loc[: len(secret)] == secret:
                return file_key + loc[len(secret) :]
        return loc

    def _locate_policy(self, origin: Origin, rest: Loc) -> tuple[Path, int | None, Loc]:
        own = origin.base + rest
        inherited = ("defaults", *rest)
        if own not in origin.document.lines and rest and inherited in self.main.lines:
            # The value came from ``defaults``: point there, where it must be fixed.
            return self.main.path, self.main.lines[inherited], inherited
        shown = ("policies", *origin.base[-1:], *rest)
        return origin.document.path, nearest_line(origin.document.lines, own), shown


@dataclass
class Problems:
    locator: Locator | None = None
    lines: list[str] = field(default_factory=list)
    tainted: set[Loc] = field(default_factory=set)  # already reported: skip follow-up errors
    places: list[tuple[int, int]] = field(default_factory=list)  # (file's rank, line) per line
    files: dict[Path, int] = field(default_factory=dict)

    def file(self, path: Path, message: str, line: int | None = None) -> None:
        # A value is quoted to be found; a URL's password in it (written into any field,
        # not only the ledger's URL) is not shown, as nothing registered it as a secret yet.
        message = mask_url_passwords(message)
        self.lines.append(f"{path}:{line}: {message}" if line else f"{path}: {message}")
        self.places.append((self.files.setdefault(path, len(self.files)), line or 0))

    def at(self, loc: Loc, message: str) -> None:
        assert self.locator is not None
        path, line, shown = self.locator.locate(loc)
        self.file(path, f"{dotted(shown)}: {message}", line)

    def unique(self) -> list[str]:
        """Each problem once, file by file in line order (as an editor shows the file),
        whichever check found it first."""
        order = sorted(range(len(self.lines)), key=self.places.__getitem__)
        return list(dict.fromkeys(self.lines[index] for index in order))


def dotted(loc: Loc) -> str:
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


def nearest_line(lines: Mapping[Loc, int], loc: Loc) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None
