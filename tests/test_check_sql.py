"""The SQL lint (``.ci/check_sql.py``, part of ``make lint``): queries against the trace
tables live in traces/ only."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "check_sql.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_sql", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_sql = load()
TABLES = check_sql.trace_tables(ROOT)


def hits(source: str) -> list[int]:
    return [line for line, _ in check_sql.check_source(source, TABLES)]


def test_the_tree_has_no_trace_sql_outside_traces() -> None:
    assert check_sql.check_tree(ROOT) == []
    assert {"nodes", "calls", "verdicts", "tasks", "runs", "call_cache"} <= TABLES


def copy_tree(tmp_path: Path) -> Path:
    for folder in ("loops", "tools", "sandboxes"):
        shutil.copytree(ROOT / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (tmp_path / "traces").mkdir()
    shutil.copy(ROOT / "traces" / "schema.py", tmp_path / "traces" / "schema.py")
    return tmp_path


def plant(path: Path, *lines: str) -> int:
    """Append ``lines`` to ``path``; the line number of the first."""
    text = path.read_text(encoding="utf-8")
    first = text.count("\n") + 1
    path.write_text(text + "\n".join(lines) + "\n", encoding="utf-8")
    return first


def run(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(root)],
                          capture_output=True, text=True, check=False)  # fmt: skip


def test_a_planted_query_fails_the_lint_with_file_and_line(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    assert run(root).returncode == 0
    report = root / "loops" / "analysis" / "report.py"
    at = plant(
        report,
        "def _planted(store):",
        '    return store.query("SELECT count(*) AS n FROM nodes WHERE role = ?", ["x"])',
    )
    grade = root / "tools" / "verdict.py"
    sql_at = plant(grade, "_PLANTED = (", '    "SELECT v.passed "', '    "FROM verdicts v"', ")")
    sandbox = root / "sandboxes" / "__init__.py"
    import_at = plant(sandbox, "import duckdb  # noqa: F401")
    done = run(root)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"loops/analysis/report.py:{at + 1}: SQL on a trace table: move the query into traces/",
        f"loops/analysis/report.py:{at + 1}: store.query() outside traces/: "
        "call a traces/ function",
        f"tools/verdict.py:{sql_at + 1}: SQL on a trace table: move the query into traces/",
        f"sandboxes/__init__.py:{import_at}: imports duckdb: the trace store is reached "
        "through traces/",
    ]
    assert "4 trace-store queries outside traces/" in done.stderr


@pytest.mark.parametrize(
    "source",
    [
        'rows = self.writer.store.execute(f"DELETE FROM calls WHERE run_id = {x!r}")',
        "cur = trace_store.cursor()",
        'q = f"""\n    WITH g AS (SELECT node_id FROM verdicts)\n    SELECT * FROM g"""',
        'q = "select * from runs where name = ?"',
        'q = "FROM tasks t JOIN nodes n USING (run_id, task_id)"',
        'q = "SELECT table_name FROM duckdb_tables()"',
        'q = "SELECT * FROM src.calls"',
        "from duckdb import connect",
    ],
)
def test_trace_sql_is_caught(source: str) -> None:
    assert set(hits(source)) == {1}


@pytest.mark.parametrize(
    "source",
    [
        # prose and prompts
        'help = "Select the best answer from the candidates and update the notes."',
        'msg = f"cannot load {spec!r}: delete it, or select another one from {path}"',
        'PROMPT = "From the tasks above, pick the one whose answer you are sure of."',
        # SQL in a docstring is documentation
        'def f():\n    """Reads `SELECT * FROM nodes` back."""',
        # a database of its own (the local search index's SQLite file)
        'conn.execute("select value from meta where key = ?", (key,))',
        'conn.execute("delete from chunks where doc_id = ?", (doc_id,))',
        '_DROP = "".join(f"drop table if exists {t};" for t in ("chunks", "meta"))',
        # methods of other objects
        'found = searcher.query("how many calls were made")',
        "restored = restore.execute(plan)",
    ],
)
def test_prose_and_other_databases_are_left_alone(source: str) -> None:
    assert hits(source) == []
