#!/usr/bin/env python3
"""Lint: every query against the trace tables lives in traces/ (docs/architecture.md).

Fails, one ``path:line: why`` a hit, on Python code in loops/, tools/ and sandboxes/ that

- holds SQL naming a trace table (a table of ``traces/schema.py`` or a DuckDB catalog
  function such as ``duckdb_tables()``) in a string that is not a docstring: a statement
  (``SELECT``, ``INSERT INTO``, ``UPDATE .. SET``, ``DELETE FROM``, ``CREATE TABLE``, ...; any
  case) or a piece of one that starts with an upper-case clause (``FROM nodes ...``).
  Adjacent strings are read together, as Python joins them; an f-string's fields read as
  ``{...}``;
- calls ``query``, ``execute`` or ``cursor`` on a trace store (a name ``store`` or ``*_store``,
  ``self.store``, ``writer.store``, ...);
- imports ``duckdb``.

SQL a module keeps for a database of its own (the local search index's SQLite file) names
none of the trace tables and is left alone; prose is told from SQL by its shape (a statement
keyword, then a table reference). Usage: ``check_sql.py [REPO_ROOT]``.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

FOLDERS = ("loops", "tools", "sandboxes")
STORE_METHODS = frozenset({"query", "execute", "cursor"})

_STATEMENT = re.compile(
    r"\b(?:select\b|insert\s+(?:or\s+\w+\s+)?into\b|update\s+\S+\s+set\b|delete\s+from\b"
    r"|(?:create|alter|drop)\s+(?:or\s+replace\s+)?(?:temp\w*\s+)?(?:table|view|index)\b)",
    re.IGNORECASE,
)
_TABLE_REF = re.compile(
    r"\b(?:from|join|into|update|table|using)\s+(?:if\s+(?:not\s+)?exists\s+)?"
    r"(?:[A-Za-z_]\w*\.)?(?P<table>[A-Za-z_]\w*)",
    re.IGNORECASE,
)
_CLAUSE = re.compile(r"^[\s(]*(?:FROM|(?:LEFT |INNER |CROSS )?JOIN|WHERE|UPDATE|INTO)\b")
_CATALOG = re.compile(r"^(?:duckdb_\w+|information_schema|pg_catalog)$", re.IGNORECASE)


def trace_tables(root: Path) -> frozenset[str]:
    """The tables ``traces/schema.py`` creates."""
    text = (root / "traces" / "schema.py").read_text(encoding="utf-8")
    names = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", text)
    if not names:
        raise SystemExit(f"check_sql: no CREATE TABLE found in {root / 'traces' / 'schema.py'}")
    return frozenset(n.lower() for n in names)


def is_trace_sql(text: str, tables: frozenset[str]) -> bool:
    """Does ``text`` read as an SQL statement (or a piece of one) on a trace table?"""
    text = " ".join(text.split())
    if not (_STATEMENT.search(text) or _CLAUSE.match(text)):
        return False
    for m in _TABLE_REF.finditer(text):
        name = m["table"]
        if name.lower() in tables or _CATALOG.match(name):
            return True
    return False


def _text(node: ast.Constant | ast.JoinedStr) -> str:
    """A string literal's text; an f-string's fields read as ``{expression}``."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    parts: list[str] = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value))
        elif isinstance(value, ast.FormattedValue):
            parts.append("{" + ast.unparse(value.value) + "}")
    return "".join(parts)


def _owner(node: ast.expr) -> str | None:
    """The name a method is called on: ``store`` for ``store.x()``, ``self.store.x()``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _imported(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The top-level packages an import statement imports."""
    if isinstance(node, ast.ImportFrom):
        return {(node.module or "").split(".")[0]} if node.level == 0 else set()
    return {a.name.split(".")[0] for a in node.names}


def check_source(source: str, tables: frozenset[str]) -> Iterator[tuple[int, str]]:
    """``(line, why)`` of every hit in one module's source."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        yield exc.lineno or 1, f"cannot parse: {exc.msg}"
        return
    skip: set[int] = set()  # docstrings, and the pieces of f-strings (read whole)
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant | ast.JoinedStr):
            skip.add(id(node.value))
        if isinstance(node, ast.JoinedStr):
            skip.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) or (
            isinstance(node, ast.Constant) and isinstance(node.value, str)
        ):
            if id(node) not in skip and is_trace_sql(_text(node), tables):
                yield node.lineno, "SQL on a trace table: move the query into traces/"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = _owner(node.func.value)
            if (
                node.func.attr in STORE_METHODS
                and owner is not None
                and (owner == "store" or owner.endswith("_store"))
            ):
                yield (
                    node.lineno,
                    f"{owner}.{node.func.attr}() outside traces/: call a traces/ function",
                )
        elif isinstance(node, ast.Import | ast.ImportFrom) and "duckdb" in _imported(node):
            yield node.lineno, "imports duckdb: the trace store is reached through traces/"


def check_tree(root: Path) -> list[str]:
    """Every hit under ``root``'s checked folders, as ``path:line: why``."""
    tables = trace_tables(root)
    hits: list[str] = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            rel = path.relative_to(root)
            found = sorted(set(check_source(source, tables)))
            hits += [f"{rel}:{line}: {why}" for line, why in found]
    return hits


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    hits = check_tree(root)
    for hit in hits:
        print(hit)
    if hits:
        print(
            f"{len(hits)} trace-store queries outside traces/: put each in a function in "
            "traces/ and call it (docs/architecture.md)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
