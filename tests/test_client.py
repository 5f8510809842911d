"""The model client and the model seam, driven by function and scripted models: retries
(with an injected sleep), n>1, cache, budgets, accounting, and what a model function sees."""

from __future__ import annotations

import asyncio
import json
import pickle
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
from loop_testkit import Sleeps
from loopwright.loops.errors import BudgetExhausted, ModelCallError, UserError
from loopwright.loops.models.base import CallParams, Completion, Model, ModelCall
from loopwright.loops.models.budget import Budget, BudgetLimits
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import CallContext, ClientConfig, check_model
from loopwright.loops.models.function_model import FunctionModel
from loopwright.loops.models.retry import (
    BadRequest,
    RetryPolicy,
    ServerError,
    is_model_error,
    is_retryable,
)
from loopwright.loops.models.scripted import Fault, ScriptedModel
from loopwright.traces.store import TraceStore
from loopwright.traces.writer import TraceWriter

MSG = [{"role": "user", "content": "what is 7 * 8"}]
RETRYABLE = ["rate_limit", "timeout", "server_error", "connection", "malformed"]


def _client(
    model: Model,
    writer: TraceWriter | None = None,
    sleep: Sleeps | None = None,
    **cfg: Any,
) -> ModelClient:
    return ModelClient(ClientConfig(**cfg), writer=writer, model=model, sleep=sleep or Sleeps())


def _calls(store: TraceStore) -> list[dict[str, Any]]:
    return store.query("SELECT * FROM calls ORDER BY created_at, sample_index")


# -- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", RETRYABLE)
async def test_transient_faults_are_retried_and_attempts_recorded(
    kind: str, store: TraceStore, writer: TraceWriter
) -> None:
    model = ScriptedModel([Fault(kind), Fault(kind), "fifty-six"])
    client = _client(model, writer)
    ctx = CallContext(run_id="R", task_id="T", loop="self_refine", round=2, role="generator")

    [s] = await client.sample(MSG, context=ctx)

    assert s.text == "fifty-six"
    assert len(model.calls) == 3
    writer.flush()
    [row] = _calls(store)
    assert row["attempts"] == 3
    assert row["error"] is None
    assert row["output"] == "fifty-six"
    assert (row["run_id"], row["task_id"], row["loop"], row["round"], row["role"]) == (
        "R",
        "T",
        "self_refine",
        2,
        "generator",
    )


async def test_retry_after_is_honoured() -> None:
    model = ScriptedModel([Fault("rate_limit", retry_after=0.3), "ok"])
    sleeps = Sleeps()
    [s] = await _client(model, sleep=sleeps, backoff_base_s=7.0).sample(MSG)
    assert s.text == "ok"
    assert len(model.calls) == 2
    assert sleeps.delays == [0.3]  # the provider's wait, not the backoff's


async def test_retry_after_is_capped_by_backoff_max() -> None:
    model = ScriptedModel([Fault("rate_limit", retry_after=100), "ok"])
    sleeps = Sleeps()
    await _client(model, sleep=sleeps, backoff_max_s=0.05).sample(MSG)
    assert sleeps.delays == [0.05]


async def test_exponential_backoff_without_a_hint() -> None:
    faults: list[str | Fault] = [Fault("server_error")] * 4
    model = ScriptedModel([*faults, "ok"])
    sleeps = Sleeps()
    await _client(model, sleep=sleeps, backoff_base_s=0.1, backoff_max_s=0.5).sample(MSG)
    # The k-th wait is base * 2**(k-1), capped, and jittered down to at most half.
    d = sleeps.delays
    assert len(d) == 4
    for got, full in zip(d, [0.1, 0.2, 0.4, 0.5], strict=True):
        assert full / 2 <= got <= full


def test_retry_policy_delays_grow_and_honour_retry_after() -> None:
    policy = RetryPolicy(backoff_base_s=1.0, backoff_max_s=60.0)
    for k, full in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0)]:
        assert full / 2 <= policy.delay(ServerError("x"), k) <= full
    assert policy.delay(Fault("rate_limit", retry_after=2.5).error(), 3) == 2.5


async def test_bad_request_is_never_retried(store: TraceStore, writer: TraceWriter) -> None:
    model = ScriptedModel([Fault("bad_request"), "never reached"])
    sleeps = Sleeps()
    client = _client(model, writer, sleep=sleeps)

    with pytest.raises(ModelCallError, match="BadRequest"):
        await client.sample(MSG)

    assert len(model.calls) == 1
    assert sleeps.delays == []
    writer.flush()
    [row] = _calls(store)
    assert row["error"] and "400" in row["error"]
    assert row["output"] is None


async def test_failed_call_records_the_real_number_of_attempts(
    store: TraceStore, writer: TraceWriter
) -> None:
    client = _client(ScriptedModel([Fault("bad_request")]), writer)
    with pytest.raises(ModelCallError):
        await client.sample(MSG)
    writer.flush()
    [row] = _calls(store)
    assert row["attempts"] == 1


async def test_gives_up_after_max_attempts(store: TraceStore, writer: TraceWriter) -> None:
    model = ScriptedModel([Fault("server_error")] * 5 + ["too late"])
    sleeps = Sleeps()
    client = _client(model, writer, sleep=sleeps, max_attempts=3)

    with pytest.raises(ModelCallError, match=r"after 3 attempt"):
        await client.sample(MSG, seed=4, context=CallContext(run_id="R", task_id="T"))

    assert len(model.calls) == 3
    assert len(sleeps.delays) == 2  # between the tries, none after the last
    writer.flush()
    [row] = _calls(store)
    assert row["error"] and "500" in row["error"]
    assert row["output"] is None
    assert row["attempts"] == 3
    assert (row["run_id"], row["task_id"], row["seed"]) == ("R", "T", 4)
    # A failed request is never cached.
    assert store.query("SELECT count(*) AS n FROM call_cache") == [{"n": 0}]


async def test_script_exhausted_surfaces_as_model_call_error() -> None:
    model = ScriptedModel(["only one"])
    client = _client(model, max_attempts=2)
    await client.sample(MSG)
    with pytest.raises(ModelCallError, match=r"has 1 replies but was called \d+ times"):
        await client.sample(MSG)


async def test_script_exhausted_is_not_retried() -> None:
    model = ScriptedModel(["only one"])
    client = _client(model, max_attempts=3)
    await client.sample(MSG)
    with pytest.raises(ModelCallError):
        await client.sample(MSG)
    assert len(model.calls) == 2


async def test_n_must_be_positive() -> None:
    model = ScriptedModel(["x"])
    with pytest.raises(ValueError):
        await _client(model).sample(MSG, n=0)
    assert model.calls == []


# -- n > 1 ---------------------------------------------------------------------------------


async def test_n_is_one_request_when_supported(store: TraceStore, writer: TraceWriter) -> None:
    model = ScriptedModel(["a", "b", "c", "d"], supports_n=True)
    samples = await _client(model, writer).sample(MSG, n=4, seed=9)

    assert [s.text for s in samples] == ["a", "b", "c", "d"]
    assert [s.sample_index for s in samples] == [0, 1, 2, 3]
    # The scripted provider draws one reply per sample, all from one request carrying n=4.
    assert [(c.n, c.index) for c in model.calls] == [(4, 0), (4, 1), (4, 2), (4, 3)]
    assert {c.params.seed for c in model.calls} == {9}
    writer.flush()
    rows = _calls(store)
    assert len(rows) == 4
    assert len({r["request_id"] for r in rows}) == 1
    assert sorted(r["sample_index"] for r in rows) == [0, 1, 2, 3]
    assert {r["n"] for r in rows} == {4}
    assert len({r["call_id"] for r in rows}) == 4


async def test_n_fans_out_with_distinct_seeds_when_unsupported(
    store: TraceStore, writer: TraceWriter
) -> None:
    model = ScriptedModel(["a", "b", "c"], supports_n=False)
    samples = await _client(model, writer).sample(MSG, n=3, seed=10)

    assert len(model.calls) == 3
    assert all(c.n == 1 for c in model.calls)
    assert sorted(c.params.seed or 0 for c in model.calls) == [10, 11, 12]
    assert [s.sample_index for s in samples] == [0, 1, 2]
    assert sorted(s.text for s in samples) == ["a", "b", "c"]
    writer.flush()
    rows = _calls(store)
    assert sorted(r["sample_index"] for r in rows) == [0, 1, 2]
    assert {r["n"] for r in rows} == {3}


async def test_fan_out_without_a_seed_still_draws_n_samples() -> None:
    model = ScriptedModel(["a", "b"], supports_n=False)
    samples = await _client(model).sample(MSG, n=2, temperature=0.9)
    assert sorted(s.text for s in samples) == ["a", "b"]
    assert len(model.calls) == 2
    assert all(c.n == 1 and c.params.seed is None for c in model.calls)


# -- cache ---------------------------------------------------------------------------------


async def test_seeded_repeat_is_a_cache_hit(store: TraceStore, writer: TraceWriter) -> None:
    model = ScriptedModel(["first", "second"], prompt_tokens_per_call=5)
    client = _client(model, writer)

    [a] = await client.sample(MSG, seed=1, temperature=0.8)
    writer.flush()
    [b] = await client.sample(MSG, seed=1, temperature=0.8)

    assert len(model.calls) == 1
    assert a.cache_hit is False and b.cache_hit is True
    assert b.text == "first"
    assert (b.prompt_tokens, b.completion_tokens) == (a.prompt_tokens, a.completion_tokens)
    assert b.call_id != a.call_id
    writer.flush()
    rows = _calls(store)
    assert [r["cache_hit"] for r in rows] == [False, True]
    assert rows[0]["cache_key"] is not None
    assert rows[0]["cache_key"] == rows[1]["cache_key"]


async def test_cache_key_depends_on_seed_and_messages(writer: TraceWriter) -> None:
    model = ScriptedModel(["a", "b", "c"])
    client = _client(model, writer)
    await client.sample(MSG, seed=1)
    writer.flush()
    [b] = await client.sample(MSG, seed=2)
    [c] = await client.sample([{"role": "user", "content": "something else"}], seed=1)
    assert (b.text, c.text) == ("b", "c")
    assert not b.cache_hit and not c.cache_hit
    assert len(model.calls) == 3


@pytest.mark.parametrize("supports_n", [True, False])
async def test_n_samples_are_n_cache_entries(
    supports_n: bool, store: TraceStore, writer: TraceWriter
) -> None:
    model = ScriptedModel(["s0", "s1", "s2", "x3", "x4", "x5", "x6"], supports_n=supports_n)
    client = _client(model, writer)

    first = await client.sample(MSG, n=3, seed=1)
    writer.flush()
    key = _calls(store)[0]["cache_key"]
    cached = store.query(
        "SELECT sample_index, output FROM call_cache WHERE cache_key = ? ORDER BY 1", [key]
    )
    assert [r["sample_index"] for r in cached] == [0, 1, 2]
    assert [r["output"] for r in cached] == [s.text for s in first]
    assert len({r["output"] for r in cached}) == 3

    again = await client.sample(MSG, n=3, seed=1)
    assert len(model.calls) == 3
    assert [s.text for s in again] == [s.text for s in first]
    assert [s.sample_index for s in again] == [0, 1, 2]
    assert all(s.cache_hit for s in again)

    fewer = await client.sample(MSG, n=2, seed=1)
    assert [s.text for s in fewer] == [s.text for s in first[:2]]
    assert len(model.calls) == 3

    more = await client.sample(MSG, n=4, seed=1)  # only 3 cached: a fresh request
    assert not any(s.cache_hit for s in more)
    assert len(model.calls) == 7


async def test_unseeded_sampling_is_never_cached(store: TraceStore, writer: TraceWriter) -> None:
    model = ScriptedModel(["a", "b"])
    client = _client(model, writer)
    await client.sample(MSG, temperature=0.7)
    writer.flush()
    [b] = await client.sample(MSG, temperature=0.7)
    assert b.text == "b" and not b.cache_hit
    assert len(model.calls) == 2
    writer.flush()
    assert store.query("SELECT count(*) AS n FROM call_cache") == [{"n": 0}]
    assert {r["cache_key"] for r in _calls(store)} == {None}


async def test_greedy_unseeded_sampling_is_cached(writer: TraceWriter) -> None:
    model = ScriptedModel(["a", "b"])
    client = _client(model, writer)
    await client.sample(MSG, temperature=0.0)
    writer.flush()
    [b] = await client.sample(MSG, temperature=0.0)
    assert b.text == "a" and b.cache_hit
    assert len(model.calls) == 1


async def test_cache_false_disables_the_cache(store: TraceStore, writer: TraceWriter) -> None:
    model = ScriptedModel(["a", "b"])
    client = _client(model, writer, cache=False)
    await client.sample(MSG, seed=1)
    writer.flush()
    [b] = await client.sample(MSG, seed=1)
    assert b.text == "b" and not b.cache_hit
    assert len(model.calls) == 2
    writer.flush()
    assert store.query("SELECT count(*) AS n FROM call_cache") == [{"n": 0}]


async def test_no_writer_means_no_cache() -> None:
    model = ScriptedModel(["a", "b"])
    client = _client(model)
    await client.sample(MSG, seed=1)
    [b] = await client.sample(MSG, seed=1)
    assert b.text == "b"
    assert len(model.calls) == 2


# -- budgets and accounting ----------------------------------------------------------------


async def test_token_budget_stops_the_next_call() -> None:
    model = ScriptedModel(["a b c", "never"], prompt_tokens_per_call=8)
    client = _client(model)
    budget = Budget(BudgetLimits(tokens=10))

    await client.sample(MSG, budget=budget)
    assert budget.tokens == 11 and budget.calls == 1

    with pytest.raises(BudgetExhausted) as info:
        await client.sample(MSG, budget=budget)
    assert "token" in info.value.reason
    assert len(model.calls) == 1


async def test_call_budget_counts_samples() -> None:
    model = ScriptedModel(["a", "b", "c", "d"])
    client = _client(model)
    budget = Budget(BudgetLimits(calls=3))
    with pytest.raises(BudgetExhausted, match="call budget"):
        await client.sample(MSG, n=4, budget=budget)
    assert model.calls == []
    await client.sample(MSG, n=3, budget=budget)
    assert budget.calls == 3
    with pytest.raises(BudgetExhausted):
        await client.sample(MSG, budget=budget)
    assert len(model.calls) == 3


async def test_child_budget_charges_and_is_limited_by_its_parent() -> None:
    model = ScriptedModel(["a b c", "never"], prompt_tokens_per_call=8)
    client = _client(model)
    run = Budget(BudgetLimits(tokens=10))
    task1 = Budget(parent=run)

    await client.sample(MSG, budget=task1)
    assert (task1.tokens, run.tokens) == (11, 11)
    assert (task1.calls, run.calls) == (1, 1)

    task2 = Budget(parent=run)  # unlimited itself, but the run is spent
    with pytest.raises(BudgetExhausted, match="token budget of 10"):
        await client.sample(MSG, budget=task2)
    assert len(model.calls) == 1


async def test_prompt_tokens_on_sample_zero_completion_tokens_per_sample(
    store: TraceStore, writer: TraceWriter
) -> None:
    model = ScriptedModel(["a b c", "d e", "f"], prompt_tokens_per_call=7)
    budget = Budget()
    samples = await _client(model, writer).sample(MSG, n=3, seed=3, budget=budget)

    assert [s.prompt_tokens for s in samples] == [7, 0, 0]
    assert [s.completion_tokens for s in samples] == [3, 2, 1]
    assert [s.tokens for s in samples] == [10, 2, 1]
    assert (budget.tokens, budget.calls) == (13, 3)
    writer.flush()
    rows = store.query("SELECT sample_index, prompt_tokens, completion_tokens FROM calls")
    assert sorted(
        (r["sample_index"], r["prompt_tokens"], r["completion_tokens"]) for r in rows
    ) == [
        (0, 7, 3),
        (1, 0, 2),
        (2, 0, 1),
    ]


async def test_default_prompt_token_count_is_words_of_the_messages() -> None:
    model = ScriptedModel(["x"])
    [s] = await _client(model).sample(MSG)
    assert s.prompt_tokens == 5  # "what is 7 * 8": five words
    assert s.completion_tokens == 1


# -- check_model ---------------------------------------------------------------------------


def test_check_model_rejects_unknown_model_strings() -> None:
    with pytest.raises(UserError, match="unknown model"):
        check_model("definitely-not-a-model-xyz")


def test_check_model_requires_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        check_model("openai/gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    check_model("openai/gpt-4o-mini")  # no network: only the environment is checked


def test_check_model_rejects_unknown_local_models() -> None:
    with pytest.raises(UserError, match="local/xyz"):
        check_model("local/xyz")


def test_check_model_scripted() -> None:
    check_model(ScriptedModel(["x"]).register())
    check_model(ScriptedModel(["x"], name="named").register())
    with pytest.raises(UserError, match="scripted model"):
        check_model("scripted/no-such-script")


# -- the model seam ------------------------------------------------------------------------


async def test_a_model_function_sees_the_whole_call(store: TraceStore, writer: TraceWriter) -> None:
    seen: list[ModelCall] = []

    def answer(call: ModelCall) -> str:
        seen.append(call)
        return f"{call.params.role} r{call.params.round} #{call.index}"

    model = FunctionModel(answer, name="function/answer")
    ctx = CallContext(run_id="R", task_id="T", loop="best-of-n", round=2, role="critic")
    samples = await _client(model, writer).sample(
        MSG, n=2, seed=7, temperature=0.4, max_tokens=9, stop=["\n"], context=ctx
    )

    assert [s.text for s in samples] == ["critic r2 #0", "critic r2 #1"]
    assert [(c.n, c.index, c.messages) for c in seen] == [(2, 0, MSG), (2, 1, MSG)]
    assert seen[0].params == CallParams(
        temperature=0.4, max_tokens=9, seed=7, stop=("\n",), role="critic", round=2,
        task_id="T", run_id="R",
    )  # fmt: skip
    writer.flush()
    assert {r["model"] for r in _calls(store)} == {"function/answer"}


async def test_a_tools_default_role_reaches_the_model() -> None:
    model = ScriptedModel(lambda call: f"role={call.params.role}")
    [s] = await _client(model).sample(MSG, role="judge")
    assert s.text == "role=judge"


async def test_a_function_model_may_be_async_and_return_completions() -> None:
    async def answer(call: ModelCall) -> Completion:
        await asyncio.sleep(0)
        return Completion(
            text="x", finish_reason="length", prompt_tokens=40, completion_tokens=12,
            cost_usd=0.25, logprob_mean=-0.5,
        )  # fmt: skip

    budget = Budget()
    samples = await _client(FunctionModel(answer)).sample(MSG, n=2, budget=budget)
    assert [(s.prompt_tokens, s.completion_tokens) for s in samples] == [(40, 12), (0, 12)]
    assert [(s.finish_reason, s.logprob_mean, s.cost_usd) for s in samples] == [
        ("length", -0.5, 0.25)
    ] * 2
    assert (budget.tokens, budget.calls, budget.usd) == (64, 2, 0.5)


def _returns_an_int(call: ModelCall) -> Any:
    return 56


def _raises_a_type_error(call: ModelCall) -> str:
    return "The answer is " + call.index  # type: ignore[operator]


@pytest.mark.parametrize("fn", [_returns_an_int, _raises_a_type_error])
async def test_a_bug_in_a_model_function_propagates_untried_and_unrecorded(
    fn: Any, store: TraceStore, writer: TraceWriter
) -> None:
    model = ScriptedModel(fn)
    sleeps = Sleeps()
    with pytest.raises(TypeError) as info:
        await _client(model, writer, sleep=sleeps).sample(MSG)
    assert not isinstance(info.value, ModelCallError)
    assert len(model.calls) == 1 and sleeps.delays == []
    if fn is _raises_a_type_error:  # the traceback reaches the line that is wrong
        frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
        assert frames[-1] == "_raises_a_type_error"
    else:
        assert "returned int 56" in str(info.value)
    writer.flush()
    assert _calls(store) == []  # not a provider's failure: no failed call row


async def test_a_bug_in_a_model_function_fails_its_task_with_the_traceback(
    tmp_path: Path,
) -> None:
    from loopwright.loops.execution.runner import RunConfig, run

    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"id": "t1", "prompt": "2 + 2?", "kind": "math"}) + "\n")
    model = ScriptedModel(_returns_an_int)
    cfg = RunConfig(
        loop="best-of-n", options={"n": 1}, tasks=str(tasks), model=model.register(),
        db=str(tmp_path / "t.duckdb"), verifier="none",
    )  # fmt: skip
    result = await run(cfg)
    assert result.summary["failed"] == 1
    assert len(model.calls) == 1  # not retried
    with TraceStore(cfg.db, read_only=True) as s:
        [task] = s.query("SELECT status, error FROM tasks")
        assert s.query("SELECT count(*) AS n FROM calls") == [{"n": 0}]
    assert task["status"] == "failed"
    assert task["error"].startswith("TypeError: ") and "returned int 56" in task["error"]
    assert "Traceback (most recent call last)" in task["error"]


async def test_a_model_error_raised_by_a_function_is_a_failed_call() -> None:
    def busy(call: ModelCall) -> str:
        if call.index < 2:
            raise ServerError("overloaded")
        if call.index == 2:
            raise BadRequest("no such parameter")
        return "never"

    sleeps = Sleeps()
    client = _client(FunctionModel(busy), sleep=sleeps)
    with pytest.raises(ModelCallError, match=r"BadRequest: no such parameter \(after 3"):
        await client.sample(MSG)
    assert len(sleeps.delays) == 2


def test_provider_errors_are_recognised_without_being_imported_here() -> None:
    import httpx
    import litellm

    req = httpx.Request("POST", "http://x.invalid/v1")
    retried = [
        litellm.RateLimitError("r", llm_provider="p", model="m", response=httpx.Response(429, request=req)),
        litellm.Timeout("t", model="m", llm_provider="p"),
        litellm.APIConnectionError("c", llm_provider="p", model="m", request=req),
        litellm.InternalServerError("s", llm_provider="p", model="m", response=httpx.Response(500, request=req)),
        litellm.ServiceUnavailableError("u", llm_provider="p", model="m", response=httpx.Response(503, request=req)),
        httpx.ConnectError("refused"),
        TimeoutError(),
        ServerError("x"),
    ]  # fmt: skip
    for exc in retried:
        assert is_model_error(exc) and is_retryable(exc), exc
    refused = litellm.BadRequestError("b", model="m", llm_provider="p")
    assert is_model_error(refused) and not is_retryable(refused)
    for bug in (TypeError("x"), ValueError("y"), KeyError("z")):
        assert not is_model_error(bug) and not is_retryable(bug)


async def test_a_model_passed_as_an_object_needs_no_registry(
    store: TraceStore, writer: TraceWriter
) -> None:
    model = ScriptedModel(["a"], name="unregistered-object")
    client = ModelClient(writer=writer, model=model)
    assert client.model == "scripted/unregistered-object"
    [s] = await client.sample(MSG)
    assert s.text == "a"
    writer.flush()
    assert [r["model"] for r in _calls(store)] == ["scripted/unregistered-object"]


def _echo(call: ModelCall) -> str:
    return f"{call.index}: {call.messages[-1]['content']}"


async def test_models_pickle_with_their_function() -> None:
    scripted = pickle.loads(pickle.dumps(ScriptedModel(_echo, name="echo", supports_n=False)))
    function = pickle.loads(pickle.dumps(FunctionModel(_echo, prompt_tokens_per_call=3)))
    assert (scripted.name, scripted.supports_n) == ("scripted/echo", False)
    assert function.name == f"function/{__name__}._echo"
    [a] = await _client(scripted).sample(MSG)
    [b] = await _client(function).sample(MSG)
    assert (a.text, b.text, b.prompt_tokens) == ("0: what is 7 * 8", "0: what is 7 * 8", 3)
    assert len(scripted.calls) == 1


def test_resolve_model_picks_the_implementation() -> None:
    from loopwright.loops.models.engine_model import EngineModel
    from loopwright.loops.models.http_transport import HttpModel
    from loopwright.loops.models.litellm_model import LiteLLMModel
    from loopwright.loops.models.providers import resolve_model

    local = resolve_model(ClientConfig(model="local/smollm2-135m", in_flight=24))
    assert isinstance(local, EngineModel) and local.in_process and local.in_flight == 24
    scripted = ScriptedModel(["x"])
    assert resolve_model(ClientConfig(model=scripted.register())) is scripted
    base = "http://127.0.0.1:9/v1"
    http = resolve_model(ClientConfig(model="hosted_vllm/q", api_base=base))
    assert isinstance(http, HttpModel) and not http.in_process
    forced = resolve_model(ClientConfig(model="hosted_vllm/q", api_base=base, transport="litellm"))
    assert isinstance(forced, LiteLLMModel)
    hosted = resolve_model(ClientConfig(model="openai/gpt-4o-mini"))
    assert isinstance(hosted, LiteLLMModel) and hosted.supports_n


_IMPORTS = """
import asyncio, sys
import loopwright.loops.models.client, loopwright.loops.models.config
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import ClientConfig, check_model
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.loops.models.providers import resolve_model
assert "litellm" not in sys.modules, "imported with the client"
model = ScriptedModel(["a"])
check_model(model.register())
asyncio.run(ModelClient(model.name).sample([{"role": "user", "content": "q"}]))
resolve_model(ClientConfig(model="local/smollm2-135m"))
resolve_model(ClientConfig(model="hosted_vllm/q", api_base="http://127.0.0.1:9/v1"))
check_model("hosted_vllm/q", "http://127.0.0.1:9/v1")
assert "litellm" not in sys.modules, "imported for a scripted, local or http model"
"""


def test_litellm_is_imported_only_for_a_litellm_model() -> None:
    """(test_resolve_model_picks_the_implementation makes a litellm model, which imports it.)"""
    r = subprocess.run(
        [sys.executable, "-c", _IMPORTS], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]


async def test_in_process_models_are_not_timed_out() -> None:
    """A slow in-process generation is waited for, not abandoned and retried: the engine
    would go on generating the abandoned request while the retry queues the same work."""

    async def slow(call: ModelCall) -> str:
        await asyncio.sleep(5.3)  # longer than timeout_s plus the client's 5 s backstop
        return "done"

    model = ScriptedModel(slow)
    client = _client(model, timeout_s=0.05, max_attempts=2)
    [s] = await client.sample(MSG)
    assert s.text == "done" and len(model.calls) == 1
