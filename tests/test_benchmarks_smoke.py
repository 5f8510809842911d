"""Every script in benchmarks/ runs at its smoke size, through ``run_all.py --smoke`` (what
``BENCH_SMOKE=1 make bench`` runs), so a refactor that breaks one fails here. No figure is
asserted: a smoke run only proves the script still works end to end and prints its result
line. The scripts are found by glob, so a new one is covered without being listed. Each is
marked ``slow`` (``make test`` runs them, ``make test-fast`` does not); one that needs the
embedded model is marked ``local_model`` too (it names it in its source).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.loop_testkit import local_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RUN_ALL = BENCHMARKS / "run_all.py"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p != RUN_ALL and not p.name.startswith("_"))


def _marks(script: Path) -> list[pytest.MarkDecorator]:
    """Every smoke run is a whole subprocess (seconds to a minute or two): ``slow``; one that
    runs the embedded model (it names it) is ``local_model`` too."""
    marks = [pytest.mark.slow]
    if "smollm2" in script.read_text(encoding="utf-8"):
        marks += [pytest.mark.local_model, local_model]
    return marks


def _result_line(log: str) -> dict[str, Any] | None:
    for line in reversed(log.splitlines()):
        if line.startswith("{") and '"rows"' in line:
            data: dict[str, Any] = json.loads(line)
            return data
    return None


@pytest.mark.parametrize("script", [pytest.param(s, id=s.stem, marks=_marks(s)) for s in SCRIPTS])
def test_every_benchmark_runs_at_its_smoke_size(script: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    done = subprocess.run(
        [sys.executable, str(RUN_ALL), "--smoke", "--only", script.stem, "--logs", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    log_file = tmp_path / f"{script.stem}.log"
    log = log_file.read_text(encoding="utf-8") if log_file.exists() else "(no log)"
    where = f"\n--- run_all ---\n{done.stdout[-2000:]}\n--- {script.name} ---\n{log[-4000:]}"
    skipped = next((ln for ln in done.stdout.splitlines() if "| SKIPPED:" in ln), None)
    if done.returncode == 0 and skipped:
        pytest.skip(skipped.split("|")[2].strip())
    assert done.returncode == 0, where
    assert "smoke: all 1 scripts ran" in done.stdout, where
    assert "# exit 0," in log, where
    result = _result_line(log)
    assert result is not None, f"{script.name} printed no result line" + where
    rows = result["rows"]
    assert rows, where
    assert all(r.get("value") is not None for r in rows), where
    assert any(isinstance(r.get("ratio"), int | float) for r in rows), where


# -- run_all's smoke setting itself ----------------------------------------------------------


def _load_run_all(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_all_under_test", RUN_ALL)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look it up there
    spec.loader.exec_module(module)
    return module


def _run_all(monkeypatch: pytest.MonkeyPatch, folder: Path) -> ModuleType:
    """benchmarks/run_all.py as a module that reads its scripts from ``folder``."""
    module = _load_run_all(monkeypatch)
    monkeypatch.setattr(module, "HERE", folder)
    monkeypatch.setattr(module, "BENCHES", [])
    return module


GOOD = """\
import json, sys
assert "--smoke" in sys.argv
print(json.dumps({"rows": [{"figure": "f", "value": 1, "baseline": 2, "ratio": 0.5}]}))
"""


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("raise SystemExit(3)\n", "exit 3"),
        ("print('no result line')\n", "no JSON result line"),
        ("import loopwright.no_such_module\n", "No module named 'loopwright.no_such_module'"),
        ("open('data/moved.jsonl')\n", "exit 1"),  # a file inside the repository
        (
            "import json; print(json.dumps({'rows': [{'figure': 'FAILED: x', 'value': None}]}))\n",
            "FAILED: x",
        ),
    ],
)
def test_run_all_smoke_fails_when_any_script_breaks(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    bad: str,
    why: str,
) -> None:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "good.py").write_text(GOOD)
    (folder / "broken.py").write_text(bad)
    (folder / "_helper.py").write_text("raise SystemExit('a helper is not a benchmark')\n")
    run_all = _run_all(monkeypatch, folder)
    assert run_all.main(["--smoke"]) == 1
    out = capsys.readouterr().out
    assert "smoke: 1 of 2 scripts failed: broken" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("| broken |"))
    assert why in row
    assert "| good | f |" in out


def test_run_all_smoke_passes_and_skips_what_this_machine_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "good.py").write_text(GOOD)
    (folder / "optional.py").write_text("import some_optional_extra_not_installed\n")
    (folder / "no_model.py").write_text(
        "import json; print(json.dumps({'rows': [], 'skipped': 'model not installed'}))\n"
    )
    run_all = _run_all(monkeypatch, folder)
    monkeypatch.setenv(run_all.SMOKE_ENV, "1")  # BENCH_SMOKE=1 make bench
    assert run_all.main([]) == 0
    out = capsys.readouterr().out
    assert "smoke settings" in out and "smoke: all 3 scripts ran" in out
    assert "SKIPPED: module some_optional_extra_not_installed not installed" in out
    assert "SKIPPED: model not installed" in out


def test_run_all_smoke_covers_every_script_in_the_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = _load_run_all(monkeypatch)
    assert sorted(b.name for b in module.discover()) == sorted(s.stem for s in SCRIPTS)
