"""Harvest exports over hand-built trees where the right rows are known exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from loopwright.loops.tasks import load_tasks
from loopwright.traces.harvest import HarvestError, HarvestOptions, harvest

from tests.harvest_trees import Trees
from tests.loop_testkit import cli_main, local_model

Q1 = "Ann has 3 apples and buys 4 more. How many apples does Ann have now?"
Q2 = "Bob has 10 pens and gives away 6 of them. How many pens are left with Bob?"
Q3 = "A box holds 5 rows of 6 eggs. How many eggs are in the box altogether?"


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _export(fmt: str, db: Path, tmp: Path, **kw: Any) -> tuple[list[dict[str, Any]], Any]:
    out = tmp / f"{fmt}-{len(list(tmp.iterdir()))}.jsonl"
    res = harvest(fmt, db, out, HarvestOptions(**kw))
    return _rows(out), res


def _ids(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [r["provenance"]["node_ids"] for r in rows]


@pytest.fixture
def siblings(tmp_path: Path) -> Path:
    """Best-of-n style: independent samples of Q1 and Q2, some right, some wrong."""
    t = Trees(tmp_path / "s.duckdb")
    run = t.run("bon", loop="best-of-n")
    t.task(run, "t1", Q1)
    t.task(run, "t2", Q2)
    t.node("p1", run, "t1", "3 + 4 = 7. The answer is 7.", passed=True)
    t.node("p1dup", run, "t1", "3+4 = 7.  the answer is 7", passed=True)  # near duplicate
    t.node("f1", run, "t1", "3 * 4 = 12. The answer is 12.", passed=False)
    t.node("f2", run, "t1", "The answer is 1.", passed=False)
    t.node("f3", run, "t2", "10 + 6 = 16. The answer is 16.", passed=False)
    t.node("nv", run, "t2", "I am not sure.", role="generator")  # no verdict: not an answer
    t.node("crit", run, "t1", "Looks fine.", role="critic", parent="p1")
    t.close()
    return tmp_path / "s.duckdb"


def test_sft_keeps_verified_answers_once(siblings: Path, tmp_path: Path) -> None:
    rows, res = _export("sft", siblings, tmp_path)
    assert [r["messages"] for r in rows] == [
        [{"role": "user", "content": Q1}, {"role": "assistant", "content": "3 + 4 = 7. The answer is 7."}]
    ]  # fmt: skip
    assert res.excluded == {"not verified": 3, "duplicate": 1}
    assert res.considered == 5 and res.rows == 1
    prov = rows[0]["provenance"]
    assert prov["node_ids"] == ["n-p1"] and prov["run_name"] == "bon"
    assert prov["task_id"] == "t1" and prov["loop"] == "best-of-n" and prov["model"] == "m1"
    assert prov["config_hash"] == "h-bon" and prov["passed"] is True


def test_sft_exact_dedup_keeps_near_duplicates_and_cap_applies(
    siblings: Path, tmp_path: Path
) -> None:
    rows, _ = _export("sft", siblings, tmp_path, dedup="exact")
    assert sorted(_ids(rows)) == [["n-p1"], ["n-p1dup"]]
    rows, res = _export("sft", siblings, tmp_path, dedup="exact", max_per_prompt=1)
    assert len(rows) == 1 and res.excluded["over 1 per prompt"] == 1


def test_sft_plain_style_and_system(siblings: Path, tmp_path: Path) -> None:
    rows, res = _export("sft", siblings, tmp_path, style="plain", provenance=False)
    assert rows == [{"prompt": Q1, "completion": "3 + 4 = 7. The answer is 7."}]
    assert res.columns == ["prompt", "completion"]
    rows, _ = _export("sft", siblings, tmp_path, system="Be brief.")
    assert rows[0]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_dpo_siblings_are_verified_against_failed(siblings: Path, tmp_path: Path) -> None:
    rows, res = _export("dpo", siblings, tmp_path, pairs=["siblings"])
    assert sorted(_ids(rows)) == [["n-p1", "n-f1"], ["n-p1", "n-f2"]]
    for r in rows:
        assert r["prompt"] == [{"role": "user", "content": Q1}]
        assert r["chosen"] == [{"role": "assistant", "content": "3 + 4 = 7. The answer is 7."}]
        assert (r["score_chosen"], r["score_rejected"], r["margin"]) == (1.0, 0.0, 1.0)
        assert r["source"] == "siblings"
    # p1dup's pairs repeat p1's after normalisation; t2 has no verified answer: no pair.
    assert res.excluded == {"duplicate": 2}
    assert res.by_source == {"siblings": 2}
    assert res.margin_histogram[-1] == (0.9, 1.0, 2)


def test_dpo_cap_spreads_pairs_over_answers(siblings: Path, tmp_path: Path) -> None:
    rows, res = _export("dpo", siblings, tmp_path, pairs=["siblings"], dedup="exact",
                        max_per_prompt=2)  # fmt: skip
    # 2 chosen x 2 rejected: the two kept pairs use both chosen and both rejected answers.
    chosen = {i[0] for i in _ids(rows)}
    rejected = {i[1] for i in _ids(rows)}
    assert chosen == {"n-p1", "n-p1dup"} and rejected == {"n-f1", "n-f2"}
    assert res.excluded == {"over 2 per prompt": 2}


@pytest.fixture
def revisions(tmp_path: Path) -> Path:
    """Self-refine chains on a code-like partial score: improved, regressed, tied."""
    t = Trees(tmp_path / "r.duckdb")
    run = t.run("sr")
    t.task(run, "t1", Q1)
    t.node("d", run, "t1", "draft", passed=False, score=0.2, feedback="2 of 10 tests pass")
    t.node("c1", run, "t1", "The loop is off by one.", role="critic", parent="d")
    t.node("r1", run, "t1", "revision one", role="refiner", parent="d", round_=1,
           passed=False, score=0.6, feedback="6 of 10 tests pass")  # fmt: skip
    t.node("c2", run, "t1", "Handle the empty list.", role="critic", parent="r1", round_=1)
    t.node("r2", run, "t1", "revision two", role="refiner", parent="r1", round_=2,
           passed=False, score=0.4)  # fmt: skip
    t.node("r3", run, "t1", "revision three", role="refiner", parent="r2", round_=3,
           passed=False, score=0.4)  # fmt: skip
    t.node("r4", run, "t1", "revision four", role="refiner", parent="r3", round_=4,
           passed=True, score=1.0)  # fmt: skip
    t.close()
    return tmp_path / "r.duckdb"


def test_dpo_revisions_only_where_the_score_rose(revisions: Path, tmp_path: Path) -> None:
    rows, res = _export("dpo", revisions, tmp_path, pairs=["revisions"])
    got = {
        tuple(i): (r["score_chosen"], r["score_rejected"])
        for i, r in zip(_ids(rows), rows, strict=True)
    }
    assert got == {("n-r1", "n-d"): (0.6, 0.2), ("n-r4", "n-r3"): (1.0, 0.4)}
    assert res.excluded == {"revision scored lower": 1, "tie": 1}
    assert rows[0]["margin"] == pytest.approx(rows[0]["score_chosen"] - rows[0]["score_rejected"])
    # A minimum margin drops the 0.4 gain and keeps the 0.6 one.
    rows, res = _export("dpo", revisions, tmp_path, pairs=["revisions"], min_margin=0.5)
    assert _ids(rows) == [["n-r4", "n-r3"]]
    assert res.excluded["margin below 0.5"] == 1


@pytest.fixture
def critiqued(tmp_path: Path) -> Path:
    t = Trees(tmp_path / "c.duckdb")
    run = t.run("sr")
    t.task(run, "t1", Q1)
    t.node("d", run, "t1", "The answer is 12.", passed=False)
    t.node("c", run, "t1", "3 plus 4 is 7, not 12.", role="critic", parent="d")
    t.node("r", run, "t1", "The answer is 7.", role="refiner", parent="d", round_=1, passed=True)
    t.node("c2", run, "t1", "Correct.", role="critic", parent="r", round_=1)  # nothing after it
    t.close()
    return tmp_path / "c.duckdb"


def test_critique_kept_only_when_it_led_to_a_better_verified_revision(
    revisions: Path, critiqued: Path, tmp_path: Path
) -> None:
    rows, res = _export("critique", revisions, tmp_path)
    # c1 led to r1 (better but not verified); c2 led to r2 (not verified): none kept.
    assert rows == [] and res.excluded == {"revision not verified": 2}
    rows, res = _export("critique", critiqued, tmp_path)
    assert len(rows) == 1 and res.excluded == {"no revision followed": 1}
    [user] = rows[0]["prompt"]
    assert Q1 in user["content"] and "The answer is 12." in user["content"]
    assert rows[0]["completion"] == [{"role": "assistant", "content": "3 plus 4 is 7, not 12."}]
    assert rows[0]["provenance"]["node_ids"] == ["n-d", "n-c", "n-r"]


def test_corrections_are_the_whole_chain_with_feedback(revisions: Path, tmp_path: Path) -> None:
    rows, res = _export("corrections", revisions, tmp_path)
    [row] = rows
    assert row["provenance"]["node_ids"] == ["n-d", "n-r1", "n-r2", "n-r3", "n-r4"]
    assert row["messages"] == [
        {"role": "user", "content": Q1},
        {"role": "assistant", "content": "draft"},
        {"role": "user", "content": "The loop is off by one."},  # the critic's words
        {"role": "assistant", "content": "revision one"},
        {"role": "user", "content": "Handle the empty list."},
        {"role": "assistant", "content": "revision two"},
        {"role": "user", "content": "That answer is not right. Try again."},  # no feedback kept
        {"role": "assistant", "content": "revision three"},
        {"role": "user", "content": "That answer is not right. Try again."},
        {"role": "assistant", "content": "revision four"},
    ]
    assert res.considered == 1 and res.excluded == {}


def test_corrections_verified_only_and_verifier_feedback(tmp_path: Path) -> None:
    t = Trees(tmp_path / "x.duckdb")
    run = t.run("rx", loop="reflexion")
    t.task(run, "t1", Q1)
    t.task(run, "t2", Q2)
    t.node("a", run, "t1", "The answer is 8.", passed=False, feedback="8 is not 7")
    t.node("b", run, "t1", "The answer is 7.", parent="a", round_=1, passed=True)
    t.node("x", run, "t2", "The answer is 5.", passed=False, feedback="5 is not 4")
    t.node("y", run, "t2", "The answer is 6.", parent="x", round_=1, passed=False)
    t.node("z", run, "t2", "The answer is 4.", passed=True)  # a lone first try
    t.close()
    rows, res = _export("corrections", tmp_path / "x.duckdb", tmp_path)
    assert sorted(_ids(rows)) == [["n-a", "n-b"], ["n-x", "n-y"]]
    fb = {r["provenance"]["task_id"]: r["messages"][2]["content"] for r in rows}
    assert fb == {"t1": "8 is not 7", "t2": "5 is not 4"}
    assert res.excluded == {"single attempt": 1}
    rows, res = _export("corrections", tmp_path / "x.duckdb", tmp_path, verified_only=True)
    assert _ids(rows) == [["n-a", "n-b"]]
    assert res.excluded == {"single attempt": 1, "not verified": 1}


def test_dpo_judge_pairs_need_both_orders_to_agree(tmp_path: Path) -> None:
    t = Trees(tmp_path / "j.duckdb")
    run = t.run("bon", loop="best-of-n")
    t.task(run, "t1", Q1)
    for i in range(6):
        t.node(f"a{i}", run, "t1", f"answer number {i}", passed=False)
    t.judge(run, "t1", "a0", "a1", "a", "a", votes=3)  # a0 wins both orders
    t.judge(run, "t1", "a2", "a3", "b", "b")  # a3 wins both orders
    t.judge(run, "t1", "a0", "a2", "a", "b")  # position bias: order flip
    t.judge(run, "t1", "a4", "a5", "tie", "tie")
    t.judge(run, "t1", "a1", "a4", None, "a")  # one order unparsed
    t.close()
    rows, res = _export("dpo", tmp_path / "j.duckdb", tmp_path, pairs=["judge"])
    assert sorted(_ids(rows)) == [["n-a0", "n-a1"], ["n-a3", "n-a2"]]
    assert all(r["source"] == "judge" for r in rows)
    assert all((r["score_chosen"], r["score_rejected"]) == (1.0, 0.0) for r in rows)
    assert res.excluded == {"judge order flip": 1, "judge undecided": 1, "tie": 1}


@pytest.fixture
def steps(tmp_path: Path) -> Path:
    """A beam step tree: content is the whole partial so far, steps joined by blank lines."""
    t = Trees(tmp_path / "b.duckdb")
    run = t.run("beam", loop="beam")
    t.task(run, "t1", Q3)
    e = "expander"
    t.node("s1", run, "t1", "5 rows of 6.", role=e, value=0.9)
    t.node("s2a", run, "t1", "5 rows of 6.\n\n5 * 6 = 30. The answer is 30.", role=e,
           parent="s1", passed=True, value=1.0)  # fmt: skip
    t.node("s2b", run, "t1", "5 rows of 6.\n\n5 + 6 = 11.", role=e, parent="s1", value=0.3)
    t.node("s3", run, "t1", "5 rows of 6.\n\n5 + 6 = 11.\n\nThe answer is 11.", role=e,
           parent="s2b", passed=False, value=0.0)  # fmt: skip
    t.node("u1", run, "t1", "Eggs come in boxes.", role=e, value=0.2)
    t.node("ro", run, "t1", "Eggs come in boxes.\n\n30 eggs. The answer is 30.",
           role="rollout", parent="u1", passed=True)  # fmt: skip
    t.node("u2", run, "t1", "Eggs come in boxes.\n\nThe answer is 12.", role=e, parent="u1",
           passed=False, value=0.0)  # fmt: skip
    t.close()
    return tmp_path / "b.duckdb"


def test_prm_labels_a_step_good_when_a_verified_answer_descends(
    steps: Path, tmp_path: Path
) -> None:
    rows, res = _export("prm", steps, tmp_path)
    got = {r["provenance"]["node_ids"][-1]: (r["completions"], r["labels"]) for r in rows}
    assert got == {
        "n-s2a": (["5 rows of 6.", "5 * 6 = 30. The answer is 30."], [True, True]),
        "n-s3": (["5 rows of 6.", "5 + 6 = 11.", "The answer is 11."], [True, False, False]),
        # u1 has no finished verified path but a verified rollout: good (Math-Shepherd).
        "n-u2": (["Eggs come in boxes.", "The answer is 12."], [True, False]),
    }
    assert all(r["prompt"] == Q3 for r in rows)
    assert res.labels == {"true": 4, "false": 3}
    assert res.columns == ["prompt", "completions", "labels", "provenance"]
    rows, _ = _export("prm", steps, tmp_path, prm_label="value", value_threshold=0.5)
    got = {r["provenance"]["node_ids"][-1]: r["labels"] for r in rows}
    assert got == {"n-s2a": [True, True], "n-s3": [True, False, False], "n-u2": [False, False]}
    rows, res = _export("prm", steps, tmp_path, verified_only=True)
    assert [r["provenance"]["node_ids"][-1] for r in rows] == ["n-s2a"]


def test_prm_skips_trees_whose_nodes_are_not_steps(tmp_path: Path) -> None:
    t = Trees(tmp_path / "m.duckdb")
    run = t.run("mcts", loop="mcts")
    t.task(run, "t1", Q1)
    t.node("root", run, "t1", Q1, role="root")
    t.node("g", run, "t1", "The answer is 8.", parent="root", passed=False)
    t.node("x", run, "t1", "Another go: the answer is 7.", role="expander", parent="g",
           passed=True)  # fmt: skip
    t.close()
    rows, res = _export("prm", tmp_path / "m.duckdb", tmp_path)
    assert rows == [] and res.excluded == {"not a step tree": 1}


def test_kto_labels_and_balance_under_a_cap(siblings: Path, tmp_path: Path) -> None:
    rows, res = _export("kto", siblings, tmp_path)
    got = sorted((r["provenance"]["node_ids"][0], r["label"]) for r in rows)
    assert got == [("n-f1", False), ("n-f2", False), ("n-f3", False), ("n-p1", True)]
    assert res.labels == {"true": 1, "false": 3}
    assert rows[0]["completion"][0]["role"] == "assistant"
    rows, _ = _export("kto", siblings, tmp_path, max_per_prompt=2)
    t1 = sorted(r["label"] for r in rows if r["provenance"]["task_id"] == "t1")
    assert t1 == [False, True]  # the cap keeps one of each label, not two failures


def test_graded_labels_and_filters(tmp_path: Path) -> None:
    t = Trees(tmp_path / "g.duckdb")
    r1 = t.run("one", model="m1")
    r2 = t.run("two", loop="reflexion", model="m2")
    for r in (r1, r2):
        t.task(r, "t1", Q1)
    # The loop's own check passed it; the held-out grader did not.
    t.node("gamed", r1, "t1", "The answer is 7, trust me.", passed=True, graded=False)
    t.node("ok", r1, "t1", "The answer is 7.", round_=2, passed=True, graded=True)
    t.node("other", r2, "t1", "It is 7.", passed=True, model="m2")
    t.close()
    db = tmp_path / "g.duckdb"
    assert sorted(_ids(_export("sft", db, tmp_path)[0])) == [["n-gamed"], ["n-ok"], ["n-other"]]
    rows, res = _export("sft", db, tmp_path, label="graded")
    assert _ids(rows) == [["n-ok"]]
    assert res.excluded == {"no graded verdict": 1, "not verified": 1}
    assert rows[0]["provenance"]["label"] == "graded"
    assert _ids(_export("sft", db, tmp_path, runs=["two"])[0]) == [["n-other"]]
    assert _ids(_export("sft", db, tmp_path, loops=["reflexion"])[0]) == [["n-other"]]
    assert _ids(_export("sft", db, tmp_path, models=["m2"])[0]) == [["n-other"]]
    assert _ids(_export("sft", db, tmp_path, min_round=1)[0]) == [["n-ok"]]
    with pytest.raises(HarvestError, match="unknown run 'three'"):
        harvest("sft", db, None, HarvestOptions(runs=["three"]))


def test_contaminated_prompts_are_left_out_and_named(siblings: Path, tmp_path: Path) -> None:
    eval_file = tmp_path / "eval.jsonl"
    # Q1 reworded at the edges and recased: most of its 8-grams still occur.
    eval_file.write_text(
        json.dumps({"question": "Problem 4: " + Q1.upper() + " Show your work."}) + "\n"
        + json.dumps({"question": "Something unrelated about trains and stations."}) + "\n"
    )  # fmt: skip
    rows, res = _export("kto", siblings, tmp_path, contamination=[eval_file])
    assert {r["provenance"]["task_id"] for r in rows} == {"t2"}
    assert res.excluded["contaminated"] == 4  # every t1 answer: p1, p1dup, f1, f2
    assert res.contaminated_tasks == ["t1"]
    # A short prompt counts as contaminated when it appears whole inside an eval text.
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "xx " + Q2 + " yy"}) + "\n")
    rows, res = _export("kto", siblings, tmp_path, contamination=[short], ngram=30)
    assert res.contaminated_tasks == ["t2"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "fine"}\n{oops\n')
    with pytest.raises(HarvestError, match=r"bad.jsonl:2: not JSON"):
        harvest("sft", siblings, None, HarvestOptions(contamination=[bad]))


def test_outputs_load_with_datasets_with_trl_columns_and_types(
    siblings: Path, revisions: Path, critiqued: Path, steps: Path, tmp_path: Path
) -> None:
    datasets = pytest.importorskip("datasets")
    from datasets import Features, List, Value

    msg = List({"content": Value("string"), "role": Value("string")})
    want = {
        "sft": (siblings, {"messages": msg}),
        "dpo": (siblings, {"prompt": msg, "chosen": msg, "rejected": msg,
                           "score_chosen": Value("float64"), "score_rejected": Value("float64"),
                           "margin": Value("float64"), "source": Value("string")}),
        "kto": (siblings, {"prompt": msg, "completion": msg, "label": Value("bool")}),
        "prm": (steps, {"prompt": Value("string"), "completions": List(Value("string")),
                        "labels": List(Value("bool"))}),
        "critique": (critiqued, {"prompt": msg, "completion": msg}),
        "corrections": (revisions, {"messages": msg}),
    }  # fmt: skip
    for fmt, (db, cols) in want.items():
        opts = HarvestOptions(provenance=False, dedup="none")
        for ext in (".parquet", ".jsonl", ""):
            out = tmp_path / f"{fmt}-out{ext}"
            res = harvest(fmt, db, out, opts)
            if ext == "":
                ds = datasets.load_from_disk(str(out))
            else:
                kind = "parquet" if ext == ".parquet" else "json"
                ds = datasets.load_dataset(kind, data_files=str(out), split="train",
                                           cache_dir=str(tmp_path / "hf"))  # fmt: skip
            assert res.rows > 0 and len(ds) == res.rows, (fmt, ext)
            assert set(ds.column_names) == set(cols), (fmt, ext)
            if len(ds):
                got = {k: ds.features[k] for k in cols}
                norm = Features(got).to_dict()
                assert norm == Features(cols).to_dict() or ext == ".jsonl", (fmt, ext, got)
    # jsonl infers the same types when rows exist
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "dpo-out.jsonl"),
                               split="train", cache_dir=str(tmp_path / "hf"))  # fmt: skip
    assert ds.features["margin"] == Value("float64") and ds.features["chosen"] == msg


def test_existing_output_is_not_overwritten(siblings: Path, tmp_path: Path) -> None:
    out = tmp_path / "keep.jsonl"
    out.write_text("precious\n")
    with pytest.raises(HarvestError, match="already exists"):
        harvest("sft", siblings, out)
    assert out.read_text() == "precious\n"
    harvest("sft", siblings, out, overwrite=True)
    assert len(_rows(out)) == 1
    with pytest.raises(HarvestError, match="cannot tell the output format"):
        harvest("sft", siblings, tmp_path / "x.csv")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_cli_writes_and_reports(
    siblings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pairs.jsonl"
    code, text, _ = cli_main(["harvest", "dpo", "--db", str(siblings), "--out", str(out),
                           "--pairs", "siblings", "--style", "plain"], capsys)  # fmt: skip
    assert code == 0
    assert "dpo: 2 rows from 1 prompts to" in text and "siblings 2" in text
    assert "duplicate" in text and "0.9-1.0" in text
    assert sorted(r["rejected"] for r in _rows(out)) == [
        "3 * 4 = 12. The answer is 12.", "The answer is 1."
    ]  # fmt: skip
    code, text, _ = cli_main(
        ["harvest", "kto", "--db", str(siblings), "--dry-run", "--json"], capsys
    )
    assert code == 0 and json.loads(text)["labels"] == {"true": 1, "false": 3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["harvest", "sft", "--db", "{db}"], "give --out PATH"),
        (["harvest", "sft", "--db", "{tmp}/none.duckdb", "--out", "{tmp}/o.jsonl"],
         "no trace database at"),
        (["harvest", "pairs", "--db", "{db}", "--out", "{tmp}/o.jsonl"],
         "unknown harvest format 'pairs'"),
        (["harvest", "dpo", "--db", "{db}", "--out", "{tmp}/o.jsonl", "--pairs", "cousins"],
         "--pairs"),
        (["harvest", "sft", "--db", "{db}", "--out", "{tmp}/o.jsonl", "--run", "nope"],
         "unknown run 'nope'; runs in this database: bon"),
        (["harvest", "sft", "--db", "{db}", "--out", "{tmp}/o.jsonl", "--contamination",
          "{tmp}/missing.jsonl"], "contamination file"),
    ],
)  # fmt: skip
def test_cli_bad_input_is_one_line(
    siblings: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    argv = [a.format(db=siblings, tmp=tmp_path) for a in args]
    code, _, err = cli_main(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error:") and message in lines[0], lines[0]
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "none.duckdb").exists()


@pytest.mark.local_model
@local_model
async def test_harvest_from_a_real_local_model_run(tmp_path: Path) -> None:
    """best-of-n on the embedded model, graded: every graded label matches the math checker."""
    from loopwright.loops.execution.grade import grade_run
    from loopwright.loops.execution.runner import RunConfig, run
    from loopwright.tools.math_check import MathChecker

    db = tmp_path / "run.duckdb"
    cfg = RunConfig(loop="best-of-n", tasks="builtin:arithmetic?seed=3&n=3", db=str(db),
                    options={"n": 6, "max_tokens": 64})  # fmt: skip
    result = await run(cfg)
    assert result.summary["done"] == 3
    grade_run(str(db), [result.name])  # the in-loop labels are the model's self-checks
    refs = {t.id: t.reference for t in load_tasks("builtin:arithmetic?seed=3&n=3")}
    checker = MathChecker("lenient")  # the grader's policy
    try:
        kto = harvest(
            "kto", db, tmp_path / "kto.jsonl", HarvestOptions(dedup="none", label="graded")
        )
        rows = _rows(tmp_path / "kto.jsonl")
        assert kto.rows == len(rows) == 18  # 3 tasks x 6 samples, all labelled
        for r in rows:
            want = checker.check(r["completion"][0]["content"], refs[r["provenance"]["task_id"]])
            assert r["label"] == want.passed, r
        harvest(
            "dpo", db, tmp_path / "dpo.jsonl", HarvestOptions(pairs=["siblings"], label="graded")
        )
        for r in _rows(tmp_path / "dpo.jsonl"):
            ref = refs[r["provenance"]["task_id"]]
            assert checker.check(r["chosen"][0]["content"], ref).passed
            assert not checker.check(r["rejected"][0]["content"], ref).passed
    finally:
        checker.close()


def test_sibling_scope_task_prompt_parent(tmp_path: Path) -> None:
    t = Trees(tmp_path / "p.duckdb")
    r1, r2 = t.run("one"), t.run("two", model="m2")
    for r in (r1, r2):
        t.task(r, "t1", Q1)
    t.node("root", r1, "t1", "Let me think.", role="expander")
    t.node("ok", r1, "t1", "The answer is 7.", parent="root", passed=True)
    t.node("bad", r1, "t1", "The answer is 8.", passed=False)  # same task, other parent
    t.node("far", r2, "t1", "The answer is 9.", passed=False, model="m2")  # other run
    t.close()
    db = tmp_path / "p.duckdb"

    def pairs(scope: str) -> list[list[str]]:
        rows, _ = _export("dpo", db, tmp_path, pairs=["siblings"], pair_scope=scope)
        return sorted(_ids(rows))

    assert pairs("task") == [["n-ok", "n-bad"]]
    assert pairs("prompt") == [["n-ok", "n-bad"], ["n-ok", "n-far"]]
    assert pairs("parent") == []
