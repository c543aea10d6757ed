"""Output of every command: JSON with ``--json``, rich tables on a terminal, plain text else."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.table import Table as RichTable
from rich.text import Text

from .session import CommandError

__all__ = ("Block", "Fields", "Note", "Output", "Table")


@dataclass
class Table:
    """Rows under column headings."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    empty: str = "(none)"


@dataclass
class Fields:
    """Name: value lines."""

    title: str
    pairs: list[tuple[str, str]]


@dataclass
class Note:
    """A line of text; ``style`` is a rich style used on terminals."""

    text: str
    style: str = ""


Block = Table | Fields | Note


class Output:
    """Where a command's result goes: JSON (``as_json``), rich (a terminal) or plain text."""

    def __init__(self, as_json: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.as_json = as_json
        self.tty = self.stream.isatty()
        self.rich = not as_json and self.tty
        self.console = Console(file=self.stream, highlight=False)

    def emit(self, data: Any, blocks: list[Block], *, compact: bool = False) -> None:
        """Write one result: ``data`` as JSON, else ``blocks`` as text."""
        if self.as_json:
            indent = None if compact else 2
            self.stream.write(json.dumps(data, indent=indent, ensure_ascii=False) + "\n")
        elif self.rich:
            self.console.print(renderable(blocks))
        else:
            self.stream.write(plain(blocks))
        self.stream.flush()

    def warn(self, line: str) -> None:
        """One line on stderr, after the result."""
        sys.stderr.write(f"aioqueue: {line}\n")
        sys.stderr.flush()

    def confirm(self, question: str, yes: bool) -> None:
        """Go on if ``yes``, else ask on a terminal.

        :raises CommandError: when the answer is not yes, or there is no terminal to ask.
        """
        if yes:
            return
        if not sys.stdin.isatty():
            raise CommandError(f"{question} Refused: not a terminal; pass --yes to go ahead")
        sys.stderr.write(f"{question} [y/N] ")
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise CommandError("nothing done")


def renderable(blocks: list[Block]) -> RenderableType:
    """The blocks as one rich renderable (for printing, or for ``rich.live.Live``)."""
    parts: list[RenderableType] = []
    for b in blocks:
        if isinstance(b, Note):
            parts.append(Text(b.text, style=b.style))
        elif isinstance(b, Fields):
            t = RichTable(title=b.title, show_header=False, title_justify="left", box=None)
            t.add_column(style="bold")
            t.add_column()
            for k, v in b.pairs:
                t.add_row(k, v)
            parts.append(t)
        elif not b.rows:
            parts.append(Text(f"{b.title}: {b.empty}", style="dim"))
        else:
            t = RichTable(title=b.title, title_justify="left")
            for c in b.columns:
                t.add_column(c)
            for row in b.rows:
                t.add_row(*row)
            parts.append(t)
    return Group(*parts)


def plain(blocks: list[Block]) -> str:
    """The blocks as plain text: aligned columns, no colour."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Note):
            out.append(b.text)
        elif isinstance(b, Fields):
            if b.title:
                out.append(b.title)
            width = max((len(k) for k, _ in b.pairs), default=0)
            out += [f"  {k.ljust(width)}  {v}" for k, v in b.pairs]
        elif not b.rows:
            out.append(f"{b.title}: {b.empty}")
        else:
            out.append(b.title)
            widths = [max(len(r[i]) for r in [b.columns, *b.rows]) for i in range(len(b.columns))]
            for r in [b.columns, *b.rows]:
                line = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                out.append(("  " + line).rstrip())
    return "\n".join(out) + "\n"
