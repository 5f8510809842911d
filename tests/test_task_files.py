"""Task files a careless user gives: each mistake is one line on the command line (what is
wrong, what to do), never a traceback or silence; references keep a faithful form."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from loop_testkit import cli_main
from loopwright.loops.errors import UserError
from loopwright.loops.execution.runner import RunConfig, run
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.loops.tasks import load_tasks
from loopwright.traces.store import TraceStore

GOOD = json.dumps({"id": "a", "prompt": "What is 1 + 1?", "kind": "math", "reference": "2"})


def _run_cli(
    tmp_path: Path, tasks: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[str]]:
    """``loopwright run`` on ``tasks``: its exit code and its non-blank stderr lines."""
    db = tmp_path / "t.duckdb"
    code, _, err = cli_main(["run", "self-refine", "--tasks", tasks, "--db", str(db)], capsys)
    assert "Traceback" not in err
    assert not db.exists(), "nothing may be written for a task file that cannot be used"
    return code, [ln for ln in err.splitlines() if ln.strip()]


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


CASES: dict[str, tuple[bytes, str]] = {
    "bad_utf8": (
        (GOOD + "\n" + GOOD.replace('"a"', '"b"') + "\n").encode()
        + '{"prompt": "caf\u00e9"}\n'.encode("latin-1"),
        r"t\.jsonl:3: not UTF-8 text \(byte 0xe9 at column 16\): save the task file as UTF-8$",
    ),
    "deep_array": (
        b"[" * 100_000 + b"\n",
        r"t\.jsonl:1: JSON nested more than 100 levels deep: flatten the task's fields$",
    ),
    "deep_valid_metadata": (
        json.dumps({"prompt": "p", "metadata": {"x": json.loads("[" * 150 + "]" * 150)}}).encode()
        + b"\n",
        r"t\.jsonl:1: JSON nested more than 100 levels deep",
    ),
    "nan_reference": (
        (GOOD + "\n" + '{"prompt": "p", "reference": NaN}\n').encode(),
        r"t\.jsonl:2: field 'reference' is NaN, which is not an answer: give the gold answer "
        r"as a string or a finite number$",
    ),
    "infinity_in_a_list_reference": (
        b'{"prompt": "p", "reference": [1, -Infinity]}\n',
        r"t\.jsonl:1: field 'reference' holds NaN or Infinity",
    ),
    "object_id": (
        b'{"id": {"a": 1}, "prompt": "p"}\n',
        r"t\.jsonl:1: field 'id' must be a string or an integer$",
    ),
    "surrogate_in_test_code": (
        json.dumps(
            {
                "prompt": "def f():",
                "kind": "code",
                "entry_point": "f",
                "tests": ["assert f()\ud83d"],
            }
        ).encode()
        + b"\n",
        r"t\.jsonl:1: tests\[0\] is not valid Python",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_task_file_is_one_line_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    data, pattern = CASES[case]
    code, lines = _run_cli(tmp_path, _write(tmp_path / "t.jsonl", data), capsys)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert re.search(pattern, lines[0]), lines[0]


def test_a_directory_as_tasks_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = _run_cli(tmp_path, "/etc", capsys)
    assert code == 2
    assert lines == ["error: task file /etc is a directory: give one .jsonl file"]
    folder = tmp_path / "sets"
    folder.mkdir()
    (folder / "easy.jsonl").write_text(GOOD + "\n")
    code, lines = _run_cli(tmp_path, str(folder), capsys)
    assert lines == [f"error: task file {folder} is a directory: give one .jsonl file (it holds "
                     "easy.jsonl)"]  # fmt: skip
    odd = tmp_path / "named.jsonl"  # a directory whose name looks like a task file
    odd.mkdir()
    code, lines = _run_cli(tmp_path, str(odd), capsys)
    assert code == 2 and lines == [f"error: task file {odd} is a directory: give one .jsonl file"]


def test_a_damaged_gz_task_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "t.jsonl.gz", b"this was never gzip\n")
    code, lines = _run_cli(tmp_path, path, capsys)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot read task file {path}: ")
    cut = gzip.compress(((GOOD + "\n") * 50).encode())[:-20]
    path = _write(tmp_path / "cut.jsonl.gz", cut)
    code, lines = _run_cli(tmp_path, path, capsys)
    assert code == 2
    assert lines == [f"error: cannot read task file {path}: the .gz file is cut short"]


def test_an_unreadable_task_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "secret.jsonl"
    path.write_text(GOOD + "\n")
    path.chmod(0)
    want = (
        f"error: cannot read task file {path}: permission denied (check the file's and its "
        "folders' permissions)"
    )
    if os.geteuid() != 0:
        code, lines = _run_cli(tmp_path, str(path), capsys)
        assert (code, lines) == (2, [want])
        return
    # root reads any file: ask as an unprivileged user, through the installed command line.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop to an unprivileged user")
    proc = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         "from loopwright.loops.cli.main import main; main()",
         "run", "self-refine", "--tasks", str(path), "--db", str(tmp_path / "t.duckdb")],
        capture_output=True, text=True, timeout=300, cwd="/",
        env={**{k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
             "HOME": "/nonexistent", "COLUMNS": "400"},
    )  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines == [want]


async def test_references_are_stored_in_a_faithful_form(tmp_path: Path) -> None:
    given: list[Any] = ["4", 4, 0.5, True, [1, 2], {"x": [1, "b"]}, "naïve"]
    path = tmp_path / "refs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "prompt": f"say {i}", "reference": ref}, ensure_ascii=False)
            + "\n"
            for i, ref in enumerate(given)
        ),
        encoding="utf-8",
    )
    want = ["4", "4", "0.5", "true", "[1, 2]", '{"x": [1, "b"]}', "naïve"]
    assert [t.reference for t in load_tasks(str(path))] == want
    for ref, text in zip(given[3:6], want[3:6], strict=True):
        assert json.loads(text) == ref  # objects and arrays read back as what was given

    model = ScriptedModel(lambda call: "ok")
    cfg = RunConfig(
        loop="self-refine", tasks=str(path), model=model.register(), verifier="none",
        db=str(tmp_path / "t.duckdb"), options={"max_rounds": 0},
    )  # fmt: skip
    await run(cfg)
    with TraceStore(cfg.db, read_only=True) as s:
        stored = s.query("SELECT reference FROM tasks ORDER BY idx")
    assert [r["reference"] for r in stored] == want


def test_gsm8k_and_math_files_with_wrong_field_types_are_one_line(tmp_path: Path) -> None:
    gsm = _write(tmp_path / "g.jsonl", b'{"question": "q", "answer": 42}\n')
    with pytest.raises(UserError, match=r"g\.jsonl:1: field 'answer' must be text ending"):
        load_tasks(f"gsm8k:{gsm}")
    gsm = _write(tmp_path / "g2.jsonl", b'{"question": ["q"], "answer": "so #### 4"}\n')
    with pytest.raises(UserError, match=r"g2\.jsonl:1: field 'prompt': "):
        load_tasks(f"gsm8k:{gsm}")
    math = _write(tmp_path / "m.jsonl", b'{"problem": "p", "answer": NaN}\n')
    with pytest.raises(UserError, match=r"m\.jsonl:1: field 'answer' is NaN"):
        load_tasks(f"math:{math}")
    math = _write(tmp_path / "m2.jsonl", b'{"problem": "p", "answer": [1, 2]}\n')
    assert load_tasks(f"math:{math}")[0].reference == "[1, 2]"


def test_a_byte_order_mark_and_crlf_lines_are_read(tmp_path: Path) -> None:
    path = _write(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + (GOOD + "\r\n").encode() * 1)
    [task] = load_tasks(path)
    assert (task.id, task.prompt) == ("a", "What is 1 + 1?")
