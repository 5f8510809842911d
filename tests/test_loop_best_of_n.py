"""Best-of-n control flow, driven through the runner with the scripted model.

Generation replies come from a list (one item per sample, in order); judge prompts are told
apart by their text (tools/prompts/judge.toml) and rated by the answer they show.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from best_of_n_helpers import (
    MIXED,
    Script,
    final,
    gens,
    is_judge,
    rate_by_number,
    run_loop,
    vote_record,
)
from loop_testkit import (
    QUESTION,
    RIGHT,
    last_user,
    math_task,
    one_task,
    text_task,
    untested_code_task,
    user_error,
    write_jsonl,
)
from loopwright.loops.graphs.best_of_n import BEST_OF_N, BestOfNOptions
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.scripted import ScriptedModel

# -- one request, majority vote -----------------------------------------------------------------


async def test_n8_is_one_request_and_majority_picks_the_mode(tmp_path: Path) -> None:
    model = ScriptedModel(Script(MIXED))
    result, rows = await run_loop(
        tmp_path, model, one_task(tmp_path), options={"selector": "majority"}
    )
    # One provider request carried n=8: every sample saw the same n and seed.
    assert len(model.calls) == 8
    assert {c.n for c in model.calls} == {8}
    assert len({c.params.seed for c in model.calls}) == 1
    assert len({c["request_id"] for c in rows["calls"]}) == 1
    assert [c["sample_index"] for c in rows["calls"]] == list(range(8))
    assert QUESTION in last_user(model.calls[0].messages)
    assert "The answer is N" in last_user(model.calls[0].messages)

    [task] = rows["tasks"]
    assert (task["status"], task["stop_reason"], task["rounds"], task["calls"]) == (
        "done",
        "selected: majority",
        1,
        8,
    )
    g = gens(rows)
    assert [n["content"] for n in g] == MIXED
    assert all((n["parent_id"], n["depth"], n["round"]) == (None, 0, 0) for n in g)
    assert [n["answer"] for n in g] == ["5", "7", "7.0", None, "7", "5", "7", "12"]
    # The mode of the normalised answers is 7; the first sample saying so is final.
    assert final(rows)["content"] == "The answer is 7."
    assert task["final_answer"] == "7"
    rec = vote_record(rows)
    assert rec["votes"] == {"5": 2.0, "7": 4.0, "12": 1.0}
    assert (rec["selector"], rec["used"], rec["winner"], rec["note"]) == (
        "majority",
        "majority",
        "7",
        None,
    )
    assert (rec["samples"], rec["requests"], rec["rejection"]) == (8, 1, False)
    # The task has a verifier, so every sample is labelled even though the vote decided.
    in_loop = [v for v in rows["verdicts"] if v["stage"] == "in_loop"]
    assert sorted(v["node_id"] for v in in_loop) == sorted(n["node_id"] for n in g)
    assert [n["score"] for n in g] == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert (task["verdict"], task["graded"]) == (False, False)
    assert result.summary["stop_reasons"] == {"selected: majority": 1}


async def test_fan_out_when_the_provider_takes_no_n(tmp_path: Path) -> None:
    model = ScriptedModel(Script(MIXED), supports_n=False)
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"selector": "majority"})
    assert len(model.calls) == 8
    assert all(c.n == 1 for c in model.calls)
    seeds = sorted(c.params.seed for c in model.calls)
    assert seeds == list(range(seeds[0], seeds[0] + 8))  # the client derives one seed per sample
    [task] = rows["tasks"]
    assert (task["rounds"], task["final_answer"], task["stop_reason"]) == (
        1,
        "7",
        "selected: majority",
    )
    assert len(gens(rows)) == 8


async def test_default_selector_without_verifier_falls_back_to_majority(tmp_path: Path) -> None:
    model = ScriptedModel(Script(MIXED))
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path, reference=None))
    [task] = rows["tasks"]
    assert task["stop_reason"] == "selected: majority"
    assert (task["verdict"], task["graded"]) == (None, None)
    rec = vote_record(rows)
    assert (rec["selector"], rec["used"], rec["note"]) == (
        "verifier",
        "majority",
        "task has no verifier",
    )
    assert rows["verdicts"] == []
    assert all(n["score"] is None for n in gens(rows))


# -- verifier, judge, reward -----------------------------------------------------------------------


async def test_verifier_picks_the_passing_sample_over_the_majority(tmp_path: Path) -> None:
    replies = ["The answer is 7."] * 5 + ["The answer is 5.", "The answer is 7.", "x"]
    model = ScriptedModel(Script(replies))
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path))
    [task] = rows["tasks"]
    assert (task["stop_reason"], task["verdict"], task["graded"]) == (
        "selected: verifier",
        True,
        True,
    )
    assert final(rows)["node_id"] == gens(rows)[5]["node_id"]
    rec = vote_record(rows)
    assert (rec["used"], rec["votes"], rec["winner"]) == ("verifier", {"7": 6.0, "5": 1.0}, None)
    graded = [v for v in rows["verdicts"] if v["stage"] == "graded"]
    assert [(v["node_id"], v["passed"]) for v in graded] == [(task["final_node_id"], True)]


async def test_verifier_without_a_pass_takes_the_majority(tmp_path: Path) -> None:
    replies = ["The answer is 8.", "The answer is 7.", "The answer is 7.", "The answer is 9."]
    model = ScriptedModel(Script(replies))
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"n": 4})
    assert final(rows)["node_id"] == gens(rows)[1]["node_id"]
    rec = vote_record(rows)
    assert (rec["note"], rec["winner"]) == ("no sample passed: top score, then majority", "7")
    assert rows["tasks"][0]["stop_reason"] == "selected: verifier"


async def test_judge_scores_every_sample_and_the_highest_wins(tmp_path: Path) -> None:
    replies = ["The answer is 3.", "The answer is 9.", "no number", "The answer is 9."]
    script = Script(replies, rate=rate_by_number)
    model = ScriptedModel(script)
    _, rows = await run_loop(
        tmp_path, model, one_task(tmp_path), options={"n": 4, "selector": "judge"}
    )
    g = gens(rows)
    assert final(rows)["node_id"] == g[1]["node_id"]  # 9 twice: the earlier sample
    assert rows["tasks"][0]["stop_reason"] == "selected: judge"
    assert [n["value"] for n in g] == [2 / 9, 8 / 9, None, 8 / 9]
    assert [n["score"] for n in g] == [0.0] * 4  # score stays the verifier's
    judged = {v["node_id"]: v for v in rows["verdicts"] if v["verifier"] == "llm-judge"}
    assert set(judged) == {n["node_id"] for n in g}
    assert all(v["stage"] == "in_loop" for v in judged.values())
    assert judged[g[2]["node_id"]]["passed"] is False
    # The judge sees question and sample, never the reference; its calls are role "judge".
    assert len(script.judge_prompts) == 4
    assert all(QUESTION in p and "[Reference answer]" not in p for p in script.judge_prompts)
    assert sorted(c["role"] for c in rows["calls"]) == ["generator"] * 4 + ["judge"] * 4
    assert rows["tasks"][0]["calls"] == 8


async def test_weighted_vote_by_judge_beats_the_plain_majority(tmp_path: Path) -> None:
    replies = ["The answer is 1."] * 3 + ["The answer is 10."] * 2
    model = ScriptedModel(Script(replies, rate=rate_by_number))
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path, reference=None),
        options={"n": 5, "selector": "weighted", "weight_by": "judge"},
    )
    rec = vote_record(rows)
    assert rec["votes"] == {"1": 3.0, "10": 2.0}
    assert rec["weighted"] == {"1": 0.0, "10": 2.0}
    assert (rec["used"], rec["weight_by"], rec["winner"]) == ("weighted", "judge", "10")
    assert final(rows)["node_id"] == gens(rows)[3]["node_id"]
    assert rows["tasks"][0]["stop_reason"] == "selected: weighted"


async def test_weighted_by_logprob_without_logprobs_falls_back(tmp_path: Path) -> None:
    model = ScriptedModel(Script(MIXED))  # the scripted provider reports no logprobs
    _, rows = await run_loop(tmp_path, model, one_task(tmp_path), options={"selector": "weighted"})
    rec = vote_record(rows)
    assert (rec["used"], rec["note"], rec["weighted"]) == ("majority", "no logprob weights", None)
    assert rows["tasks"][0]["stop_reason"] == "selected: majority"


async def test_judge_model_gets_one_client_for_the_whole_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loopwright.loops.models import client as client_mod

    made: list[str] = []
    real_init = client_mod.ModelClient.__init__

    def counting(self: Any, config: Any, *a: Any, **kw: Any) -> None:
        made.append(config.model)
        real_init(self, config, *a, **kw)

    monkeypatch.setattr(client_mod.ModelClient, "__init__", counting)
    judge = ScriptedModel(Script([], rate=rate_by_number))
    model = ScriptedModel(Script(["The answer is 2.", "The answer is 6."] * 3))
    tasks = write_jsonl(tmp_path / "three.jsonl", [math_task(f"t{i}") for i in range(3)])
    _, rows = await run_loop(
        tmp_path, model, tasks, concurrency=1,
        options={"n": 2, "selector": "judge", "judge_model": judge.register()},
    )  # fmt: skip
    assert len(rows["tasks"]) == 3 and len(judge.calls) == 6
    assert made.count(judge.name) == 1


async def test_judge_model_option_sends_judge_calls_elsewhere(tmp_path: Path) -> None:
    judge = ScriptedModel(Script([], rate=rate_by_number))
    model = ScriptedModel(Script(["The answer is 2.", "The answer is 6."]))
    _, rows = await run_loop(
        tmp_path,
        model,
        one_task(tmp_path),
        options={"n": 2, "selector": "judge", "judge_model": judge.register()},
    )
    assert len(model.calls) == 2 and len(judge.calls) == 2
    assert all(is_judge(c.messages) for c in judge.calls)
    assert {c["model"] for c in rows["calls"] if c["role"] == "judge"} == {judge.name}
    assert rows["tasks"][0]["final_answer"] == "6"
    await user_error(
        run_loop(
            tmp_path,
            model,
            one_task(tmp_path),
            options={"selector": "judge", "judge_model": "scripted/nope"},
        ),
        "unknown scripted model 'nope'",
    )


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n": 0}, "best-of-n option n: Input should be greater than or equal to 1"),
        ({"n": 257}, "best-of-n option n: Input should be less than or equal to 256"),
        ({"selector": "best"}, "best-of-n option selector: Input should be 'verifier', "),
        ({"weight_by": "votes"}, "best-of-n option weight_by: Input should be"),
        ({"batch_size": 0}, "best-of-n option batch_size"),
        ({"max_rounds": 2}, "best-of-n option max_rounds: Extra inputs are not permitted"),
        ({"selector": "reward"}, "needs -o reward_api_base=URL and -o reward_model=NAME"),
        (
            {"selector": "weighted", "weight_by": "reward", "reward_model": "rm"},
            "needs -o reward_api_base=URL",
        ),
        (
            {"selector": "reward", "reward_api_base": "localhost:1", "reward_model": "rm"},
            "must start with http:// or https://",
        ),
        (
            {
                "selector": "reward",
                "reward_api_base": "http://127.0.0.1:9",
                "reward_model": "rm",
                "reward_api_key_env": "LW_TEST_NO_SUCH_KEY",
            },
            r"needs \$LW_TEST_NO_SUCH_KEY in the environment",
        ),
    ],
)
async def test_bad_options_are_one_line_user_errors(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    model = ScriptedModel(Script(MIXED))
    msg = await user_error(run_loop(tmp_path, model, one_task(tmp_path), options=options), message)
    assert "\n" not in msg
    assert model.calls == []


# -- text and code -------------------------------------------------------------------------------


async def test_text_tasks_vote_over_whole_normalised_texts(tmp_path: Path) -> None:
    tasks = text_task(tmp_path, "Capital of France?")
    model = ScriptedModel(Script(["Lyon", "Paris", "paris ", "PARIS", "Lyon"]))
    _, rows = await run_loop(tmp_path, model, tasks, options={"n": 5})
    assert final(rows)["content"] == "Paris"
    rec = vote_record(rows)
    assert (rec["votes"], rec["used"]) == ({"lyon": 2.0, "paris": 3.0}, "majority")
    assert last_user(model.calls[0].messages) == "Capital of France?"


async def test_code_tasks_use_code_max_tokens_and_vote_over_programs(tmp_path: Path) -> None:
    tasks = untested_code_task(tmp_path)
    one = "```python\ndef f():\n    return 1\n```"
    model = ScriptedModel(Script(["```python\ndef f():\n    return 2\n```", one, one]))
    _, rows = await run_loop(
        tmp_path, model, tasks, options={"n": 3, "max_tokens": 50, "code_max_tokens": 99}
    )
    assert {c.params.max_tokens for c in model.calls} == {99}
    assert "```python" in last_user(model.calls[0].messages)
    assert final(rows)["node_id"] == gens(rows)[1]["node_id"]


# -- verification only where the selection reads it --------------------------------------------


@pytest.mark.parametrize(
    ("options", "uses"),
    [
        ({}, True),  # the verifier selector picks a passing sample
        ({"selector": "majority"}, False),
        ({"selector": "logprob"}, False),
        ({"selector": "judge"}, False),
        ({"selector": "weighted"}, False),  # weighted by logprob
        ({"selector": "weighted", "weight_by": "judge"}, False),
        ({"selector": "weighted", "weight_by": "verifier"}, True),
        ({"selector": "majority", "rejection": True}, True),  # stops at the first verified
    ],
)
def test_uses_verdicts_only_when_the_selection_reads_them(
    options: dict[str, Any], uses: bool
) -> None:
    assert BEST_OF_N.uses_verdicts(BestOfNOptions(**options)) is uses
    assert "--verifier self" in BEST_OF_N.description  # how to ask for labels anyway


def answer_or_check(call: ModelCall) -> str:
    """Every sample answers 5; every self-check says CORRECT."""
    return "CORRECT." if call.params.role == "verifier" else RIGHT


async def test_majority_under_auto_pays_for_no_verifier(tmp_path: Path) -> None:
    tasks = write_jsonl(tmp_path / "six.jsonl", [math_task(f"t{i}") for i in range(6)])
    options = {"n": 4, "selector": "majority"}
    model = ScriptedModel(answer_or_check)
    result, rows = await run_loop(tmp_path, model, tasks, verifier="auto", options=options)
    assert Counter(c.params.role for c in model.calls) == {"generator": 24}
    assert Counter(c["role"] for c in rows["calls"]) == {"generator": 24}
    assert [v for v in rows["verdicts"] if v["stage"] == "in_loop"] == []
    assert result.summary["stop_reasons"] == {"selected: majority": 6}
    assert all(t["graded"] for t in rows["tasks"])  # the grader still grades every answer

    # Asked for by name, the self-check labels every sample.
    model = ScriptedModel(answer_or_check)
    _, rows = await run_loop(
        tmp_path, model, tasks, verifier="self", options=options, db=str(tmp_path / "self.duckdb")
    )
    assert Counter(c.params.role for c in model.calls) == {"generator": 24, "verifier": 24}
    in_loop = [v for v in rows["verdicts"] if v["stage"] == "in_loop"]
    assert len(in_loop) == 24 and all(v["passed"] for v in in_loop)
    assert {n["score"] for n in gens(rows)} == {1.0}
