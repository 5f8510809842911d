"""GRPO rollouts from the embedded engine serving the policy (loops/improve/rollout_engine.py).

Slow: loads SmolLM2-135M into transformers, serves exported GGUF files with llama.cpp and
runs two real GRPOTrainer steps with the engine as TRL's ``rollout_func``.
"""

from __future__ import annotations

import copy
import filecmp
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl", reason="needs the train extra: pip install 'loopwright[train]'")

from loopwright.loops.improve import train as T
from loopwright.loops.improve.config import GrpoConfig
from loopwright.loops.improve.export import export_gguf
from loopwright.loops.improve.rollout_engine import (
    EngineSample,
    PolicyEngine,
    _chat_ids,
    _groups,
    engine_trainer_kwargs,
    make_rollout_func,
    policy_arrays,
    trl_generation_kwargs,
    use_engine,
)

pytestmark = [pytest.mark.slow, pytest.mark.local_model]

PROMPTS = [f"What is {a} plus {b}?" for a, b in ((2, 3), (4, 8), (5, 3), (6, 8))] + [
    "Name a colour.",
    "Explain what a prime number is.",
]


@pytest.fixture(scope="module")
def base() -> T.BaseWeights:
    return T.resolve_base("local/smollm2-135m")


@pytest.fixture(scope="module")
def lora_policy(base: T.BaseWeights) -> tuple[Any, Any]:
    """A LoRA policy after a few real SGD steps (a GRPO-like weight change), and its
    tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model, tok = T.load_model(base, "cpu")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))  # fmt: skip
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    chat = [{"role": "user", "content": "What is 2 plus 2?"},
            {"role": "assistant", "content": "Let me think. 2 plus 2 is 4. The answer is 4."}]  # fmt: skip
    x = torch.tensor([_chat_ids(tok, chat)])
    for _ in range(3):
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model, tok


def test_lora_policy_is_merged_into_copies_and_the_model_is_untouched(
    lora_policy: tuple[Any, Any],
) -> None:
    import numpy as np

    model, _tok = lora_policy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = policy_arrays(model)
    after = model.state_dict()
    assert all((before[k] == after[k]).all() for k in before)  # nothing merged in place
    merged = copy.deepcopy(model).merge_and_unload()
    want = {k: v.detach().numpy() for k, v in merged.state_dict().items()}
    assert set(got) == set(want)  # plain Hugging Face names, no lora_/base_layer left
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-6)
    base_q = before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    # the LoRA moved the weights: the served ones are not the base ones
    assert np.abs(got["model.layers.0.self_attn.q_proj.weight"] - base_q.numpy()).max() > 1e-4


def test_engine_greedy_equals_transformers_after_an_update(
    base: T.BaseWeights, lora_policy: tuple[Any, Any], tmp_path: Path
) -> None:
    """The served policy's greedy tokens equal transformers' on the trained (LoRA) model,
    except at a near-tie: where they first differ, the engine chose transformers' runner-up,
    within a logit margin of 0.01 (F32) or 0.05 (F16) (measured: 0.0009 and 0.003)."""
    import torch

    model, tok = lora_policy
    ids = [_chat_ids(tok, [{"role": "user", "content": p}]) for p in PROMPTS]
    want = []
    for i in ids:
        with torch.no_grad():
            out = model.generate(torch.tensor([i]), max_new_tokens=32, do_sample=False)
        want.append(out[0, len(i) :].tolist())
    for qtype, margin in (("F32", 0.01), ("F16", 0.05)):
        engine = PolicyEngine(base.template, tmp_path / qtype, slots=4, ctx=256, export=qtype)
        try:
            engine.sync(model)
            got = engine.generate_ids(ids, 1, max_tokens=32, temperature=0.0, seed=0)
        finally:
            engine.close()
        exact = 0
        for prompt_ids, w, (sample,) in zip(ids, want, got, strict=True):
            g = sample.token_ids
            if g == w:
                exact += 1
                continue
            k = next(j for j in range(min(len(w), len(g))) if w[j] != g[j])
            assert k >= 4, (qtype, k)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt_ids + w])).logits[0]
            row = logits[len(prompt_ids) + k - 1]
            assert int(row.argmax()) == w[k]
            assert float(row[w[k]] - row[g[k]]) < margin, (qtype, k)
        assert exact >= len(PROMPTS) - 2, (qtype, exact)


def test_later_syncs_write_what_export_gguf_writes_alternating_files(
    base: T.BaseWeights, lora_policy: tuple[Any, Any], tmp_path: Path
) -> None:
    import torch

    model, tok = lora_policy
    engine = PolicyEngine(base.template, tmp_path / "e", slots=2, ctx=256, export="F16")
    try:
        engine.sync(model, step=3)
        first = engine.path
        assert first is not None and first.name == "policy-a.gguf" and engine.synced_step == 3
        lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n)
        saved = lora_b.detach().clone()
        with torch.no_grad():
            lora_b.add_(0.01)  # the policy moves
        try:
            engine.sync(model, step=4)
        finally:
            with torch.no_grad():
                lora_b.copy_(saved)  # restored for the other tests
        second = engine.path
        assert second is not None and second.name == "policy-b.gguf"
        ref = export_gguf(policy_arrays(_shifted(model, lora_b)), base.template,
                          tmp_path / "ref.gguf", "F16")  # fmt: skip
        assert filecmp.cmp(ref, second, shallow=False)  # the fast path's bytes
        assert not filecmp.cmp(first, second, shallow=False)
        assert not list((tmp_path / "e").glob(".*.tmp"))
        # the new server serves: a completion comes back with ids that decode to its text
        (sample,) = engine.generate_ids([_chat_ids(tok, [{"role": "user", "content": "Hi"}])],
                                        1, max_tokens=8, temperature=0.0, seed=0)[0]  # fmt: skip
        assert sample.token_ids and sample.text == tok.decode(sample.token_ids,
                                                              skip_special_tokens=True)  # fmt: skip
    finally:
        engine.close()


def _shifted(model: Any, param: Any) -> Any:
    """A copy of ``model`` with ``param`` moved as in the test above."""
    import torch

    twin = copy.deepcopy(model)
    name = next(n for n, p in model.named_parameters() if p is param)
    with torch.no_grad():
        dict(twin.named_parameters())[name].add_(0.01)
    return twin


def test_engine_chat_template_is_the_tokenizers(
    base: T.BaseWeights, lora_policy: tuple[Any, Any], tmp_path: Path
) -> None:
    """The GGUF's template (the engine's chat path) renders the prompt the HF tokenizer's
    template gives: same prompt token count, same greedy continuation."""
    model, tok = lora_policy
    engine = PolicyEngine(base.template, tmp_path / "e", slots=2, ctx=256, export="F16")
    try:
        engine.sync(model)
        chats = [[{"role": "system", "content": "Keep answers short."},
                  {"role": "user", "content": p}] for p in PROMPTS[:2]]  # fmt: skip
        chats.append([{"role": "user", "content": PROMPTS[2]}])  # the default system prompt
        by_chat = engine.generate(chats, 1, max_tokens=12, temperature=0.0, seed=0)
        ids = [_chat_ids(tok, c) for c in chats]
        by_ids = engine.generate_ids(ids, 1, max_tokens=12, temperature=0.0, seed=0)
    finally:
        engine.close()
    for i, ((a,), (b,)) in enumerate(zip(by_chat, by_ids, strict=True)):
        assert a.prompt_tokens == b.prompt_tokens == len(ids[i])
        assert a.token_ids == b.token_ids and a.text == b.text


def test_grpo_trainer_steps_on_engine_rollouts(base: T.BaseWeights, tmp_path: Path) -> None:
    """Two real GRPOTrainer steps with the engine as rollout_func: prompt ids are the
    tokenizer's, groups stay together in TRL's order, the engine syncs once per step on
    the updated weights, and rewards see the completions the engine sampled."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    model, tok = T.load_model(base, "cpu")
    cfg = GrpoConfig(steps=2, generations=2, prompts_per_step=2, max_completion_tokens=16,
                     rollout="engine")  # fmt: skip
    seen: list[list[EngineSample]] = []
    conf_kw, trainer_kw, engine = engine_trainer_kwargs(
        cfg, "cpu", tok, base.template, tmp_path / "engine", on_samples=seen.append
    )
    assert conf_kw == {} and engine is not None
    inner = trainer_kw["rollout_func"]
    calls: list[dict[str, Any]] = []

    def rollout(prompts: list[Any], trainer: Any) -> dict[str, Any]:
        weights = trainer.model.model.layers[0].mlp.down_proj.weight.detach().clone()
        out = inner(prompts, trainer)
        calls.append({"prompts": prompts, "out": out, "step": trainer.state.global_step,
                      "synced": engine.synced_step, "weights": weights,
                      "path": engine.path, "timings": dict(engine.timings)})  # fmt: skip
        return out

    rewarded: list[list[str]] = []

    def reward(completions: list[Any], **_: Any) -> list[float | None]:
        texts = [c[-1]["content"] for c in completions]
        rewarded.append(texts)
        return [float(len(t) % 3) for t in texts]  # varied: nonzero advantages

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS])
    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                      num_generations=2, max_completion_length=16, max_steps=2,
                      learning_rate=1e-3, save_strategy="no", report_to="none",
                      use_cpu=True, bf16=False, beta=0.0, gradient_checkpointing=False,
                      disable_tqdm=True, dataloader_pin_memory=False, logging_steps=1)  # fmt: skip
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=ds,
                          processing_class=tok, rollout_func=rollout)  # fmt: skip
    try:
        trainer.train()
    finally:
        engine.close()
    assert [c["step"] for c in calls] == [0, 1] and [c["synced"] for c in calls] == [0, 1]
    assert engine.syncs == 2 and {c["path"].name for c in calls} == {"policy-a.gguf",
                                                                      "policy-b.gguf"}  # fmt: skip
    assert not torch.equal(calls[0]["weights"], calls[1]["weights"])  # step 2 saw an update
    for call, samples, texts in zip(calls, seen, rewarded, strict=True):
        prompts, out = call["prompts"], call["out"]
        assert len(prompts) == 4 and prompts[0] == prompts[1] and prompts[2] == prompts[3]
        assert out["prompt_ids"] == [_chat_ids(tok, p) for p in prompts]
        assert len(out["completion_ids"]) == len(samples) == 4
        assert out["completion_ids"] == [s.token_ids for s in samples]
        assert all(len(lp) == len(ids) for lp, ids in zip(out["logprobs"], out["completion_ids"],
                                                          strict=True))  # fmt: skip
        assert texts == [s.text for s in samples]
        for s, prompt_ids in zip(samples, out["prompt_ids"], strict=True):
            assert 1 <= len(s.token_ids) <= 16
            assert s.prompt_tokens == len(prompt_ids)
            if s.finish_reason == "length":
                assert len(s.token_ids) == 16 and s.token_ids[-1] != tok.eos_token_id
            else:
                assert s.token_ids[-1] == tok.eos_token_id
        assert call["timings"]["sync_s"] > 0 and call["timings"]["generate_s"] > 0


def test_groups_and_backend_choice() -> None:
    a, b = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
    assert _groups([a, a, b, b], 2) == ([a, b], 2)
    assert _groups([a, b, a, b], 2) == ([a, b, a, b], 1)  # not grouped: one sample each
    assert _groups([a, a, b], 2) == ([a, a, b], 1)
    auto = GrpoConfig()
    assert use_engine(auto, "cpu") and not use_engine(auto, "cuda")
    assert use_engine(GrpoConfig(rollout="engine"), "cuda")
    assert not use_engine(GrpoConfig(rollout="trl"), "cpu")
    assert trl_generation_kwargs(auto, "cpu") == {}
    assert trl_generation_kwargs(GrpoConfig(rollout="engine"), "cuda") == {}
    import importlib.util

    vllm = importlib.util.find_spec("vllm") is not None
    assert trl_generation_kwargs(auto, "cuda") == (
        {"use_vllm": True, "vllm_mode": "colocate"} if vllm else {}
    )


def test_rollout_func_syncs_only_when_the_step_changed(tmp_path: Path) -> None:
    """The rollout function's own bookkeeping, on a stand-in engine (no model)."""

    class FakeEngine:
        def __init__(self) -> None:
            self.path: Path | None = None
            self.synced_step: int | None = None
            self.timings: dict[str, float] = {}
            self.synced: list[int | None] = []
            self.asked: list[tuple[list[list[int]], int, dict[str, Any]]] = []

        def sync(self, model: Any, step: int | None = None) -> float:
            self.synced.append(step)
            self.synced_step, self.path = step, tmp_path / "p.gguf"
            return 0.5

        def generate_ids(self, ids: list[list[int]], n: int, **kw: Any) -> Any:
            self.asked.append((ids, n, kw))
            return [[EngineSample(text=f"{i}.{j}", token_ids=[i, j, 2], logprobs=[-1.0] * 3,
                                  finish_reason="stop", prompt_tokens=len(p))
                     for j in range(n)] for i, p in enumerate(ids)]  # fmt: skip

    class Tok:
        def apply_chat_template(self, messages: Any, **_: Any) -> list[int]:
            return [7] + [len(m["content"]) for m in messages]

    class State:
        global_step = 0

    class Trainer:
        state = State()
        model = object()
        num_generations = 3
        temperature = 0.7
        max_completion_length = 20

        class args:
            top_p, top_k, min_p, repetition_penalty = 1.0, 0, None, 1.0

        class accelerator:
            @staticmethod
            def unwrap_model(m: Any) -> Any:
                return m

    engine = FakeEngine()
    got: list[list[EngineSample]] = []
    func = make_rollout_func(engine, Tok(), GrpoConfig(), got.append)  # type: ignore[arg-type]
    p, q = [{"role": "user", "content": "ab"}], [{"role": "user", "content": "abcd"}]
    trainer = Trainer()
    out = func([p, p, p, q, q, q], trainer)
    func([p, p, p, q, q, q], trainer)  # same step: no second sync
    trainer.state.global_step = 1
    func([p, p, p, q, q, q], trainer)
    assert engine.synced == [0, 1]
    ids, n, kw = engine.asked[0]
    assert ids == [[7, 2], [7, 4]] and n == 3
    assert kw["temperature"] == 0.7 and kw["max_tokens"] == 20
    assert kw["sampling"] == {"top_p": 1.0, "top_k": 0, "repeat_penalty": 1.0}
    assert out["prompt_ids"] == [[7, 2]] * 3 + [[7, 4]] * 3
    assert out["logprobs"] is None  # llama.cpp's are at temperature 1, this samples at 0.7
    assert out["completion_ids"] == [[0, 0, 2], [0, 1, 2], [0, 2, 2],
                                     [1, 0, 2], [1, 1, 2], [1, 2, 2]]  # fmt: skip
    assert [s.text for s in got[0]] == ["0.0", "0.1", "0.2", "1.0", "1.1", "1.2"]
    assert len({a[2]["seed"] for a in engine.asked}) == 3  # each call its own seeds
