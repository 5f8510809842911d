"""The CLI's consoles, and a progress bar for long commands, shared so each command only says
what it counts."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def console(stderr: bool = False) -> Console:
    """A rich console; when stdout is not a terminal (a pipe, a CI log) tables are laid out
    160 columns wide instead of rich's 80."""
    return Console(stderr=stderr, width=None if sys.stdout.isatty() else 160)


def print_error(con: Console, exc: object, label: str = "error") -> None:
    """``error: MESSAGE`` on one line; the message is printed as plain text (a run name or a
    path holding ``[/red]`` is not read as rich markup)."""
    con.print(f"[red]{label}:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)


class LazyBar:
    """A rich bar that appears at the first update — so input errors reported before any
    progress print on a clean line — and is stopped when the ``with`` block ends.

    ``fields`` maps each counter to its label: ``{"passed": "passed", "tokens": "tok"}``.
    """

    def __init__(self, label: str, fields: Mapping[str, str], console: Console) -> None:
        columns = [TextColumn(f"{text} {{task.fields[{name}]}}") for name, text in fields.items()]
        self._bar = Progress(
            TextColumn(f"[bold]{escape(label)}"), BarColumn(), MofNCompleteColumn(), *columns,
            TimeElapsedColumn(), console=console,
        )  # fmt: skip
        zeros: dict[str, Any] = dict.fromkeys(fields, 0)
        self._id = self._bar.add_task(label, total=None, **zeros)

    def update(self, total: int | None, completed: int, **fields: Any) -> None:
        if not self._bar.live.is_started:
            self._bar.start()
        self._bar.update(self._id, total=total, completed=completed, **fields)

    def __enter__(self) -> LazyBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar.live.is_started:
            self._bar.stop()
