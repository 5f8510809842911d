"""Sweeps and their reports: grid parsing, planning, running on the scripted model, and the
report's numbers checked against values worked out by hand from the script below.

The main sweep runs once per module: best-of-n at n=1,2,4 (one run at n=4, two derived points)
and self-refine at rounds=1,2 over four math tasks whose replies the script fixes per task.
Every request counts PROMPT prompt tokens; a reply's completion tokens are its word count.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from loop_testkit import cli_main, last_user, math_task, write_jsonl
from loopwright.loops.analysis.report import (
    curve_points,
    matched_table,
    sample_curves,
    write_report,
)
from loopwright.loops.analysis.report_data import SweepData, load_sweep
from loopwright.loops.errors import UserError
from loopwright.loops.execution.grid import GridEntry, parse_grid
from loopwright.loops.execution.sweep import (
    SweepConfig,
    SweepEvent,
    plan,
    run_sweep,
    validate,
)
from loopwright.loops.graphs.best_of_n import BestOfNOptions
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.traces.store import TraceStore

PROMPT = 10
"""Prompt tokens of every request (the scripted model's fixed count)."""

QUESTIONS = {
    "a": ("Ann has 2 pens and buys 3 more. How many pens does Ann have?", "5"),
    "b": ("Bob has 3 cups and buys 4 more. How many cups does Bob have?", "7"),
    "c": ("Cid has 4 hats and buys 5 more. How many hats does Cid have?", "9"),
    "d": ("Dee has 5 mugs and buys 6 more. How many mugs does Dee have?", "11"),
}


def _pad(words: int, answer: str) -> str:
    return "think " * words + answer


# Best-of-n samples per task, in order (each about 60 words, so sampling is the costly part).
# a: right only at sample 1; b: right at 0, 1, 3; c: right at 1, 2, 3; d: never right.
BON = {
    "a": [_pad(56, "The answer is 6."), _pad(60, "The answer is 5."),
          _pad(52, "The answer is 6."), _pad(58, "The answer is 6.")],
    "b": [_pad(57, "The answer is 7."), _pad(55, "The answer is 7."),
          _pad(61, "The answer is 3."), _pad(53, "The answer is 7.")],
    "c": [_pad(59, "The answer is 4."), _pad(54, "The answer is 9."),
          _pad(56, "The answer is 9."), _pad(62, "The answer is 9.")],
    "d": [_pad(58, "The answer is 1."), _pad(56, "I am not sure."),
          _pad(60, "The answer is 2."), _pad(50, "The answer is 3.")],
}  # fmt: skip
RIGHT = {
    "a": [False, True, False, False],
    "b": [True, True, False, True],
    "c": [False, True, True, True],
    "d": [False, False, False, False],
}

# Self-refine: a goes wrong -> right, b is right at once (verified: no revision), c stays
# wrong (4, 4, then 8), the critic is satisfied with d's wrong first draft.
DRAFT = {"a": "The answer is 6.", "b": "The answer is 7.", "c": "The answer is 4.",
         "d": "The answer is 1."}  # fmt: skip
CRITIQUE = {"a": "Step 2 is wrong.", "b": "Step 2 is wrong.", "c": "Step 2 is wrong.",
            "d": "NO ISSUES"}  # fmt: skip
REFINE = {
    "The answer is 6.": "The answer is 5.",
    "The answer is 4.": "I still get 4. The answer is 4.",
    "I still get 4. The answer is 4.": "The answer is 8.",
}


def _task_of(user: str) -> str:
    return next(t for t, (q, _) in QUESTIONS.items() if q in user)


class Script:
    """Replies by task: best-of-n requests (n > 1) get the task's BON samples in order;
    self-refine drafts, critiques and refinements come from DRAFT, CRITIQUE and REFINE."""

    def __init__(self) -> None:
        self.bon_calls: Counter[str] = Counter()

    def __call__(self, call: ModelCall) -> str:
        user = last_user(call.messages)
        tid = _task_of(user)
        if call.n > 1:
            k = self.bon_calls[tid]
            self.bon_calls[tid] += 1
            return BON[tid][k % 4]
        if call.params.role == "critic":
            return CRITIQUE[tid]
        if call.params.role == "refiner":
            previous = user.split("Previous answer:\n", 1)[1].split("\n\nFeedback:", 1)[0]
            return REFINE[previous.strip()]
        return DRAFT[tid]


def scripted_model(name: str) -> ScriptedModel:
    script = Script()
    model = ScriptedModel(script, name=name, prompt_tokens_per_call=PROMPT)
    model.register()
    return model


def task_file(folder: Path) -> str:
    rows = [math_task(t, q, r) for t, (q, r) in QUESTIONS.items()]
    return write_jsonl(folder / "tasks.jsonl", rows)


def words(text: str) -> int:
    return len(text.split())


def rows_of(db: str, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with TraceStore(db, read_only=True) as store:
        return store.query(sql, params or [])


# ============================================================================ grid parsing


def test_grid_parses_loops_params_and_aliases() -> None:
    entries = parse_grid("best-of-n:n=1,2,4; self-refine:rounds=1,2; reflexion:trials=1,2")
    assert entries == [
        GridEntry(loop="best-of-n", param="n", values=(1, 2, 4)),
        GridEntry(loop="self-refine", param="max_rounds", values=(1, 2)),
        GridEntry(loop="reflexion", param="max_trials", values=(1, 2)),
    ]
    assert [e.label for e in entries] == ["best-of-n", "self-refine", "reflexion"]
    assert [e.shared for e in entries] == [True, False, False]
    assert entries[1].options(2) == {"max_rounds": 2}


def test_grid_fixed_options_make_the_label() -> None:
    [e] = parse_grid(" best-of-n(selector=majority) : n=1,4 ")
    assert (e.loop, e.fixed, e.param, e.values) == ("best-of-n", {"selector": "majority"}, "n",
                                                    (1, 4))  # fmt: skip
    assert e.label == "best-of-n(selector=majority)"
    assert e.options(4) == {"selector": "majority", "n": 4}
    [e] = parse_grid("best-of-n(temperature=1.0,selector=weighted):n=2")
    assert e.fixed == {"temperature": 1.0, "selector": "weighted"}
    assert e.label == "best-of-n(selector=weighted,temperature=1.0)"  # sorted: stable names
    [e] = parse_grid("self-refine(rounds=2)")  # an alias in the fixed part; nothing swept
    assert (e.fixed, e.param, e.values, e.label) == ({"max_rounds": 2}, None, (),
                                                     "self-refine(max_rounds=2)")  # fmt: skip
    # rejection sampling cannot share samples between n values
    [e] = parse_grid("best-of-n(rejection=true):n=2,4")
    assert e.fixed == {"rejection": True} and not e.shared


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("best-of-m:n=1,2", "unknown loop 'best-of-m'"),
        ("best-of-n:k=1,2", "best-of-n has no option 'k'; its options: "
         + ", ".join(sorted(BestOfNOptions.model_fields))),
        ("best-of-n(judge=yes):n=2", "best-of-n has no option 'judge'"),
        ("best-of-n:n=0", "grid best-of-n n=0:"),
        ("best-of-n:n=2,300", "grid best-of-n n=300:"),
        ("best-of-n:n=1,2.5", "grid best-of-n n=2.5: Input should be a valid integer"),
        ("best-of-n:n=1,2.0", "n values must be whole numbers"),
        ("self-refine:rounds=1,x", "grid self-refine max_rounds='x'"),
        ("", "the grid is empty"),
        (" ; ;", "the grid is empty"),
        ("best-of-n:n=1,2; best-of-n:n=4", "names best-of-n twice"),
        ("best-of-n:n=1,2,2", "repeats n=2"),
        ("self-refine:rounds=1,1", "repeats max_rounds=1"),
        ("best-of-n:n", "cannot read grid entry 'best-of-n:n'"),
        ("best-of-n(n=2:n=4", "cannot read grid entry"),
        ("best-of-n(selector):n=2", "grid option 'selector' needs KEY=VALUE"),
        ("best-of-n:n=,", "gives n no values"),
    ],
)  # fmt: skip
def test_grid_errors_are_clear_user_errors(grid: str, message: str) -> None:
    with pytest.raises(UserError) as exc:
        parse_grid(grid)
    text = str(exc.value)
    assert message in text, text
    assert "\n" not in text


def test_grid_value_error_names_the_constraint() -> None:
    with pytest.raises(UserError, match=r"n=0: .*greater than or equal to 1"):
        parse_grid("best-of-n:n=1,0")


# ============================================================================ planning


def _cfg(grid: str, **kw: Any) -> SweepConfig:
    kw.setdefault("models", ("scripted/pm",))
    return SweepConfig(verifier="oracle", name="p", tasks="tasks.jsonl", grid=grid, **kw)


def test_plan_best_of_n_runs_once_per_seed_at_the_largest_n() -> None:
    cfg = _cfg("best-of-n:n=1,2,4", seeds=2)
    points = plan(cfg, parse_grid(cfg.grid))
    assert len(points) == 6
    runs = list(dict.fromkeys(p.run_name for p in points))
    assert runs == ["p.pm.best-of-n.n=4.s0", "p.pm.best-of-n.n=4.s1"]
    for seed, run in enumerate(runs):
        mine = [p for p in points if p.seed == seed]
        assert [(p.value, p.derived, p.run_name) for p in mine] == [
            (4, False, run), (2, True, run), (1, True, run)
        ]  # fmt: skip
        assert all(p.options == {"n": 4} for p in mine)  # the run's options, not the point's
        assert all((p.loop, p.strategy, p.param, p.model) == ("best-of-n", "best-of-n", "n",
                                                              "scripted/pm") for p in mine)  # fmt: skip
    assert len({p.point_id for p in points}) == 6


def test_plan_single_n_and_rejection_are_not_derived() -> None:
    cfg = _cfg("best-of-n:n=4; best-of-n(rejection=true):n=2,4")
    points = plan(cfg, parse_grid(cfg.grid))
    assert not any(p.derived for p in points)
    assert [p.run_name for p in points] == [
        "p.pm.best-of-n.n=4.s0",
        "p.pm.best-of-n(rejection=True).n=4.s0",
        "p.pm.best-of-n(rejection=True).n=2.s0",
    ]
    assert points[2].options == {"rejection": True, "n": 2}


def test_plan_other_values_run_separately_largest_first() -> None:
    cfg = _cfg("self-refine:rounds=1,2; reflexion:trials=2,1")
    points = plan(cfg, parse_grid(cfg.grid))
    assert [(p.run_name, p.options, p.derived) for p in points] == [
        ("p.pm.self-refine.max_rounds=2.s0", {"max_rounds": 2}, False),
        ("p.pm.self-refine.max_rounds=1.s0", {"max_rounds": 1}, False),
        ("p.pm.reflexion.max_trials=2.s0", {"max_trials": 2}, False),
        ("p.pm.reflexion.max_trials=1.s0", {"max_trials": 1}, False),
    ]


def test_plan_separate_runs_per_model() -> None:
    cfg = _cfg("best-of-n:n=1,4; self-refine:rounds=1", models=("scripted/x", "scripted/y"))
    points = plan(cfg, parse_grid(cfg.grid))
    runs = {(p.model, p.run_name) for p in points}
    assert runs == {
        ("scripted/x", "p.x.best-of-n.n=4.s0"), ("scripted/x", "p.x.self-refine.max_rounds=1.s0"),
        ("scripted/y", "p.y.best-of-n.n=4.s0"), ("scripted/y", "p.y.self-refine.max_rounds=1.s0"),
    }  # fmt: skip
    assert len({p.point_id for p in points}) == len(points) == 6


def test_plan_models_with_the_same_short_name_get_separate_runs() -> None:
    cfg = _cfg("best-of-n:n=1,2", models=("openai/gpt-4o", "azure/gpt-4o"))
    points = plan(cfg, parse_grid(cfg.grid))
    by_model: dict[str, set[str]] = {}
    for p in points:
        by_model.setdefault(p.model, set()).add(p.run_name)
    assert len(by_model["openai/gpt-4o"]) == len(by_model["azure/gpt-4o"]) == 1
    assert by_model["openai/gpt-4o"].isdisjoint(by_model["azure/gpt-4o"])


# ============================================================================ the main sweep

GRID = "best-of-n:n=1,2,4; self-refine:rounds=1,2"
BON_RUN = "main.sweepmain.best-of-n.n=4.s0"
SR2_RUN = "main.sweepmain.self-refine.max_rounds=2.s0"
SR1_RUN = "main.sweepmain.self-refine.max_rounds=1.s0"


class Swept:
    def __init__(self, cfg: SweepConfig, model: ScriptedModel, events: list[SweepEvent],
                 out: Path, report: Path) -> None:  # fmt: skip
        self.cfg = cfg
        self.model = model
        self.events = events
        self.out = out
        self.report = report

    @property
    def db(self) -> str:
        return self.cfg.db

    def data(self) -> SweepData:
        return load_sweep(self.db, self.cfg.name)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Swept:
    folder = tmp_path_factory.mktemp("sweep")
    model = scripted_model("sweepmain")
    cfg = SweepConfig(verifier="oracle", name="main", tasks=task_file(folder), models=(model.name,),
                      grid=GRID, db=str(folder / "t.duckdb"), sandbox="process")  # fmt: skip
    events: list[SweepEvent] = []
    run_sweep(cfg, events.append)
    out = folder / "report"
    report = write_report(cfg.db, cfg.name, out, n_boot=200)
    return Swept(cfg, model, events, out, report)


def test_run_writes_the_sweep_its_points_and_the_planned_runs(swept: Swept) -> None:
    [sw] = rows_of(swept.db, "SELECT * FROM sweeps")
    assert (sw["name"], sw["grid"], sw["status"]) == ("main", GRID, "done")
    assert sw["config_hash"] == swept.cfg.config_hash()
    assert sw["finished_at"] is not None
    pts = rows_of(swept.db, "SELECT * FROM sweep_points ORDER BY strategy, value")
    assert [(p["strategy"], p["param"], p["value"], p["derived"], p["run_name"], p["status"])
            for p in pts] == [
        ("best-of-n", "n", 1.0, True, BON_RUN, "done"),
        ("best-of-n", "n", 2.0, True, BON_RUN, "done"),
        ("best-of-n", "n", 4.0, False, BON_RUN, "done"),
        ("self-refine", "max_rounds", 1.0, False, SR1_RUN, "done"),
        ("self-refine", "max_rounds", 2.0, False, SR2_RUN, "done"),
    ]  # fmt: skip
    assert all(p["sweep_id"] == sw["sweep_id"] and p["error"] is None for p in pts)
    runs = rows_of(swept.db, "SELECT name, loop, status FROM runs ORDER BY started_at")
    assert [(r["name"], r["loop"], r["status"]) for r in runs] == [
        (BON_RUN, "best-of-n", "done"), (SR2_RUN, "self-refine", "done"),
        (SR1_RUN, "self-refine", "done"),
    ]  # fmt: skip
    assert [(e.kind, e.run_name) for e in swept.events] == [
        (kind, run) for run in (BON_RUN, SR2_RUN, SR1_RUN) for kind in ("start", "grade", "done")
    ]
    assert {e.total for e in swept.events} == {3}


def test_every_answer_node_gets_one_graded_verdict(swept: Swept) -> None:
    nodes = rows_of(
        swept.db,
        "SELECT n.node_id, n.task_id, n.answer, r.name FROM nodes n JOIN runs r USING (run_id) "
        "WHERE n.role IN ('generator', 'refiner')",
    )
    assert len(nodes) == 16 + 7 + 6  # 4x4 samples; self-refine drafts: 2+1+3+1 and 2+1+2+1
    graded = rows_of(swept.db, "SELECT node_id, passed FROM verdicts WHERE stage = 'graded'")
    by_node = Counter(v["node_id"] for v in graded)
    verdict = {v["node_id"]: v["passed"] for v in graded}
    for n in nodes:
        assert by_node[n["node_id"]] == 1, n
        assert verdict[n["node_id"]] is (n["answer"] == QUESTIONS[n["task_id"]][1]), n


def test_smaller_values_reuse_the_larger_runs_calls(swept: Swept) -> None:
    # 16 best-of-n samples plus the 11 calls of self-refine at 2 rounds; the 1-round run is
    # served from the call cache.
    assert len(swept.model.calls) == 16 + 11
    calls = rows_of(swept.db, "SELECT r.name, c.cache_hit FROM calls c JOIN runs r USING (run_id)")
    assert Counter(c["name"] for c in calls) == {BON_RUN: 16, SR2_RUN: 11, SR1_RUN: 9}
    assert all(c["cache_hit"] for c in calls if c["name"] == SR1_RUN)
    assert not any(c["cache_hit"] for c in calls if c["name"] != SR1_RUN)


# ============================================================================ report numbers


def _point(data: SweepData, strategy: str, value: float) -> Any:
    [p] = [p for p in data.points if p.strategy == strategy and p.value == value]
    return p


def _bon_prompt_tokens(db: str) -> dict[str, int]:
    """Per task: the prompt tokens of the best-of-n request, read from its calls."""
    calls = rows_of(
        db,
        "SELECT c.task_id, c.request_id, c.sample_index, c.prompt_tokens, c.completion_tokens,"
        " c.output FROM calls c JOIN runs r USING (run_id) WHERE r.name = ?",
        [BON_RUN],
    )
    out: dict[str, int] = {}
    for tid in QUESTIONS:
        mine = sorted((c for c in calls if c["task_id"] == tid), key=lambda c: c["sample_index"])
        assert len({c["request_id"] for c in mine}) == 1  # one request of n=4
        assert [c["output"] for c in mine] == BON[tid]
        assert [c["completion_tokens"] for c in mine] == [words(s) for s in BON[tid]]
        assert [c["prompt_tokens"] for c in mine[1:]] == [0, 0, 0]  # charged once per request
        out[tid] = int(mine[0]["prompt_tokens"])
    return out


@pytest.mark.parametrize("k", [1, 2, 4])
def test_best_of_n_point_at_k_reads_the_first_k_samples(swept: Swept, k: int) -> None:
    prompt = _bon_prompt_tokens(swept.db)
    assert prompt == dict.fromkeys(QUESTIONS, PROMPT)
    data = swept.data()
    point = _point(data, "best-of-n [oracle]", k)
    assert point.derived is (k < 4)
    assert point.run_names == [BON_RUN]
    got = {r.task_id: r for r in point.results}
    assert sorted(got) == sorted(QUESTIONS)
    for tid, r in got.items():
        # the verifier pick over the first k: right iff any of them is right
        assert r.correct is any(RIGHT[tid][:k]), (tid, k)
        assert r.tokens == prompt[tid] + sum(words(s) for s in BON[tid][:k])
        assert r.calls == k
        assert r.usd == 0.0 and r.seed == 0
    by_hand = {1: 0.25, 2: 0.75, 4: 0.75}[k]
    [row] = [row for row in curve_points(data, 50) if row["point"] is point]
    assert row["acc"] == pytest.approx(by_hand)
    assert row["calls"] == k
    assert row["tokens"] == pytest.approx(
        sum(PROMPT + sum(words(s) for s in BON[t][:k]) for t in QUESTIONS) / 4
    )
    assert row["value"] == f"n={k}" and row["n"] == 4


def test_self_refine_points_come_from_their_own_runs(swept: Swept) -> None:
    data = swept.data()
    one, two = _point(data, "self-refine [oracle]", 1), _point(data, "self-refine [oracle]", 2)
    assert one.run_names == [SR1_RUN] and two.run_names == [SR2_RUN]
    # by hand: a wrong -> right, b right at once, c wrong, d wrong (the critic was satisfied)
    for p in (one, two):
        assert {r.task_id: r.correct for r in p.results} == {
            "a": True, "b": True, "c": False, "d": False
        }  # fmt: skip
    # tokens: PROMPT per call plus the reply's words; calls: samples per task
    assert {r.task_id: (r.tokens, r.calls) for r in one.results} == {
        "a": (42, 3), "b": (14, 1), "c": (46, 3), "d": (26, 2)
    }  # fmt: skip
    assert {r.task_id: (r.tokens, r.calls) for r in two.results} == {
        "a": (42, 3), "b": (14, 1), "c": (74, 5), "d": (26, 2)
    }  # fmt: skip
    # the cached 1-round run is not free in model time either
    assert all(r.wall > 0 for r in one.results)


def test_sample_curves_majority_and_unbiased_pass_at_k(swept: Swept) -> None:
    curves = sample_curves(swept.data())
    assert list(curves) == ["best-of-n [oracle]"]
    per_k = curves["best-of-n [oracle]"]
    assert sorted(per_k) == [1, 2, 4]
    # pass@k = mean over tasks of 1 - C(n-c, k) / C(n, k), n = 4; c = 1, 3, 3, 0
    assert per_k[1]["pass@k"] == pytest.approx((1 / 4 + 3 / 4 + 3 / 4 + 0) / 4)  # 7/16
    assert per_k[2]["pass@k"] == pytest.approx((1 / 2 + 1 + 1 + 0) / 4)  # a: 1 - 3/6
    assert per_k[4]["pass@k"] == pytest.approx(3 / 4)
    # maj@k over the first k (ties to the earliest answer): a 6,6,6 | b 7,7,7 | c 4,4,9 | d 1,1,1
    assert per_k[1]["maj@k"] == pytest.approx(1 / 4)
    assert per_k[2]["maj@k"] == pytest.approx(1 / 4)
    assert per_k[4]["maj@k"] == pytest.approx(2 / 4)
    # the verifier picks a right sample whenever one is among the first k
    assert [per_k[k]["verifier@k"] for k in (1, 2, 4)] == pytest.approx([1 / 4, 3 / 4, 3 / 4])
    # no logprobs: the weighted vote is the plain vote
    assert [per_k[k]["weighted@k"] for k in (1, 2, 4)] == pytest.approx([1 / 4, 1 / 4, 2 / 4])


def test_matched_table_winners_by_budget(swept: Swept) -> None:
    rows = curve_points(swept.data(), 200)
    bon = {k: PROMPT + sum(sum(words(s) for s in BON[t][:k]) for t in QUESTIONS) / 4
           for k in (1, 2, 4)}  # fmt: skip
    sr1, sr2 = (42 + 14 + 46 + 26) / 4, (42 + 14 + 74 + 26) / 4  # 32 and 39
    assert sr1 < sr2 < bon[1] < bon[2] < bon[4]
    matched = matched_table(rows)
    assert [m.budget for m in matched] == [round(x) for x in (sr1, sr2, bon[1], bon[2], bon[4])]
    by_budget = {m.budget: m for m in matched}
    # cheapest budget: only self-refine fits
    m = by_budget[round(sr1)]
    assert (m.winner, m.runner_up, m.margin, m.best["best-of-n [oracle]"]) == ("self-refine [oracle]", None, None,
                                                                      None)  # fmt: skip
    # at best-of-n's single sample: self-refine (50 %) beats best-of-n n=1 (25 %)
    m = by_budget[round(bon[1])]
    assert (m.winner, m.runner_up) == ("self-refine [oracle]", "best-of-n [oracle]")
    assert m.margin == pytest.approx(0.25)
    assert (
        m.best["self-refine [oracle]"] is not None
        and m.best["self-refine [oracle]"].label == "max_rounds=1"
    )
    # from two samples on best-of-n wins (75 % against 50 %), at its cheaper point
    for budget in (round(bon[2]), round(bon[4])):
        m = by_budget[budget]
        assert (m.winner, m.runner_up) == ("best-of-n [oracle]", "self-refine [oracle]")
        assert m.margin == pytest.approx(0.25)
        assert (
            m.best["best-of-n [oracle]"] is not None and m.best["best-of-n [oracle]"].label == "n=2"
        )


def test_report_markdown_and_plots(swept: Swept) -> None:
    assert swept.report == swept.out / "report.md"
    md = swept.report.read_text(encoding="utf-8")
    assert md.startswith("# Sweep `main`")
    assert f"grid: `{GRID}`" in md
    # revision transitions, self-refine at 2 rounds: turn 0 -> 1 over a (6 -> 5) and c (4 -> 4),
    # turn 1 -> 2 over c (4 -> 8); b (verified at once) and d (stopped) have no second turn
    assert "| self-refine [oracle] | 0→1 | 1 | 0 | 0 | 1 | 50.0 % |" in md
    assert "| self-refine [oracle] | 1→2 | 0 | 0 | 0 | 1 | 100.0 % |" in md
    assert "| best-of-n [oracle] | n=1 (shared) | 25.0 % |" in md
    assert "| best-of-n [oracle] | n=2 (shared) | 75.0 % |" in md
    assert "| best-of-n [oracle] | n=4 | 75.0 % |" in md
    assert "| self-refine [oracle] | max_rounds=2 | 50.0 % |" in md
    assert "| 4 | 75.0 % | 50.0 % | 50.0 % | 75.0 % |" in md  # k, pass, maj, weighted, verifier
    pngs = {p.name for p in swept.out.glob("*.png")}
    assert {"accuracy_vs_tokens.png", "accuracy_vs_calls.png", "samples_at_k.png",
            "overoptimisation.png", "transitions.png"} <= pngs  # fmt: skip
    assert "accuracy_vs_usd.png" not in pngs  # the scripted model is free
    for name in pngs:
        blob = (swept.out / name).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 1000, name
        if name.startswith("accuracy_vs") or name in ("samples_at_k.png", "transitions.png"):
            assert f"]({name})" in md, name


def test_transitions_of_the_report_data(swept: Swept) -> None:
    chains = swept.data().chains
    assert chains == {
        ("scripted/sweepmain", "self-refine [oracle]", 0, "a"): [(False, "6"), (True, "5")],
        ("scripted/sweepmain", "self-refine [oracle]", 0, "b"): [(True, "7")],
        ("scripted/sweepmain", "self-refine [oracle]", 0, "c"): [(False, "4"), (False, "4"),
                                                        (False, "8")],
        ("scripted/sweepmain", "self-refine [oracle]", 0, "d"): [(False, "1")],
    }  # fmt: skip


# ============================================================================ re-running


def test_rerun_resumes_grading_then_runs_nothing(tmp_path: Path) -> None:
    model = scripted_model("sweeprerun")
    cfg = SweepConfig(verifier="oracle", name="re", tasks=task_file(tmp_path), models=(model.name,),
                      grid="best-of-n:n=2,4", db=str(tmp_path / "t.duckdb"), sandbox="process",
                      grade=False)  # fmt: skip
    run_sweep(cfg)
    answers = "SELECT count(*) AS n FROM nodes WHERE role = 'generator'"
    graded = "SELECT count(*) AS n FROM verdicts WHERE stage = 'graded'"
    n_calls = "SELECT count(*) AS n FROM calls"
    assert rows_of(cfg.db, answers)[0]["n"] == 16
    assert rows_of(cfg.db, graded)[0]["n"] == 4  # the runner grades finals only
    assert len(model.calls) == 16
    # grading is not part of the sweep's identity: the same sweep, now graded, nothing sampled
    events: list[SweepEvent] = []
    run_sweep(cfg.model_copy(update={"grade": True}), events.append)
    assert [e.kind for e in events] == ["grade", "done"]
    assert rows_of(cfg.db, graded)[0]["n"] == 16
    assert len(model.calls) == 16 and rows_of(cfg.db, n_calls)[0]["n"] == 16
    # done and graded: skipped
    events.clear()
    run_sweep(cfg.model_copy(update={"grade": True}), events.append)
    assert [(e.kind, e.detail) for e in events] == [("skip", "already done")]
    assert len(model.calls) == 16 and rows_of(cfg.db, n_calls)[0]["n"] == 16
    assert rows_of(cfg.db, "SELECT count(*) AS n FROM sweeps")[0]["n"] == 1
    assert rows_of(cfg.db, "SELECT count(*) AS n FROM runs")[0]["n"] == 1
    # the same name with other tasks or shared settings is refused before anything runs (other
    # points grow the sweep: tests/test_config_file.py)
    for update in ({"limit": 1}, {"verifier": "none"}):
        with pytest.raises(UserError, match=r"sweep 're' already exists in .* pick another --name"):
            run_sweep(cfg.model_copy(update=update))
    assert len(model.calls) == 16 and rows_of(cfg.db, n_calls)[0]["n"] == 16


def test_rejection_best_of_n_points_count_every_task(tmp_path: Path) -> None:
    """Rejection sampling stops at the first verified sample: a task right at once drew one
    sample, and must still count (as right) at n=2."""
    model = scripted_model("sweepreject")
    cfg = SweepConfig(verifier="oracle", name="rej", tasks=task_file(tmp_path), models=(model.name,),
                      grid="best-of-n(rejection=true):n=2", db=str(tmp_path / "t.duckdb"),
                      sandbox="process")  # fmt: skip
    # rejection draws one sample per request (n=1): the script then answers as self-refine's
    # drafter, right at once only for b
    run_sweep(cfg)
    [point] = load_sweep(cfg.db, "rej").points
    assert {r.task_id: r.correct for r in point.results} == {
        "a": False, "b": True, "c": False, "d": False
    }  # fmt: skip
    assert {r.task_id: r.calls for r in point.results} == {"a": 2, "b": 1, "c": 2, "d": 2}


def test_string_valued_params_stay_separate_points(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = scripted_model("sweepselect")
    grid = "best-of-n(n=4):selector=majority,verifier"
    code, out, err = cli_main(["sweep", "--verifier", "oracle", "--tasks", task_file(tmp_path), "--grid", grid, "--model",
                            model.name, "--name", "sel", "--db", str(tmp_path / "t.duckdb"),
                            "--sandbox", "process"], capsys)  # fmt: skip
    assert code == 0, err
    assert "selector=majority" in out and "selector=verifier" in out, out
    points = load_sweep(str(tmp_path / "t.duckdb"), "sel").points
    acc = {p.value: sum(r.correct for r in p.results) / len(p.results) for p in points}
    # verifier: any right sample (a, b, c); majority over all four: b (7) and c (9)
    assert acc == {"verifier": 0.75, "majority": 0.5}
    rows = curve_points(load_sweep(str(tmp_path / "t.duckdb"), "sel"), 50)
    assert sorted(r["value"] for r in rows) == ["selector=majority", "selector=verifier"]


# ============================================================================ CLI


def test_cli_sweep_then_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = scripted_model("sweepcli")
    db = str(tmp_path / "t.duckdb")
    args = ["sweep", "--verifier", "oracle", "--tasks", task_file(tmp_path), "--grid", "best-of-n:n=1,2,4",
            "--model", model.name, "--name", "cli", "--db", db, "--sandbox", "process"]  # fmt: skip
    code, out, err = cli_main(args, capsys)
    assert code == 0, err
    assert "sweep cli: 3 points (2 read from shared samples) in 1 runs" in out
    assert "[1/1] cli.sweepcli.best-of-n.n=4.s0 done" in err
    assert "n=4" in out and "75%" in out and "shared" in out
    assert f"loopwright report --db {db} --sweep cli --out report-cli" in out
    assert len(model.calls) == 16
    # again: nothing to do
    code, out, err = cli_main(args, capsys)
    assert code == 0 and "already done" in err and len(model.calls) == 16

    code, out, err = cli_main(["report", "--sweep", "cli", "--db", db, "--out",
                            str(tmp_path / "rep"), "--n-boot", "100"], capsys)  # fmt: skip
    assert code == 0, err
    assert f"report: {tmp_path / 'rep' / 'report.md'}" in out.replace("\n", "")
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert "| best-of-n [oracle] | n=2 (shared) | 75.0 % |" in md
    assert (tmp_path / "rep" / "samples_at_k.png").read_bytes()[:4] == b"\x89PNG"


def _one_error_line(code: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


def test_cli_report_unknown_sweep_lists_known(
    swept: Swept, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli_main(["report", "--sweep", "nope", "--db", swept.db, "--out",
                          str(tmp_path / "rep")], capsys)  # fmt: skip
    line = _one_error_line(code, err)
    assert "no sweep named 'nope'" in line and "sweeps: main" in line
    assert not (tmp_path / "rep").exists()


def test_cli_report_on_a_db_without_sweeps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.duckdb"
    TraceStore(empty).close()
    code, _, err = cli_main(["report", "--sweep", "x", "--db", str(empty), "--out",
                          str(tmp_path / "rep")], capsys)  # fmt: skip
    line = _one_error_line(code, err)
    assert "no sweep named 'x'" in line and "sweeps: none" in line
    # a database from before sweeps existed (no sweeps table)
    old = tmp_path / "old.duckdb"
    with TraceStore(old) as store:
        store.execute("DROP TABLE sweep_points")
        store.execute("DROP TABLE sweeps")
    code, _, err = cli_main(["report", "--sweep", "x", "--db", str(old), "--out",
                          str(tmp_path / "rep")], capsys)  # fmt: skip
    line = _one_error_line(code, err)
    assert "has no sweeps: run `loopwright sweep` first" in line
    code, _, err = cli_main(["report", "--sweep", "x", "--db", str(tmp_path / "missing.duckdb"),
                          "--out", str(tmp_path / "rep")], capsys)  # fmt: skip
    assert "no trace database at" in _one_error_line(code, err)
    assert not (tmp_path / "rep").exists() and not (tmp_path / "missing.duckdb").exists()


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("best-of-n:n=0", "grid best-of-n n=0:"),
        ("best-of-m:n=1", "unknown loop 'best-of-m'"),
        ("best-of-n:k=1", "best-of-n has no option 'k'"),
        ("best-of-n:n=1; best-of-n:n=2", "names best-of-n twice"),
        ("nonsense!", "cannot read grid entry"),
        (";", "the grid is empty"),
    ],
)
def test_cli_sweep_bad_grid_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], grid: str, message: str
) -> None:
    model = scripted_model("sweepbad")
    db = tmp_path / "t.duckdb"
    code, _, err = cli_main(["sweep", "--verifier", "oracle", "--tasks", task_file(tmp_path), "--grid", grid, "--model",
                          model.name, "--db", str(db), "--sandbox", "process"], capsys)  # fmt: skip
    assert message in _one_error_line(code, err)
    assert not model.calls and not db.exists()


def test_cli_sweep_bad_settings_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli_main(["sweep", "--verifier", "oracle", "--tasks", task_file(tmp_path), "--grid", "best-of-n:n=1",
                          "--name", "bad name", "--db", str(tmp_path / "t.duckdb")], capsys)  # fmt: skip
    assert "--name" in _one_error_line(code, err)
    code, _, err = cli_main(["sweep", "--verifier", "oracle", "--tasks", task_file(tmp_path), "--grid", "best-of-n:n=1",
                          "--seeds", "0", "--db", str(tmp_path / "t.duckdb")], capsys)  # fmt: skip
    assert "--seeds" in _one_error_line(code, err)


def test_a_model_given_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="model 'scripted/x' is given twice"):
        _cfg("best-of-n:n=1,2", models=("scripted/x", "scripted/y", "scripted/x"))
    code, _, err = cli_main(["sweep", "--verifier", "oracle", "--tasks", task_file(tmp_path), "--grid", "best-of-n:n=1",
                          "--model", "scripted/x", "--model", "scripted/x",
                          "--db", str(tmp_path / "t.duckdb")], capsys)  # fmt: skip
    assert "is given twice" in _one_error_line(code, err)
    assert not (tmp_path / "t.duckdb").exists()


def test_validate_checks_every_loop_and_model_before_running(tmp_path: Path) -> None:
    cfg = SweepConfig(verifier="oracle", name="v", tasks=task_file(tmp_path), models=("scripted/not-registered",),
                      grid="best-of-n:n=1,2", db=str(tmp_path / "t.duckdb"), sandbox="process")  # fmt: skip
    with pytest.raises(UserError, match="not-registered"):
        validate(cfg)
    with pytest.raises(UserError, match="not-registered"):
        run_sweep(cfg)
    assert not (tmp_path / "t.duckdb").exists()


def test_config_json_round_trips(swept: Swept) -> None:
    [sw] = rows_of(swept.db, "SELECT config FROM sweeps")
    assert SweepConfig.model_validate(json.loads(sw["config"])) == swept.cfg


def test_unfinished_points_are_left_out_and_named(swept: Swept, tmp_path: Path) -> None:
    import shutil

    import duckdb

    db = str(tmp_path / "copy.duckdb")
    shutil.copy(swept.db, db)
    con = duckdb.connect(db)
    [(run_name,)] = con.execute(
        "SELECT run_name FROM sweep_points WHERE loop = 'self-refine' ORDER BY value LIMIT 1"
    ).fetchall()
    con.execute("UPDATE sweep_points SET status = 'running' WHERE run_name = ?", [run_name])
    con.close()
    data = load_sweep(db, swept.cfg.name)
    assert data.unfinished == [run_name]
    assert all(run_name not in p.run_names for p in data.points)
    text = write_report(db, swept.cfg.name, tmp_path / "rep", n_boot=50).read_text()
    assert "Not finished yet" in text and run_name in text


def test_a_point_whose_tasks_failed_is_failed_and_retried(tmp_path: Path) -> None:
    from loopwright.loops.models.scripted import Fault

    broken = {"on": True}

    def reply(call: ModelCall) -> Any:
        return Fault("bad_request") if broken["on"] else "The answer is 3."

    model = ScriptedModel(reply)
    cfg = SweepConfig(verifier="oracle", name="flaky", tasks=task_file(tmp_path), models=(model.register(),),
                      grid="best-of-n:n=1,2", db=str(tmp_path / "f.duckdb"),
                      sandbox="process")  # fmt: skip
    events: list[SweepEvent] = []
    run_sweep(cfg, events.append)
    assert [e.kind for e in events if e.kind in ("done", "failed")] == ["failed"]
    assert "task(s) failed" in events[-1].detail
    statuses = {r["status"] for r in rows_of(cfg.db, "SELECT status FROM sweep_points")}
    assert statuses == {"failed"}
    broken["on"] = False
    events.clear()
    run_sweep(cfg, events.append)  # the failed tasks are redone
    assert [e.kind for e in events if e.kind in ("done", "failed", "skip")] == ["done"]
    assert {r["status"] for r in rows_of(cfg.db, "SELECT status FROM sweep_points")} == {"done"}


def test_majority_is_its_own_strategy_at_the_same_costs(swept: Swept) -> None:
    from loopwright.loops.analysis.report import curve_points, sample_curves, vote_points

    data = swept.data()
    rows = curve_points(data, 50)
    votes = vote_points(data, rows, 50)
    curves = sample_curves(data)
    [label] = curves
    assert {r["label"] for r in votes} == {f"{label} majority"}
    for v in votes:
        k = int(float(v["point"].value))
        base = next(r for r in rows if r["point"] is v["point"])
        assert v["acc"] == pytest.approx(curves[label][k]["maj@k"])
        assert (v["tokens"], v["calls"]) == (base["tokens"], base["calls"])


def test_compute_matched_winner_cell_names_ties() -> None:
    from loopwright.loops.analysis.report import _winner_cell
    from loopwright.traces.metrics import CurvePoint, MatchedRow

    a = CurvePoint("reflexion", cost=221, accuracy=0.15)
    b = CurvePoint("best-of-n", cost=244, accuracy=0.15)
    same = CurvePoint("best-of-n majority", cost=244, accuracy=0.15)

    def row(best: dict[str, CurvePoint], winner: str, runner: str, margin: float) -> MatchedRow:
        return MatchedRow(250, dict(best), winner, runner, margin, False)

    assert _winner_cell(row({"r": a, "b": b}, "r", "b", 0.0)) == "tie (r cheaper)"
    assert _winner_cell(row({"b": b, "m": same}, "b", "m", 0.0)) == "tie"
    assert _winner_cell(row({"b": b, "r": a}, "b", "r", 0.1)) == "b"
    assert _winner_cell(MatchedRow(250, {"r": a}, "r", None, None, None)) == "r"


def test_every_run_of_a_sweep_gets_its_endpoint_and_transport() -> None:
    from loopwright.loops.execution.sweep import run_config

    cfg = _cfg("best-of-n:n=1,2; self-refine:rounds=1", api_base="http://127.0.0.1:9/v1",
               transport="litellm")  # fmt: skip
    runs = [run_config(cfg, p) for p in plan(cfg, parse_grid(cfg.grid))]
    assert {(r.connection.api_base, r.connection.transport) for r in runs} == {
        ("http://127.0.0.1:9/v1", "litellm")
    }
    plain = _cfg("best-of-n:n=1,2; self-refine:rounds=1", api_base="http://127.0.0.1:9/v1")
    assert plain.config_hash() == cfg.config_hash()  # a sweep resumes over either transport
