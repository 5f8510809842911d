"""User mistakes and hostile names through the CLI: one line on stderr, exit 2, no traceback;
names and paths holding rich markup are printed as they are."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loopwright.loops.cli.main import main
from loopwright.loops.execution.run_config import SEED_MAX, RunConfig
from loopwright.loops.models.scripted import ScriptedModel
from pydantic import ValidationError

MARKUP_NAME = "[/red]x[bold]y[/][link=file:///etc]z"


class Out:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def one_error_line(self) -> str:
        assert self.code == 2, (self.code, self.out, self.err)
        assert "Traceback" not in self.err, self.err
        lines = [ln for ln in self.err.splitlines() if ln.strip()]
        assert len(lines) == 1, lines
        return lines[0]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    monkeypatch.setenv("COLUMNS", "250")

    def invoke(*args: str) -> Out:
        monkeypatch.setattr(sys, "argv", ["loopwright", *args])
        code, tb = 0, ""
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        except Exception:
            code, tb = 1, traceback.format_exc()
        out, err = capsys.readouterr()
        return Out(code, out, err + tb)

    yield invoke


def _answer(messages: list[dict[str, Any]], index: int) -> str:
    return "The answer is 5."


def test_a_run_name_with_markup_is_listed_as_written(tmp_path: Path, cli: Any) -> None:
    model = ScriptedModel(_answer, name="cli-markup").register()
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"id": "q", "prompt": "2+3?", "kind": "math", "reference": "5"}))
    db = str(tmp_path / "[red]m.duckdb")
    r = cli(
        "run", "best-of-n", "--tasks", str(tasks), "--model", model, "--db", db,
        "--run-name", MARKUP_NAME, "-o", "n=1",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert f"run {MARKUP_NAME}" in r.out  # the summary's title
    assert db in r.out
    r = cli("runs", "--db", db)
    assert r.code == 0, r.err
    assert MARKUP_NAME in r.out
    assert "1/1" in r.out


def test_an_error_message_with_markup_is_printed_as_written(tmp_path: Path, cli: Any) -> None:
    missing = tmp_path / "[/red]missing.jsonl"
    r = cli("run", "best-of-n", "--tasks", str(missing), "--db", str(tmp_path / "x.duckdb"))
    line = r.one_error_line()
    assert "[/red]missing.jsonl" in line


@pytest.mark.parametrize("seed", [str(SEED_MAX + 1), "100000000000000000000000", "-1"])
def test_a_seed_out_of_range_is_one_line(tmp_path: Path, cli: Any, seed: str) -> None:
    r = cli(
        "run", "best-of-n", "--tasks", "builtin:arithmetic", "--seed", seed,
        "--db", str(tmp_path / "x.duckdb"),
    )  # fmt: skip
    assert r.code == 2
    assert "Traceback" not in r.err
    assert "--seed" in r.err
    assert not (tmp_path / "x.duckdb").exists()


def test_run_config_refuses_a_seed_the_store_cannot_hold() -> None:
    with pytest.raises(ValidationError, match="seed"):
        RunConfig(loop="best-of-n", tasks="builtin:arithmetic", seed=SEED_MAX + 1)
    assert RunConfig(loop="best-of-n", tasks="builtin:arithmetic", seed=SEED_MAX).seed == SEED_MAX


def _unwritable(tmp_path: Path) -> Path:
    """A folder that cannot be made: its parent is a regular file (works as root too)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "sub"


def test_harvest_to_an_unwritable_place_is_one_line(tmp_path: Path, cli: Any) -> None:
    model = ScriptedModel(_answer, name="cli-harvest-ro").register()
    db = str(tmp_path / "h.duckdb")
    r = cli(
        "run", "best-of-n", "--tasks", "builtin:arithmetic", "--limit", "2", "--model", model,
        "--db", db, "-o", "n=2",
    )  # fmt: skip
    assert r.code == 0, r.err
    for out in ("sft.jsonl", "sft.parquet", "folder"):
        target = _unwritable(tmp_path) / out
        line = cli("harvest", "sft", "--db", db, "--out", str(target)).one_error_line()
        assert str(target) in line and "cannot write" in line
        assert not target.exists()


def test_search_index_to_an_unwritable_place_is_one_line(tmp_path: Path, cli: Any) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "hello world"}) + "\n")
    target = _unwritable(tmp_path) / "ix.sqlite"
    line = cli("search", "index", str(corpus), "--index", str(target)).one_error_line()
    assert str(target) in line and "cannot write" in line
    folder = tmp_path / "a-folder.sqlite"
    folder.mkdir()
    line = cli("search", "index", str(corpus), "--index", str(folder)).one_error_line()
    assert str(folder) in line
