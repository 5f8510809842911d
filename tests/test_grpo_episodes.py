"""Two-turn episodes (``improve --method grpo --rollout self-refine``): the ``two-turn`` loop,
the episode rollout's tokens and loss mask, the revision's reward with the improvement term,
the episode in the store (draft -> revision nodes, turn metrics), and a tiny real series
whose checkpoints are evaluated turn by turn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loop_testkit import QUESTION, RIGHT, WRONG, LoopRunner, RoleScript, finals, one_task
from loopwright.loops.execution.grade import grade_run
from loopwright.loops.improve.config import GrpoConfig, ImproveConfig
from loopwright.loops.improve.metrics import turn_metrics
from loopwright.loops.improve.record import DraftTurn, RolloutRow, record_step
from loopwright.loops.improve.rewards import RewardOutcome, Rewards
from loopwright.loops.improve.rollout_engine import EngineSample, episode_rollout, turn_ids
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.loops.prompts import draft_messages, revision_messages, revision_turn
from loopwright.loops.tasks import Task, builtin_arithmetic, load_tasks
from loopwright.tools.verdict import Verdict
from loopwright.traces import TraceStore

run_loop = LoopRunner("two-turn")


def _rows(db: str | Path, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with TraceStore(db, read_only=True) as store:
        return store.query(sql, params)


# -- the loop ------------------------------------------------------------------------------------
async def test_two_turn_answers_with_the_revision_of_its_own_draft(tmp_path: Path) -> None:
    script = RoleScript(generator=WRONG, refiner=RIGHT)
    model = ScriptedModel(script)
    result, rows = await run_loop(tmp_path, model, one_task(tmp_path), verifier="none")
    assert script.roles == ["generator", "refiner"]
    draft, revision = sorted(rows["nodes"], key=lambda n: n["round"])
    assert (draft["role"], draft["round"], draft["parent_id"]) == ("generator", 0, None)
    assert (revision["role"], revision["round"]) == ("refiner", 1)
    assert revision["parent_id"] == draft["node_id"]
    assert [n["node_id"] for n in finals(rows)] == [revision["node_id"]]
    [task] = rows["tasks"]
    assert task["final_answer"] == "5" and task["graded"] is True
    # the second request is the same conversation: the draft as the assistant's turn, then
    # the instruction (no reference, no grader words in it)
    second = json.loads(rows["calls"][1]["messages"])
    task_obj = Task(id="t", prompt=QUESTION, kind="math")
    assert second[:-2] == draft_messages(task_obj)
    assert second[-2] == {"role": "assistant", "content": WRONG}
    assert second[-1] == {"role": "user", "content": revision_turn(task_obj)}
    assert "5" not in second[-1]["content"]
    # the draft is graded too: turn 1 wrong, turn 2 right
    db = str(tmp_path / "t.duckdb")
    grade_run(db, [result.run_id])
    [run] = _rows(db, "SELECT name FROM runs")
    with TraceStore(db, read_only=True) as store:
        m = turn_metrics(store, run["name"])
    assert m["episodes"] == 1 and m["wrong_to_right"] == 1 and m["right_to_wrong"] == 0
    assert m["turn1"]["mean"] == 0.0 and m["turn2"]["mean"] == 1.0


def test_revision_turn_puts_a_verifiers_feedback_in_front() -> None:
    task = Task(id="t", prompt=QUESTION, kind="math")
    plain = revision_turn(task)
    fed = revision_turn(task, "the sum is off by one")
    assert fed.endswith(plain) and fed.startswith("A check of your answer says: the sum is off")
    code = revision_turn(Task(id="c", prompt="def f(): ...", kind="code"))
    assert "```python" in code and code != plain
    msgs = revision_messages(task, "draft text")
    assert msgs[-2:] == [{"role": "assistant", "content": "draft text"},
                         {"role": "user", "content": plain}]  # fmt: skip


# -- the rollout ---------------------------------------------------------------------------------
class _Tok:
    """A character tokenizer with a ChatML template (ids = code points; EOS = 0)."""

    eos_token = "<E>"

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids, i = [], 0
        while i < len(text):
            if text.startswith(self.eos_token, i):
                ids.append(0)
                i += len(self.eos_token)
            else:
                ids.append(ord(text[i]))
                i += 1
        return {"input_ids": ids}

    def apply_chat_template(self, msgs: list[dict[str, str]], add_generation_prompt: bool = False,
                            tokenize: bool = True) -> Any:  # fmt: skip
        text = "".join(f"[{m['role']}]{m['content']}{self.eos_token}\n" for m in msgs)
        if add_generation_prompt:
            text += "[assistant]"
        return self(text)["input_ids"] if tokenize else text


class _Engine:
    """Replies with fixed texts per turn, as the policy engine's samples."""

    eos_id = 0

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.asked: list[tuple[list[list[int]], int]] = []

    def generate_ids(self, prompt_ids: list[list[int]], n: int, **kw: Any) -> Any:
        self.asked.append((prompt_ids, n))
        turn = len(self.asked)
        self.timings["generate_s"] = 1.0
        out = []
        for i, _ in enumerate(prompt_ids):
            group = []
            for j in range(n):
                text = f"t{turn}p{i}s{j}"
                cut = turn == 1 and j == 1  # one draft cut at the cap: no EOS
                ids = [ord(c) for c in text] + ([] if cut else [0])
                group.append(EngineSample(text=text, token_ids=ids, logprobs=[-0.5] * len(ids),
                                          finish_reason="length" if cut else "stop"))  # fmt: skip
            out.append(group)
        return out


def test_an_episode_is_draft_turn_revision_with_the_turn_masked_out() -> None:
    tok, engine = _Tok(), _Engine()
    heads = [[{"role": "user", "content": "q0"}], [{"role": "user", "content": "q1"}]]
    ids = [tok.apply_chat_template(h, add_generation_prompt=True) for h in heads]
    out = episode_rollout(engine, tok, heads, ids, 2, lambda p: f"fix {p[0]['content']}",
                          max_tokens=16, temperature=1.0, seed=0)  # fmt: skip
    assert [n for _, n in engine.asked] == [2, 1] and len(engine.asked[1][0]) == 4
    assert out["prompt_ids"] == [ids[0], ids[0], ids[1], ids[1]]
    for k in range(4):
        draft = [ord(c) for c in f"t1p{k // 2}s{k % 2}"] + ([] if k % 2 else [0])
        turn = tok(f"{'' if k % 2 == 0 else tok.eos_token}\n[user]fix q{k // 2}<E>\n[assistant]")[
            "input_ids"
        ]
        revision = [ord(c) for c in f"t2p{k}s0"] + [0]
        assert out["completion_ids"][k] == draft + turn + revision
        assert out["env_mask"][k] == [1] * len(draft) + [0] * len(turn) + [1] * len(revision)
        # the revision was sampled on exactly prompt + draft + turn
        assert engine.asked[1][0][k] == ids[k // 2] + draft + turn
        assert out["logprobs"][k] == [-0.5] * len(draft) + [0.0] * len(turn) + [-0.5] * len(
            revision
        )
    assert out["draft"] == ["t1p0s0", "t1p0s1", "t1p1s0", "t1p1s1"]
    assert out["revision"] == ["t2p0s0", "t2p1s0", "t2p2s0", "t2p3s0"]
    assert out["draft_finish"] == ["stop", "length", "stop", "length"]
    assert engine.timings["generate_s"] == 2.0  # both turns
    # away from temperature 1 the engine's log-probs are not the sampling distribution's
    again = episode_rollout(_Engine(), tok, heads, ids, 2, lambda p: "fix", max_tokens=16,
                            temperature=0.7, seed=0)  # fmt: skip
    assert again["logprobs"] is None


# -- the reward ----------------------------------------------------------------------------------
@pytest.fixture
def arith() -> list[Task]:
    return load_tasks("builtin:arithmetic", limit=2)


@pytest.fixture
def made() -> Iterator[list[Rewards]]:
    out: list[Rewards] = []
    yield out
    for r in out:
        r.close()


def _cfg(**grpo: Any) -> ImproveConfig:
    return ImproveConfig(name="g", tasks="builtin:arithmetic", eval_tasks="builtin:arithmetic?seed=1",
                         method="grpo", grpo=GrpoConfig(generations=4, **grpo))  # fmt: skip


def test_the_revision_is_rewarded_plus_its_improvement_on_the_draft(
    arith: list[Task], made: list[Rewards]
) -> None:
    r = Rewards(_cfg(rollout="self-refine", improve_weight=0.5), arith)
    made.append(r)
    a = arith[0]
    right, wrong = f"The answer is {a.reference}.", f"The answer is {int(a.reference or 0) + 1}."
    drafts = [wrong, right, right, wrong]
    revisions = [right, wrong, right, wrong]
    assert r.term_names() == ["correct", "improve"] and r.weights() == [1.0, 0.5]
    kwargs = {"task_id": [a.id] * 4, "draft": drafts, "revision": revisions,
              "completions": ["whole episode text"] * 4}  # fmt: skip
    per_func = [f(**kwargs) for f in r.trl_funcs()]
    assert per_func == [[1.0, 0.0, 1.0, 0.0], [1.0, -1.0, 0.0, 0.0]]
    assert [o.total for o in r.last()] == [1.5, -0.5, 1.0, 0.0]
    assert [o.answer for o in r.last_drafts()] == [str(int(a.reference or 0) + 1), a.reference,
                                                   a.reference, str(int(a.reference or 0) + 1)]  # fmt: skip
    # the record reuses both turns' grader verdicts: nothing is graded twice
    assert all(
        g is o.verdict for g, o in zip(r.grade([a.id] * 4, revisions), r.last(), strict=True)
    )
    assert all(
        g is o.verdict for g, o in zip(r.grade([a.id] * 4, drafts), r.last_drafts(), strict=True)
    )
    # other rollouts have no improvement term, whatever its weight
    plain = Rewards(_cfg(improve_weight=0.5), arith)
    made.append(plain)
    assert plain.term_names() == ["correct"] and plain.weights() == [1.0]


def test_the_majority_reward_votes_over_the_revisions(
    arith: list[Task], made: list[Rewards]
) -> None:
    r = Rewards(_cfg(reward="majority", rollout="self-refine", improve_weight=1.0), arith)
    made.append(r)
    a = arith[0]
    drafts = ["The answer is 7."] * 4
    revisions = ["The answer is 3.", "The answer is 3.", "The answer is 3.", "The answer is 7."]
    out = r.score_episode([a.id] * 4, drafts, revisions)
    # one pseudo-label per task, the revisions' vote (3); the drafts are scored against it
    # too, not against their own vote (7)
    assert [o.pseudo_label for o in out] == ["3"] * 4
    assert [o.terms["correct"] for o in out] == [1.0, 1.0, 1.0, 0.0]
    assert [o.terms["improve"] for o in out] == [1.0, 1.0, 1.0, 0.0]
    assert [o.total for o in out] == [2.0, 2.0, 2.0, 0.0]


# -- the store -----------------------------------------------------------------------------------
def _episode(task: Task, first: str, second: str, adv: float) -> RolloutRow:
    ref = str(task.reference)

    def graded(ans: str) -> Verdict:
        return Verdict(passed=ans == ref, score=float(ans == ref), answer=ans, verifier="math")

    correct = float(second == ref)
    return RolloutRow(
        task=task,
        messages=draft_messages(task),
        completion=f"Again: the answer is {second}.",
        completion_tokens=8,
        prompt_tokens=30,
        finish_reason="stop",
        outcome=RewardOutcome(
            total=correct, terms={"correct": correct}, answer=second, verdict=graded(second)
        ),
        graded=graded(second),
        advantage=adv,
        draft=DraftTurn(
            completion=f"The answer is {first}.",
            completion_tokens=6,
            answer=first,
            graded=graded(first),
            turn=revision_turn(task),
            turn_tokens=40,
        ),
    )


def test_an_episode_is_stored_as_a_draft_and_its_revision(tmp_path: Path) -> None:
    db = str(tmp_path / "e.duckdb")
    [t] = builtin_arithmetic(seed=3, n=1)
    ref, bad = str(t.reference), str(int(t.reference or 0) + 1)
    rows = [_episode(t, bad, ref, 1.0), _episode(t, ref, bad, -1.0), _episode(t, ref, ref, 0.5),
            _episode(t, bad, bad, -0.5)]  # fmt: skip
    run_id = record_step(db, "ep", 1, "local/base", rows, {}, 0, reward="grader")
    nodes = _rows(db, "SELECT * FROM nodes WHERE run_id = ? ORDER BY created_at", [run_id])
    drafts = [n for n in nodes if n["role"] == "generator"]
    revisions = [n for n in nodes if n["role"] == "refiner"]
    assert len(drafts) == 4 and len(revisions) == 4
    by_id = {n["node_id"]: n for n in drafts}
    assert [by_id[r["parent_id"]]["answer"] for r in revisions] == [bad, ref, ref, bad]
    assert [r["answer"] for r in revisions] == [ref, bad, ref, bad]
    assert all(r["round"] == 1 and r["depth"] == 1 for r in revisions)
    # each rollout is the revision the reward scored
    roll = _rows(db, "SELECT node_id, correct FROM rollouts ORDER BY sample_index")
    assert [x["node_id"] for x in roll] == [r["node_id"] for r in revisions]
    # the revision's call is the conversation it continued, its prompt tokens all of it
    [call] = _rows(db, "SELECT messages, prompt_tokens, role FROM calls WHERE node_id = ?",
                   [revisions[0]["node_id"]])  # fmt: skip
    msgs = json.loads(call["messages"])
    assert call["role"] == "refiner" and call["prompt_tokens"] == 30 + 6 + 40
    assert msgs[-2] == {"role": "assistant", "content": f"The answer is {bad}."}
    assert msgs[-1]["content"] == revision_turn(t)
    graded = _rows(db, "SELECT count(*) AS n FROM verdicts WHERE run_id = ? AND stage = 'graded'",
                   [run_id])[0]["n"]  # fmt: skip
    assert graded == 8
    [step] = _rows(db, "SELECT metrics FROM train_steps")
    m = json.loads(step["metrics"])
    assert (m["turn1_correct_rate"], m["turn2_correct_rate"]) == (0.5, 0.5)
    assert (m["wrong_to_right"], m["right_to_wrong"]) == (0.25, 0.25)
    with TraceStore(db, read_only=True) as store:
        tm = turn_metrics(store, "ep-g00001")
    assert (tm["episodes"], tm["wrong_to_right"], tm["right_to_wrong"]) == (4, 1, 1)
    assert (tm["right_to_right"], tm["wrong_to_wrong"]) == (1, 1)
    assert tm["delta"]["mean"] == 0.0


# -- real: the chat template and a tiny series ---------------------------------------------------
@pytest.mark.local_model
def test_turn_tokens_are_the_chat_templates_second_turn() -> None:
    pytest.importorskip("trl", reason="needs the train extra: pip install 'loopwright[train]'")
    from loopwright.loops.improve.rollout_engine import _chat_ids
    from loopwright.loops.improve.train import load_model, resolve_base

    _, tok = load_model(resolve_base("local/smollm2-135m"), "cpu")
    task = Task(id="t", prompt=QUESTION, kind="math")
    prompt = draft_messages(task)
    draft = "Tom has 2 + 3 = 5 apples.\nThe answer is 5."
    want = _chat_ids(tok, revision_messages(task, draft))
    body = list(tok(draft, add_special_tokens=False)["input_ids"])
    turn = revision_turn(task)
    ended = _chat_ids(tok, prompt) + body + [tok.eos_token_id]
    assert ended + turn_ids(tok, prompt, turn, draft_ended=True) == want
    cut = _chat_ids(tok, prompt) + body  # a draft cut at the cap: the turn closes it
    assert cut + turn_ids(tok, prompt, turn, draft_ended=False) == want


@pytest.mark.slow
@pytest.mark.local_model
def test_a_tiny_two_turn_series_trains_episodes_and_evaluates_turns(tmp_path: Path) -> None:
    pytest.importorskip("trl", reason="needs the train extra: pip install 'loopwright[train]'")
    from loopwright.loops.analysis.report_improve import write_improve_report
    from loopwright.loops.improve import TrainConfig
    from loopwright.loops.improve.rounds import run_improve

    cfg = ImproveConfig(
        name="e", tasks="builtin:arithmetic?seed=1&n=6", eval_tasks="builtin:arithmetic?seed=5&n=2",
        method="grpo", eval_samples=1, drop_overlap=True, db=str(tmp_path / "t.duckdb"),
        concurrency=2, train=TrainConfig(lora_rank=4, learning_rate=1e-3, export="F32"),
        grpo=GrpoConfig(steps=1, generations=2, prompts_per_step=2, max_completion_tokens=24,
                        format_weight=1.0, rollout="self-refine"),
    )  # fmt: skip
    result = run_improve(cfg)
    assert result.failed is None, result.failed
    db = cfg.db
    roll = _rows(db, "SELECT r.*, n.role, n.parent_id FROM rollouts r JOIN nodes n "
                     "USING (node_id)")  # fmt: skip
    assert len(roll) == 4
    assert all(r["role"] == "refiner" and r["parent_id"] for r in roll)
    assert all(set(json.loads(r["rewards"])) == {"correct", "format", "improve"} for r in roll)
    parents = _rows(db, "SELECT count(*) AS n FROM nodes WHERE role = 'generator' AND node_id IN "
                        "(SELECT parent_id FROM nodes JOIN runs USING (run_id) "
                        "WHERE runs.loop = 'grpo')")[0]["n"]  # fmt: skip
    assert parents == 4
    [step] = _rows(db, "SELECT metrics FROM train_steps")
    m = json.loads(step["metrics"])
    assert "turn1_correct_rate" in m and "turn2_correct_rate" in m and "loss" in m
    # both the base model and the checkpoint ran the two-turn loop on the eval tasks
    for rnd in result.rounds:
        turns = rnd["metrics"]["turns"]
        assert turns["episodes"] == 2 and {"turn1", "turn2", "wrong_to_right"} <= set(turns)
    names = {r["name"] for r in _rows(db, "SELECT name FROM runs WHERE loop = 'two-turn'")}
    assert names == {"e-r0-turns", "e-r1-turns"}
    md = write_improve_report(db, "e", tmp_path / "rep").read_text()
    assert "Two-turn loop by checkpoint" in md and "two-turn episodes" in md
    assert (tmp_path / "rep" / "turns_vs_step.png").stat().st_size > 0
