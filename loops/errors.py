"""Errors split by whose fault they are (defined in ``loopwright.tools.errors``, so tools
raise the same classes; ``first_error`` is the CLI's one-line form of a validation error).

``UserError`` — the user can fix it (bad task file, unknown loop or model, missing API key):
the CLI prints its message as one line, no traceback. Anything else is a bug or an outside
failure and keeps its traceback.
"""

from __future__ import annotations

from loopwright.tools.errors import BudgetExhausted, ModelCallError, UserError, unknown

__all__ = ["BudgetExhausted", "ModelCallError", "UserError", "first_error", "unknown"]


_NESTS = frozenset({"connection", "retry"})


def first_error(exc: Exception, *, as_flag: bool = False) -> str:
    """One line for a validation error: the first pydantic error's field and message.

    ``as_flag`` names the field as the CLI flag that set it (``--min-margin``).
    """
    errors = getattr(exc, "errors", None)
    if callable(errors):
        e = errors()[0]
        where = ".".join(str(p) for p in e["loc"])
        # a nested setting is set by its own flag: connection.concurrency is --concurrency,
        # budget.tokens is --budget-tokens
        names = [p for p in e["loc"] if isinstance(p, str) and p not in _NESTS]
        if as_flag and names:
            return f"--{'-'.join(names).replace('_', '-')}: {e['msg']}"
        return f"{where or 'value'}: {e['msg']}"
    return str(exc).splitlines()[0]
