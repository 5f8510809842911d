"""The public face: loops as decorated functions or graphs over one typed context, run through
the runner and traced, with budget stops, options and outcomes that need no extra code."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypedDict

import loopwright.loops as face
import pytest
from loop_testkit import (
    QUESTION,
    LoopRunner,
    Rows,
    cli_main,
    finals,
    local_model,
    math_task,
    read_rows,
    write_jsonl,
)
from loopwright.loops import (
    Budget,
    BudgetLimits,
    Candidate,
    Context,
    LoopOutcome,
    ModelCall,
    ModelClient,
    ScriptedModel,
    Task,
    UserError,
    loop,
    register_loop,
    run_loop,
)
from loopwright.loops.options import NoOptions
from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "best_of_3_even.py"


def by_role(**replies: str | Sequence[str]) -> ScriptedModel:
    """A model answering each role from its own list (the k-th call of a role gets item k, the
    last item every call after), reading the role off the call -- never the prompt."""
    seen: Counter[str] = Counter()

    def reply(call: ModelCall) -> str:
        role = str(call.params.role)
        k = seen[role]
        seen[role] += 1
        r = replies[role]
        return r if isinstance(r, str) else r[min(k, len(r) - 1)]

    return ScriptedModel(reply)


def coins_task(tmp_path: Path) -> str:
    """QUESTION-like task whose answer is 6."""
    prompt = "Ana has 3 bags with 2 coins in each bag. How many coins are there in total?"
    return write_jsonl(tmp_path / "tasks.jsonl", [math_task(prompt=prompt, reference="6")])


def by_id(rows: Rows) -> dict[str, dict[str, Any]]:
    return {n["node_id"]: n for n in rows["nodes"]}


# -- a loop as a function ------------------------------------------------------------------------


@loop
async def face_refine(ctx: Context) -> Candidate | None:
    """Three drafts, verified; the best critiqued and refined until it passes (2 rounds)."""
    best = ctx.best(await ctx.verify(await ctx.draft(n=3)))
    for _ in range(2):
        if best is None or best["passed"]:
            break
        note = await ctx.critique(best)
        best = await ctx.verify(await ctx.refine(best, feedback=note))
    return best


run_refine = LoopRunner("face-refine")


def refine_model() -> ScriptedModel:
    return by_role(
        generator=["So 5. The answer is 5.", "The answer is 7.", "The answer is 8."],
        critic="Count the coins again: 3 bags of 2.",
        refiner=["The answer is 9.", "3 * 2 = 6. The answer is 6."],
    )


async def test_function_loop_records_roles_rounds_parents_and_depths(tmp_path: Path) -> None:
    model = refine_model()
    _, rows = await run_refine(tmp_path, model, coins_task(tmp_path))

    [task] = rows["tasks"]
    assert task["status"] == "done" and task["stop_reason"] == "verified"
    assert task["final_answer"] == "6" and task["graded"] is True and task["rounds"] == 2
    nodes = by_id(rows)
    drafts = [n for n in rows["nodes"] if n["role"] == "generator"]
    assert len(drafts) == 3
    assert all((d["parent_id"], d["depth"], d["round"]) == (None, 0, 0) for d in drafts)
    refined = sorted((n for n in rows["nodes"] if n["role"] == "refiner"), key=lambda n: n["round"])
    critiques = sorted(
        (n for n in rows["nodes"] if n["role"] == "critic"), key=lambda n: n["round"]
    )
    assert [(r["round"], r["depth"]) for r in refined] == [(1, 1), (2, 2)]
    assert [(c["round"], c["depth"]) for c in critiques] == [(0, 1), (1, 2)]
    # the first revision revises a draft (the best failing one: the latest), the second the first
    first, second = refined
    assert nodes[first["parent_id"]]["role"] == "generator"
    assert nodes[first["parent_id"]]["content"] == "The answer is 8."
    assert second["parent_id"] == first["node_id"]
    # each critique is about the attempt that is revised next
    assert [c["parent_id"] for c in critiques] == [first["parent_id"], first["node_id"]]
    [final] = finals(rows)
    assert final["node_id"] == second["node_id"] and final["answer"] == "6"
    # the refine prompt carries the critique; the three drafts were one request
    refine_prompts = [c.messages[-1]["content"] for c in model.calls if c.params.role == "refiner"]
    assert all("Count the coins again" in p for p in refine_prompts)
    assert len({c["request_id"] for c in rows["calls"] if c["role"] == "generator"}) == 1
    in_loop = [v for v in rows["verdicts"] if v["stage"] == "in_loop"]
    assert len(in_loop) == 5 and sum(v["passed"] for v in in_loop) == 1


async def test_budget_stop_without_a_decorator_answers_with_the_best_so_far(
    tmp_path: Path,
) -> None:
    # 3 drafts + 1 critique spend the 4 calls; the refinement finds the budget spent
    _, rows = await run_refine(
        tmp_path, refine_model(), coins_task(tmp_path), budget=BudgetLimits(calls=4)
    )
    [task] = rows["tasks"]
    assert task["status"] == "done" and task["error"] is None
    assert task["stop_reason"].startswith("budget:") and task["calls"] == 4
    assert Counter(n["role"] for n in rows["nodes"]) == {"generator": 3, "critic": 1}
    [final] = finals(rows)
    assert final["role"] == "generator" and task["final_answer"] == final["answer"]
    assert task["graded"] is False


class Fan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    n: int = Field(2, ge=1, description="Drafts to vote over.")


seen_options: list[Fan] = []


@loop(options=Fan)
async def face_fan(ctx: Context[Fan]) -> Candidate | None:
    """Vote over n drafts."""
    seen_options.append(ctx.options)
    return ctx.vote(await ctx.draft(n=ctx.options.n))


async def test_options_reach_the_function_typed_and_are_validated(tmp_path: Path) -> None:
    model = by_role(generator=["The answer is 7.", "It is 6.", "The answer is 6.", "6? No, 5."])
    _, rows = await LoopRunner("face-fan")(
        tmp_path, model, coins_task(tmp_path), options={"n": 4}, verifier="none"
    )
    assert seen_options == [Fan(n=4)]
    [task] = rows["tasks"]
    drafts = [n for n in rows["nodes"] if n["role"] == "generator"]
    assert len(drafts) == 4 and task["final_answer"] == "6" and task["stop_reason"] == "done"
    [final] = finals(rows)
    assert final["content"] == "It is 6."  # the first holder of the majority answer

    with pytest.raises(UserError, match="nn"):
        await LoopRunner("face-fan")(tmp_path, model, coins_task(tmp_path), options={"nn": 1})


@loop(name="face-outcome")
async def gives_outcome(ctx: Context) -> LoopOutcome:
    """Returns a whole outcome of its own."""
    [draft] = await ctx.draft()
    return LoopOutcome(
        final_node_id=draft["node_id"], final_text=draft["text"], answer=draft["answer"],
        stop_reason="my own reason", rounds=7,
    )  # fmt: skip


@loop(name="face-bad-return")
async def bad_return(ctx: Context) -> Any:
    """Returns text instead of a candidate."""
    [draft] = await ctx.draft()
    return draft["text"]


async def test_what_the_function_returns_is_the_outcome(tmp_path: Path) -> None:
    model = by_role(generator="The answer is 6.")
    _, rows = await LoopRunner("face-outcome")(tmp_path, model, coins_task(tmp_path))
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["rounds"], task["final_answer"]) == ("my own reason", 7, "6")

    _, rows = await LoopRunner("face-bad-return")(tmp_path, model, coins_task(tmp_path))
    [task] = rows["tasks"]
    assert task["status"] == "failed"
    assert "face-bad-return" in task["error"] and "returned str" in task["error"]


# -- a loop as a graph, over the same context ----------------------------------------------------


class GraphState(TypedDict, total=False):
    drafts: list[Candidate]
    fixes: int


@loop(graph=True, name="face-graph")
def face_graph() -> Any:
    """Two drafts; while none passes, refine the best (at most twice)."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.runtime import Runtime

    async def draft(state: GraphState, runtime: Runtime[Context[NoOptions]]) -> dict[str, Any]:
        return {"drafts": await runtime.context.draft(n=2), "fixes": 0}

    async def check(state: GraphState, runtime: Runtime[Context[NoOptions]]) -> dict[str, Any]:
        return {"drafts": await runtime.context.verify(state["drafts"])}

    async def fix(state: GraphState, runtime: Runtime[Context[NoOptions]]) -> dict[str, Any]:
        ctx = runtime.context
        target = ctx.best(state["drafts"])
        assert target is not None
        return {"drafts": [await ctx.refine(target)], "fixes": state["fixes"] + 1}

    async def route(state: GraphState) -> str:
        done = any(d["passed"] for d in state["drafts"]) or state["fixes"] >= 2
        return END if done else "fix"

    g = StateGraph(GraphState, context_schema=Context)
    g.add_node("draft", draft)
    g.add_node("check", check)
    g.add_node("fix", fix)
    g.add_edge(START, "draft")
    g.add_edge("draft", "check")
    g.add_conditional_edges("check", route, ["fix", END])
    g.add_edge("fix", "check")
    return g


def graph_model() -> ScriptedModel:
    return by_role(
        generator=["The answer is 5.", "The answer is 8."],
        refiner=["The answer is 7.", "The answer is 6."],
    )


async def test_graph_loop_uses_the_same_context_and_answers_with_its_best(tmp_path: Path) -> None:
    model = graph_model()
    _, rows = await LoopRunner("face-graph")(tmp_path, model, coins_task(tmp_path))
    [task] = rows["tasks"]
    assert task["status"] == "done" and task["stop_reason"] == "verified"
    assert task["final_answer"] == "6" and task["graded"] is True and task["rounds"] == 2
    nodes = by_id(rows)
    first, second = sorted(
        (n for n in rows["nodes"] if n["role"] == "refiner"), key=lambda n: n["round"]
    )
    assert nodes[first["parent_id"]]["role"] == "generator"
    assert second["parent_id"] == first["node_id"] and second["depth"] == 2
    assert finals(rows)[0]["node_id"] == second["node_id"]


async def test_graph_loop_budget_stop_needs_no_guard(tmp_path: Path) -> None:
    _, rows = await LoopRunner("face-graph")(
        tmp_path, graph_model(), coins_task(tmp_path), budget=BudgetLimits(calls=2)
    )
    [task] = rows["tasks"]
    assert task["status"] == "done" and task["stop_reason"].startswith("budget:")
    assert [n["role"] for n in rows["nodes"]] == ["generator", "generator"]
    [final] = finals(rows)
    assert final["content"] == "The answer is 8."  # both failed: the later draft


# -- the context's steps, without a runner -------------------------------------------------------


def bare_context(model: ScriptedModel, *, kind: str = "math", calls: int | None = None) -> Context:
    task = Task(id="t", prompt=QUESTION, kind=kind)  # type: ignore[arg-type]
    return Context(
        task=task,
        client=ModelClient(model=model),
        verifier=None,
        budget=Budget(BudgetLimits(calls=calls)),
        options=NoOptions(),
        loop="test",
        seed=3,
    )


async def test_repeated_steps_get_new_rounds_and_seeds_deterministically() -> None:
    async def steps(model: ScriptedModel) -> list[tuple[str, int | None, int | None]]:
        ctx = bare_context(model)
        [a] = await ctx.draft()
        [b] = await ctx.draft()
        assert (a["round"], b["round"]) == (0, 1)
        await ctx.critique(a)
        await ctx.critique(a)
        r1 = await ctx.refine(a)
        r2 = await ctx.refine(a)
        assert (r1["round"], r2["round"], r1["parent_id"]) == (1, 1, a["node_id"])
        return [(str(c.params.role), c.params.round, c.params.seed) for c in model.calls]

    calls = await steps(by_role(generator="The answer is 5.", critic="ok", refiner="5"))
    seeds = [seed for _, _, seed in calls]
    assert len(set(seeds)) == len(seeds) == 6  # no step repeats another's seed (or cache key)
    assert calls == await steps(by_role(generator="x", critic="y", refiner="z"))


async def test_verify_takes_one_candidate_or_many_and_a_given_verifier() -> None:
    ctx = bare_context(by_role(generator=["The answer is 4.", "The answer is 5."]))
    drafts = await ctx.draft(n=2)
    assert await ctx.verify(drafts) == drafts  # no verifier: unchanged

    def odd(answer: str | None) -> bool:
        return answer is not None and int(answer) % 2 == 1

    four, five = await ctx.verify(drafts, verifier=odd)
    assert (four["passed"], five["passed"]) == (False, True)
    single = await ctx.verify(drafts[1], verifier=odd)
    assert single["passed"] is True and single["node_id"] == drafts[1]["node_id"]
    # the context keeps each candidate as last verified: best() sees the verdicts even when
    # handed the copies from before verification
    assert ctx.best(drafts) == five and ctx.best() == five


async def test_vote_compares_answers_on_math_and_whole_texts_on_text() -> None:
    ctx = bare_context(by_role(generator=["It is 4.", "The answer is 5.", "So: 5"]))
    drafts = await ctx.draft(n=3)
    assert ctx.vote(drafts) == drafts[1]
    assert ctx.vote([]) is None
    text = bare_context(by_role(generator=["Hi", "Hello", "hello "]), kind="text")
    greetings = await text.draft(n=3)
    assert text.vote(greetings) == greetings[1]


async def test_run_loop_turns_a_budget_stop_before_any_candidate_into_no_answer() -> None:
    ctx = bare_context(by_role(generator="The answer is 6."), calls=1)
    outcome = await run_loop(face_refine, face_refine.build(), ctx)
    assert outcome.stop_reason.startswith("budget:") and outcome.final_node_id is None
    assert ctx.nodes == []


def test_loop_names_descriptions_and_mistakes() -> None:
    assert face_refine.name == "face-refine" and face_refine.options is NoOptions
    assert face_refine.description.startswith("Three drafts, verified")
    assert face_fan.options is Fan

    def not_async(ctx: Context) -> None: ...

    async def async_builder() -> None: ...

    with pytest.raises(TypeError, match="not async"):
        loop(not_async)
    with pytest.raises(TypeError, match="returns a StateGraph"):
        loop(graph=True)(async_builder)
    with pytest.raises(UserError, match="built-in"):
        register_loop(face_refine.model_copy(update={"name": "self-refine"}))


# -- the face itself -----------------------------------------------------------------------------


def test_every_public_name_resolves() -> None:
    missing = []
    for name in face.__all__:
        try:
            getattr(face, name)
        except (AttributeError, ImportError) as exc:
            missing.append(f"{name}: {exc}")
    assert not missing
    from loopwright.loops.graphs.context import LoopContext

    assert face.Context is LoopContext


def test_importing_the_face_stays_cheap() -> None:
    code = (
        "import sys, loopwright.loops as f; f.__all__; "
        "heavy = [m for m in ('langgraph', 'litellm', 'torch') if m in sys.modules]; "
        "print(heavy)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_end_is_langgraphs() -> None:
    from langgraph.graph import END
    from loopwright.loops.graphs.common import END as OURS

    assert OURS == END


# -- the example ---------------------------------------------------------------------------------


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_best_of_3_even", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_takes_one_import_of_at_most_six_names() -> None:
    tree = ast.parse(EXAMPLE.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    ours = [n for n in imports if isinstance(n, ast.ImportFrom) and n.module == "loopwright.loops"]
    assert len(ours) == 1 and len(ours[0].names) <= 6
    others = [n for n in imports if n not in ours]
    assert all(isinstance(n, ast.Import) and n.names[0].name == "asyncio" for n in others)


async def test_example_picks_an_even_answer(tmp_path: Path) -> None:
    example = load_example()
    assert example.best_of_3_even.name == "best-of-3-even"
    drafts = ["The answer is 7.", "The answer is 8.", "The answer is 9."]
    model = ScriptedModel(lambda call: drafts[call.index % 3])  # each task: 7, 8, 9
    _, rows = await LoopRunner("best-of-3-even")(
        tmp_path, model, "builtin:arithmetic?n=2", verifier="auto"
    )
    assert [t["final_answer"] for t in rows["tasks"]] == ["8", "8"]
    assert all(t["verdict"] is True and t["stop_reason"] == "verified" for t in rows["tasks"])
    in_loop = [v for v in rows["verdicts"] if v["stage"] == "in_loop"]
    assert len(in_loop) == 6 and {v["verifier"] for v in in_loop} == {"even"}
    assert sum(v["passed"] for v in in_loop) == 2
    assert all(c["role"] == "generator" for c in rows["calls"])  # no self-check calls


def test_example_runs_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugin = tmp_path / "model_plugin.py"
    plugin.write_text(
        "from loopwright.loops import ScriptedModel\n"
        "ScriptedModel(['The answer is 3.', 'The answer is 4.', 'The answer is 4.'],"
        " name='even-example').register()\n"
    )
    db = str(tmp_path / "cli.duckdb")
    code, _, err = cli_main(
        ["run", "best-of-3-even", "--plugin", str(plugin), "--plugin", str(EXAMPLE),
         "--model", "scripted/even-example", "--tasks", "builtin:arithmetic?n=1", "--db", db,
         "--run-name", "cli-even"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    from loopwright.traces.store import TraceStore

    with TraceStore(db, read_only=True) as store:
        [run] = store.query("SELECT run_id FROM runs WHERE name = 'cli-even'")
    [task] = read_rows(db, run["run_id"])["tasks"]
    assert task["final_answer"] == "4" and task["verdict"] is True


@local_model
@pytest.mark.local_model
@pytest.mark.slow
def test_example_script_runs_with_the_embedded_model(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(EXAMPLE)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr
    from loopwright.traces.store import TraceStore

    with TraceStore(str(tmp_path / "loopwright.duckdb"), read_only=True) as store:
        tasks = store.query("SELECT status, calls FROM tasks")
        verdicts = store.query("SELECT DISTINCT verifier FROM verdicts WHERE stage = 'in_loop'")
    assert len(tasks) == 3 and all(t["status"] == "done" for t in tasks)
    assert verdicts == [{"verifier": "even"}]


# -- an example per seam -------------------------------------------------------------------------


def load_file(name: str) -> ModuleType:
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_task_source_example_loads_by_spec() -> None:
    load_file("square_tasks")
    tasks = face.load_tasks("squares?n=3&start=4")
    assert [(t.id, t.reference) for t in tasks] == [
        ("square-4", "16"), ("square-5", "25"), ("square-6", "36"),
    ]  # fmt: skip
    assert all(t.blind().reference is None for t in tasks)


async def test_verifier_example_scores_by_its_options() -> None:
    example = load_file("short_answer_verifier")
    ctx = bare_context(by_role(generator=["The answer is 5.", "5 " * 100 + "The answer is 5."]))
    short, long = await ctx.verify(await ctx.draft(n=2), verifier=example.short_answer)
    assert short["passed"] is True and short["score"] > 0.9
    assert long["passed"] is False and long["score"] < 0.2  # 104 words
    strict = face.as_verifier(example.short_answer, options={"max_words": 2})
    assert strict.options == example.Limits(max_words=2)


def test_grader_example_grades_the_keyed_task() -> None:
    example = load_file("exact_grader")
    task = Task(id="t", prompt="Capital of France?", reference="Paris", kind="text")
    assert example.exact_text(task, " paris\n").passed is True
    lyon = example.exact_text(task, "Lyon")
    assert lyon.passed is False and lyon.feedback == "expected 'Paris'"
    assert lyon.verifier == "exact-text" and lyon.version.startswith("fn-")
    assert example.exact_text.applies(task) and not example.exact_text.applies(
        Task(id="m", prompt="1+1?", kind="math")
    )


async def test_model_example_serves_a_built_in_loop(tmp_path: Path) -> None:
    example = load_file("calculator_model")
    model = face.FunctionModel(example.calculator, name="calculator")
    result = await face.run(
        face.RunConfig(
            loop="best-of-n", tasks="builtin:arithmetic?n=3", model=model,
            options={"n": 3, "selector": "majority"}, verifier="none",
            db=str(tmp_path / "m.duckdb"),
        )
    )  # fmt: skip
    # one sample in three is off by one; the majority is right on every task
    assert result.summary["graded_pass_rate"] == 1.0 and result.summary["calls"] == 9
