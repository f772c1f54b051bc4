"""The command lines README.md and docs/*.md show, read from the documents themselves: every
line of a ```sh block (continuation lines joined) and every inline code span that starts with
``cbr-replicator`` or ``cbr`` (the runbook's shell function). Adding an example to a document
adds it to the tests that run them."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)?)`(?!`)")
_OURS = re.compile(r"^(?:\.venv/bin/)?cbr(?:-replicator)?(?:\s|$)")


@dataclass(frozen=True)
class Documented:
    document: str  # README.md, docs/runbook.md
    line: int
    text: str  # one command line, continuation lines joined, whitespace collapsed
    inline: bool  # from an inline code span rather than a ```sh block

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: {self.text}"


def documented_commands() -> list[Documented]:
    found: list[Documented] = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        name = str(path.relative_to(ROOT))
        found += _block_commands(name, text)
        found += _inline_commands(name, text)
    return sorted(found, key=lambda item: (DOCUMENTS.index(ROOT / item.document), item.line))


def _block_commands(name: str, text: str) -> list[Documented]:
    commands = []
    for fence in _FENCE.finditer(text):
        if fence[1] != "sh":
            continue
        first_line = text.count("\n", 0, fence.start(2)) + 1
        pending, start = "", 0
        for offset, raw in enumerate(fence[2].splitlines()):
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            start = start if pending else first_line + offset
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            if not _complete(pending + line):  # a quoted string goes on on the next line
                pending += line + " "
                continue
            commands.append(Documented(name, start, _collapse(pending + line), inline=False))
            pending = ""
    return commands


def _inline_commands(name: str, text: str) -> list[Documented]:
    fenced = [(fence.start(), fence.end()) for fence in _FENCE.finditer(text)]
    commands = []
    for span in _INLINE.finditer(text):
        if any(start <= span.start() < end for start, end in fenced):
            continue
        command = _collapse(span[1])
        if _OURS.match(command):
            line = text.count("\n", 0, span.start()) + 1
            commands.append(Documented(name, line, command, inline=True))
    return commands


def _complete(text: str) -> bool:
    try:
        shlex.split(text)
    except ValueError:  # no closing quotation
        return False
    return True


def _collapse(text: str) -> str:
    return " ".join(text.split())


def synopsis_lines() -> list[str]:
    """The README's synopsis (the block after "## Commands"), continuation lines joined."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("## Commands") :]
    fence = _FENCE.search(block)
    assert fence is not None, "README.md: no synopsis block after ## Commands"
    lines: list[str] = []
    for raw in fence[2].splitlines():
        if raw.startswith(" ") and lines:
            lines[-1] += " " + raw.strip()
        elif raw.strip():
            lines.append(raw.strip())
    return lines
