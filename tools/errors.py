"""Errors split by whose fault they are, shared by tools and the loops above them.

``UserError`` — the user can fix it (bad task file, unknown loop or model, missing API key):
the CLI prints its message as one line, no traceback. Anything else is a bug or an outside
failure and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Something the user can fix; the message says what to do."""


class ModelCallError(Exception):
    """A model call failed after retries (or with an error that is not worth retrying)."""


class BudgetExhausted(Exception):
    """A task or run budget has no room for another call."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def unknown(kind: str, name: str, valid: Iterable[str]) -> UserError:
    """A UserError naming the valid choices and the closest match."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" — did you mean {close[0]!r}?" if close else ""
    return UserError(f"unknown {kind} {name!r}{hint} (choose from: {', '.join(valid)})")
