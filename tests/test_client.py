"""The model client, driven by the scripted model: retries, n>1, cache, budgets, accounting."""

from __future__ import annotations

import time
from typing import Any

import pytest
from loopwright.loops.errors import BudgetExhausted, ModelCallError, UserError
from loopwright.loops.models.budget import Budget, BudgetLimits
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import CallContext, ClientConfig, check_model
from loopwright.loops.models.scripted import Fault, ScriptedModel
from loopwright.traces.store import TraceStore
from loopwright.traces.writer import TraceWriter

MSG = [{"role": "user", "content": "what is 7 * 8"}]
RETRYABLE = ["rate_limit", "timeout", "server_error", "connection", "malformed"]


def _client(model: ScriptedModel, writer: TraceWriter | None = None, **cfg: Any) -> ModelClient:
    cfg.setdefault("backoff_base_s", 0.0)
    return ModelClient(ClientConfig(model=model.register(), **cfg), writer=writer)


def _calls(store: TraceStore) -> list[dict[str, Any]]:
    return store.query("SELECT * FROM calls ORDER BY created_at, sample_index")


async def _warm_up() -> None:
    """The first litellm call in a process is slow; keep it out of timed sections."""
    await _client(ScriptedModel(["warm"])).sample(MSG)


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
    await _warm_up()
    control = _client(ScriptedModel([Fault("rate_limit"), "ok"]))
    t0 = time.perf_counter()
    await control.sample(MSG)
    assert time.perf_counter() - t0 < 0.25, "without Retry-After and zero backoff it is quick"

    model = ScriptedModel([Fault("rate_limit", retry_after=0.3), "ok"])
    client = _client(model, backoff_base_s=0.0)
    t0 = time.perf_counter()
    [s] = await client.sample(MSG)
    assert time.perf_counter() - t0 >= 0.3
    assert s.text == "ok"
    assert len(model.calls) == 2


async def test_retry_after_is_capped_by_backoff_max() -> None:
    await _warm_up()
    client = _client(
        ScriptedModel([Fault("rate_limit", retry_after=100), "ok"]), backoff_max_s=0.05
    )
    t0 = time.perf_counter()
    await client.sample(MSG)
    assert time.perf_counter() - t0 < 2.0


async def test_exponential_backoff_without_a_hint() -> None:
    await _warm_up()
    client = _client(
        ScriptedModel([Fault("server_error"), Fault("server_error"), "ok"]), backoff_base_s=0.1
    )
    t0 = time.perf_counter()
    await client.sample(MSG)
    # Waits are base * 2**k, jittered down to at most half: >= 0.05 + 0.1.
    assert time.perf_counter() - t0 >= 0.15


async def test_bad_request_is_never_retried(store: TraceStore, writer: TraceWriter) -> None:
    model = ScriptedModel([Fault("bad_request"), "never reached"])
    client = _client(model, writer)

    with pytest.raises(ModelCallError, match="BadRequest"):
        await client.sample(MSG)

    assert len(model.calls) == 1
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
    client = _client(model, writer, max_attempts=3)

    with pytest.raises(ModelCallError, match=r"after 3 attempt"):
        await client.sample(MSG, seed=4, context=CallContext(run_id="R", task_id="T"))

    assert len(model.calls) == 3
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
    assert [c.params.get("n") for c in model.calls] == [4, 4, 4, 4]
    assert {c.params.get("seed") for c in model.calls} == {9}
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
    assert all(c.params.get("n") in (None, 1) for c in model.calls)
    assert sorted(c.params.get("seed") for c in model.calls) == [10, 11, 12]
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
    assert all("n" not in c.params for c in model.calls)


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
    with pytest.raises(UserError, match="scripted model"):
        check_model("scripted/no-such-script")


async def test_in_process_models_are_not_timed_out() -> None:
    """A slow in-process generation is waited for, not abandoned and retried: the engine
    would go on generating the abandoned request while the retry queues the same work."""

    def slow(messages: list[dict[str, Any]], i: int) -> str:
        time.sleep(5.3)  # longer than timeout_s plus the client's 5 s backstop
        return "done"

    model = ScriptedModel(slow)
    client = _client(model, timeout_s=0.05, max_attempts=2)
    [s] = await client.sample(MSG)
    assert s.text == "done" and len(model.calls) == 1


def test_our_litellm_providers_are_appended_not_replacing_the_users() -> None:
    import litellm
    from loopwright.loops.models import providers

    saved = list(litellm.custom_provider_map)
    mine = {"provider": "mine", "custom_handler": object()}
    try:
        litellm.custom_provider_map = [mine, *saved]
        providers.install()
        names = [p["provider"] for p in litellm.custom_provider_map]
        assert names[0] == "mine" and litellm.custom_provider_map[0] is mine
        assert names.count("local") == 1 and names.count("scripted") == 1
    finally:
        litellm.custom_provider_map = saved
