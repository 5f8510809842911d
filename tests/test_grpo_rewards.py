"""GRPO rewards (loops/improve/rewards.py): the grader on keyed train tasks, in-loop verifiers
on blind tasks (code in the sandbox harness), the label-free majority vote, the format and
length terms, and TRL's reward-function contract. No training here."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loopwright.loops.errors import UserError
from loopwright.loops.improve import rewards as R
from loopwright.loops.improve.config import GrpoConfig, ImproveConfig
from loopwright.loops.improve.rewards import (
    Rewards,
    completion_text,
    grpo_dataset,
    reward_function,
    task_dataset,
)
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.function_model import FunctionModel
from loopwright.loops.tasks import Task, load_tasks
from loopwright.loops.verify import GRADERS, Verdict

ROOT = Path(__file__).resolve().parents[1]


def config(reward: str = "grader", **grpo: Any) -> ImproveConfig:
    more = {k: grpo.pop(k) for k in ("role_models", "grader", "verifier") if k in grpo}
    return ImproveConfig(
        name="g",
        tasks="builtin:arithmetic",
        eval_tasks="builtin:arithmetic?seed=1",
        method="grpo",
        grpo=GrpoConfig(reward=reward, generations=4, **grpo),
        **more,
    )


@pytest.fixture(scope="module")
def arith() -> list[Task]:
    return load_tasks("builtin:arithmetic", limit=3)


@pytest.fixture
def rewards() -> Iterator[list[Rewards]]:
    made: list[Rewards] = []
    yield made
    for r in made:
        r.close()


def make(made: list[Rewards], cfg: ImproveConfig, tasks: list[Task]) -> Rewards:
    r = Rewards(cfg, tasks)
    made.append(r)
    return r


def wrong(ref: str | None) -> str:
    return str(int(ref or "0") + 1)


# -- grader ------------------------------------------------------------------------------------


def test_grader_reward_on_arithmetic(arith: list[Task], rewards: list[Rewards]) -> None:
    r = make(rewards, config("grader"), arith)
    ids, comps, want = [], [], []
    for t in arith:  # a group of 4 per task, TRL's order
        group = [
            f"Adding up: the answer is {t.reference}.",
            f"The answer is {wrong(t.reference)}.",
            "I cannot tell.",
            f"{t.reference}",
        ]
        ids += [t.id] * 4
        comps += group
        want += [1.0, 0.0, 0.0, 1.0]
    out = r.score(ids, comps)
    assert [o.total for o in out] == want
    assert [o.terms for o in out] == [{"correct": w} for w in want]
    assert out[0].verdict is not None and out[0].verdict.verifier == "math-answer"
    assert out[1].answer == wrong(arith[0].reference) and out[2].answer is None
    assert r.last() == out
    assert r.label == "reward:grader"
    # the record reuses the reward's verdicts: no second grading
    graded = r.grade(ids, comps)
    assert [v.passed if v else None for v in graded] == [w == 1.0 for w in want]
    assert all(g is o.verdict for g, o in zip(graded, out, strict=True))


def test_grader_reward_refuses_tasks_without_a_grader(rewards: list[Rewards]) -> None:
    text = [Task(id="t", prompt="Say hi", kind="text", reference="hi")]
    with pytest.raises(UserError, match="no train task has a grader") as e:
        make(rewards, config("grader"), text)
    assert "\n" not in str(e.value)


# -- majority ----------------------------------------------------------------------------------


def test_majority_votes_and_never_reads_the_key(
    arith: list[Task], rewards: list[Rewards], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the reference is deliberately wrong: the vote, not the key, decides
    liar = arith[0].model_copy(update={"reference": "999"})
    other = arith[1]
    r = make(rewards, config("majority"), [liar, other])
    group1 = ["The answer is 15.", "so 15", "The answer is 16.", "no idea"]
    group2 = ["The answer is 3.", "The answer is 4.", "The answer is 4.", "The answer is 3."]
    ids = [liar.id] * 4 + [other.id] * 4

    def no_key(*a: Any, **k: Any) -> None:
        raise AssertionError("the majority reward read the answer key")

    monkeypatch.setattr(R, "grader_for", no_key)
    out = r.score(ids, group1 + group2)
    assert [o.total for o in out] == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert [o.pseudo_label for o in out] == ["15"] * 4 + ["3"] * 4  # tie 3-4: first holder
    assert out[3].answer is None and out[3].verdict is not None
    assert "majority answer is 15" in out[3].verdict.feedback
    monkeypatch.undo()
    # the record (grader) disagrees with the pseudo-label: the key says 999
    graded = r.grade(ids[:4], group1)
    assert [v.passed if v else None for v in graded] == [False] * 4

    # blind tasks, whose keys are gone, get the same rewards
    blind = make(rewards, config("majority"), [liar.blind(), other.blind()])
    assert blind._tasks[liar.id].reference is None
    again = blind.score(ids, group1 + group2)
    assert [o.total for o in again] == [o.total for o in out]
    assert [o.pseudo_label for o in again] == [o.pseudo_label for o in out]


def test_majority_without_any_answer_gives_zero(arith: list[Task], rewards: list[Rewards]) -> None:
    r = make(rewards, config("majority"), arith[:1])
    out = r.score([arith[0].id] * 2, ["hmm", ""])
    assert [o.total for o in out] == [0.0, 0.0]
    assert [o.pseudo_label for o in out] == [None, None]


# -- verifiers ---------------------------------------------------------------------------------


def test_oracle_and_none_are_refused_in_one_line(arith: list[Task], rewards: list[Rewards]) -> None:
    with pytest.raises(UserError, match="reads the answer key") as e:
        make(rewards, config("verifier:oracle"), arith)
    assert "\n" not in str(e.value) and "--reward grader" in str(e.value)
    with pytest.raises(UserError, match="no reward"):
        make(rewards, config("verifier:none"), arith)
    with pytest.raises(UserError, match="unknown reward verifier"):
        make(rewards, config("verifier:nope"), arith)
    with pytest.raises(UserError, match="reads the answer key"):
        reward_function(verifier="oracle")
    assert "oracle" not in R.reward_verifiers() and "none" not in R.reward_verifiers()
    assert {"visible-tests", "self", "judge", "reward", "consistency"} <= set(R.reward_verifiers())


def _bwrap() -> None:
    from loopwright.sandboxes import BwrapSandbox

    reason = BwrapSandbox.check()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"bwrap sandbox unavailable in CI: {reason}")
        pytest.skip(f"bwrap sandbox unavailable: {reason}")


FORGERIES = {
    "prints a pass": """
        def add_numbers(a, b):
            print("PASSED"); print('{"kind": "done", "ok": true}')
            return 0
        """,
    "exits 0 at load": """
        import os
        os._exit(0)
        def add_numbers(a, b):
            return 0
        """,
    "exits 0 when called": """
        import sys
        def add_numbers(a, b):
            sys.exit(0)
        """,
    "equals anything": """
        class Yes:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
        def add_numbers(a, b):
            return Yes()
        """,
    "edits the harness": """
        import builtins, sys
        builtins.AssertionError = type("Nope", (Exception,), {})
        for name, mod in list(sys.modules.items()):
            for attr in ("emit", "_emit", "report"):
                if hasattr(mod, attr):
                    try: setattr(mod, attr, lambda *a, **k: None)
                    except Exception: pass
        def add_numbers(a, b):
            return 0
        """,
}


def test_visible_tests_reward_runs_blind_in_the_sandbox(rewards: list[Rewards]) -> None:
    _bwrap()
    task = next(t for t in load_tasks("builtin:code") if t.entry_point == "add_numbers")
    r = make(rewards, config("verifier:visible-tests"), [task])
    right = "```python\ndef add_numbers(a, b):\n    return a + b\n```"
    only_shown = "```python\ndef add_numbers(a, b):\n    return 5\n```"  # passes the shown example
    forged = [f"```python\n{textwrap.dedent(c).strip()}\n```" for c in FORGERIES.values()]
    comps = [right, only_shown, *forged]
    out = r.score([task.id] * len(comps), comps)
    totals = [o.total for o in out]
    assert totals[:2] == [1.0, 1.0], [o.verdict for o in out[:2]]
    for name, o in zip(FORGERIES, out[2:], strict=True):
        assert o.total == 0.0, (name, o.verdict)
        assert o.verdict is not None and o.verdict.verifier == "visible-tests"
        assert o.verdict.details.get("sandbox") == "bwrap"
    assert r.label == "reward:verifier:visible-tests"
    # the reward saw the visible test only; the held-out grader runs the hidden ones
    graded = r.grade([task.id] * 2, comps[:2])
    assert [v.passed if v else None for v in graded] == [True, False]


def test_self_check_reward_asks_the_verifier_model_about_the_blind_task(
    arith: list[Task], rewards: list[Rewards]
) -> None:
    seen: list[str] = []

    def checker(call: ModelCall) -> str:
        text = json.dumps(call.messages)
        seen.append(text)
        return "CORRECT" if "15" in text else "INCORRECT"

    judge = FunctionModel(checker, name="function/checker")
    cfg = config("verifier", role_models={"verifier": judge})  # auto: self for math
    r = make(rewards, cfg, arith[:1])
    out = r.score([arith[0].id] * 2, ["The answer is 15.", "The answer is 14."])
    assert [o.total for o in out] == [1.0, 0.0]
    assert out[0].verdict is not None and out[0].verdict.verifier == "self"
    assert r.label == "reward:verifier:auto"
    assert len(seen) == 2 and all("cookies" in s for s in seen)


def test_model_verifier_without_a_model_is_one_line(arith: list[Task]) -> None:
    fn = reward_function(verifier="self")
    try:
        with pytest.raises(UserError, match="asks a model") as e:
            fn(completions=["The answer is 15."], task=[arith[0].answer_key()])
        assert "\n" not in str(e.value)
    finally:
        fn.close()


# -- terms -------------------------------------------------------------------------------------


def test_format_and_length_terms(arith: list[Task], rewards: list[Rewards]) -> None:
    t = arith[0]
    cfg = config("grader", format_weight=0.5, length_weight=0.25, max_completion_tokens=16)
    r = make(rewards, cfg, [t])
    comps = [f"The answer is {t.reference}.", "no number here", f"{wrong(t.reference)}", "15 15"]
    out = r.score([t.id] * 4, comps, finish_reasons=["stop", "length", None, "length"])
    assert [o.terms for o in out] == [
        {"correct": 1.0, "format": 1.0, "length": 0.0},
        {"correct": 0.0, "format": 0.0, "length": -1.0},
        {"correct": 0.0, "format": 1.0, "length": None},  # unknown: not counted
        {"correct": 1.0, "format": 1.0, "length": -1.0},
    ]
    assert [o.total for o in out] == [1.5, -0.25, 0.5, 1.25]
    # token counts instead of finish reasons: the cap is max_completion_tokens
    by_count = r.score([t.id] * 2, comps[:2], completion_tokens=[15, 16])
    assert [o.terms["length"] for o in by_count] == [0.0, -1.0]
    assert r.weights() == [1.0, 0.5, 0.25]
    assert [f.__name__ for f in r.trl_funcs()] == ["correct", "format", "length"]


def test_code_format_needs_a_program_that_parses(rewards: list[Rewards]) -> None:
    task = load_tasks("builtin:code", limit=1)[0]
    r = make(rewards, config("majority", format_weight=1.0), [task])
    ok = "```python\ndef add_numbers(a, b):\n    return a + b\n```"
    broken = "```python\ndef add_numbers(a, b)\n    return a +\n```"
    out = r.score([task.id] * 2, [ok, broken])
    assert [o.terms["format"] for o in out] == [1.0, 0.0]


# -- one bad completion ------------------------------------------------------------------------


def test_one_bad_completion_does_not_fail_the_batch(
    arith: list[Task], rewards: list[Rewards], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Fussy:
        name = "fussy"

        def __call__(self, task: Task, response: str) -> Verdict:
            if "boom" in response:
                raise RuntimeError("cannot parse this one")
            ok = response.strip().endswith(task.reference or "?")
            return Verdict(passed=ok, score=float(ok), verifier=self.name, version="1")

    monkeypatch.setitem(GRADERS, "fussy", lambda sandbox: Fussy())
    t = arith[0]
    r = make(rewards, config("grader", grader="fussy"), [t])
    comps = [f"= {t.reference}", "boom", "odd \ud800 text \x00", f"= {wrong(t.reference)}"]
    out = r.score([t.id] * 4, comps)
    assert [o.total for o in out] == [1.0, 0.0, 0.0, 0.0]
    bad = out[1].verdict
    assert bad is not None and "cannot parse this one" in bad.feedback and not bad.passed
    assert bad.details["error"].startswith("RuntimeError")
    # the record does not count a grading error as a failed verdict
    assert r.grade([t.id] * 4, comps)[1] is None
    # surrogates and other odd text through the real math grader
    real = make(rewards, config("grader"), [t])
    odd = real.score([t.id] * 2, ["\ud800\udfff" * 3, f"The answer is {t.reference} \ud800"])
    assert [o.total for o in odd] == [0.0, 1.0]


# -- TRL's contract ----------------------------------------------------------------------------


def test_grpo_dataset_columns_keyed_and_blind(arith: list[Task]) -> None:
    keyed = grpo_dataset(arith, keyed=True)
    blind = grpo_dataset(arith, keyed=False)
    assert keyed.column_names == ["prompt", "task_id", "task"]
    row = keyed[0]
    assert row["task_id"] == arith[0].id
    assert row["prompt"][-1]["role"] == "user" and arith[0].prompt in row["prompt"][-1]["content"]
    assert Task.model_validate_json(row["task"]).reference == arith[0].reference
    assert Task.model_validate_json(blind[0]["task"]).reference is None
    assert blind[0]["prompt"] == row["prompt"]
    ds = task_dataset("builtin:arithmetic", limit=2)
    assert len(ds) == 2 and ds[0]["task"] == row["task"]


def trl_call(ds: Any, comps: list[str], g: int) -> dict[str, Any]:
    """The keywords GRPOTrainer._calculate_rewards passes for a chat dataset."""
    rows = [ds[i] for i in range(len(ds)) for _ in range(g)]
    return {
        "prompts": [r["prompt"] for r in rows],
        "completions": [[{"role": "assistant", "content": c}] for c in comps],
        "completion_ids": [[1] * (7 + i) for i in range(len(comps))],
        "trainer_state": object(),
        "log_extra": lambda *a, **k: None,
        "log_metric": lambda *a, **k: None,
        "task_id": [r["task_id"] for r in rows],
        "task": [r["task"] for r in rows],
    }


def test_reward_function_in_trls_keyword_contract(arith: list[Task]) -> None:
    ds = task_dataset("builtin:arithmetic", limit=2)
    comps = [
        f"The answer is {arith[0].reference}.",
        "The answer is 2.",
        f"The answer is {arith[1].reference}.",
        f"The answer is {arith[1].reference}.",
    ]
    fn = reward_function()
    try:
        assert fn.__name__ == "loopwright_grader"
        assert fn(**trl_call(ds, comps, 2)) == [1.0, 0.0, 1.0, 1.0]
        # pickled as a trainer may copy it: the settings survive, the thread is made again
        copy = pickle.loads(pickle.dumps(fn))
        assert copy(**trl_call(ds, comps, 2)) == [1.0, 0.0, 1.0, 1.0]
        copy.close()
    finally:
        fn.close()
    # majority on a blind dataset: the key is not there and not needed
    blind = task_dataset("builtin:arithmetic", limit=2, keyed=False)
    maj = reward_function(kind="majority", format_weight=0.5)
    try:
        got = maj(**trl_call(blind, [*comps[:2], "7", "no"], 2))
        assert got == [1.5, 0.5, 1.5, 0.0]
        assert [o.pseudo_label for o in maj.last] == [
            arith[0].reference,
            arith[0].reference,
            "7",
            "7",
        ]
    finally:
        maj.close()
    with pytest.raises(UserError, match="`task` column"):
        reward_function()(completions=["1"], task_id=["x"])


def test_trl_funcs_score_each_batch_once(
    arith: list[Task], rewards: list[Rewards], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = make(
        rewards,
        config("grader", format_weight=0.5, length_weight=1.0, max_completion_tokens=8),
        arith[:2],
    )
    calls = []
    real = r.score

    def counted(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(r, "score", counted)
    ds = grpo_dataset(arith[:2], keyed=True)
    comps = [f"The answer is {arith[0].reference}.", "nothing", "The answer is 0.", "so 0"]
    kwargs = trl_call(ds, comps, 2)  # completion_ids of 7, 8, 9, 10 tokens: the last 3 clipped
    per_func = [f(**kwargs) for f in r.trl_funcs()]
    assert len(calls) == 1
    assert per_func == [[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0], [0.0, -1.0, -1.0, -1.0]]
    assert [o.total for o in r.last()] == [1.5, -1.0, -0.5, -0.5]


def test_completion_text_forms() -> None:
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "a"}]) == "a"
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "x"}, {"text": "y"}]}]
    assert completion_text(parts) == "xy"
    turns = [
        {"role": "assistant", "content": "draft"},
        {"role": "tool", "content": "result"},
        {"role": "assistant", "content": "final"},
    ]
    assert completion_text(turns) == "final"
    assert completion_text(None) == ""


def test_the_example_prints_rewards(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "trl_reward.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("task arith-0000:")
    assert lines[1].startswith("  reward 1.0:") and lines[2].startswith("  reward 0.0:")
