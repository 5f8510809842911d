"""What a loop works with: its task, model, verifier, budget and options, and the candidates
it made -- one ``LoopContext`` per task, handed to every node as LangGraph's run context.

A node reads it as ``runtime.context`` (``async def node(state, runtime: Runtime[LoopContext
[Opts]])``); a loop written as one function gets it as its argument. Besides the plumbing
(``sample``, ``add_node``, ``record_verdict``) it offers the steps most loops are made of:
``draft``, ``critique``, ``refine``, ``verify``, ``best`` and ``vote``. Each samples through
``sample`` (budgeted, seeded, traced) and records its nodes with role, round, parent and depth
derived from the candidates it is given.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypedDict, TypeVar, overload

from loopwright.loops.models.budget import Budget
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import CallContext, Sample
from loopwright.loops.tasks import Task
from loopwright.loops.verify import LoopVerifier
from loopwright.traces.metrics import tally
from loopwright.traces.records import NodeRecord, Role, VerdictRecord, new_id
from loopwright.traces.writer import TraceWriter
from pydantic import BaseModel

Opts = TypeVar("Opts", bound=BaseModel)
"""A loop's options model; ``LoopContext[Opts].options`` is one."""


class Candidate(TypedDict):
    """One attempt as loop state carries it (its node record is in ``ctx.nodes``)."""

    node_id: str
    parent_id: str | None
    text: str
    answer: str | None
    passed: bool | None
    score: float | None
    feedback: str | None
    logprob: float | None
    round: int
    depth: int


DRAFT_TEMPERATURE = 0.7
CRITIC_TEMPERATURE = 0.3
MAX_TOKENS = 256
CODE_MAX_TOKENS = 384
CRITIC_MAX_TOKENS = 128
NO_FEEDBACK = "The answer did not pass the check."
"""What a refinement is told when neither the caller nor a verifier said what was wrong."""


def derive_seed(seed: int | None, task_id: str, role: str, round_: int, extra: int = 0) -> int:
    """The seed of one model call: the same run seed, task, role, round and repeat give the
    same seed. surrogatepass: an id holding a lone surrogate still gets one."""
    blob = f"{seed}|{task_id}|{role}|{round_}|{extra}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


@dataclass
class LoopContext(Generic[Opts]):
    """Everything one task's loop may touch: model, verifier, budget, trace writer.

    ``task`` is the blind view (``Task.blind()``: no reference, no hidden tests) unless a
    caller builds the context by hand. ``clients`` maps roles to their model's client
    (``--role-model``); a role without one uses ``client``.
    """

    task: Task
    client: ModelClient
    verifier: LoopVerifier | None
    budget: Budget
    options: Opts
    loop: str
    run_id: str = "adhoc"
    seed: int = 0
    writer: TraceWriter | None = None
    nodes: list[NodeRecord] = field(default_factory=list)
    clients: dict[str, ModelClient] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)
    """Per-task scratch space for verifiers (e.g. consistency's reference samples)."""

    pool: dict[tuple[str, str | None], ModelClient] = field(default_factory=dict)
    """The run's clients by (model, api_base): one per model for the whole run, closed with it."""

    candidates: dict[str, Candidate] = field(default_factory=dict)
    """Every candidate this task's loop made, by node id, as last verified: a budget stop
    answers with the best of them, whatever state the graph was in."""

    _calls: Counter[tuple[str, int]] = field(default_factory=Counter, init=False, repr=False)
    """Calls made so far per (role, round) by the step methods: the k-th gets seed extra k."""

    _drafts: int = field(default=0, init=False, repr=False)
    """``draft`` calls so far: the round of the next one."""

    _verifiers: dict[int, tuple[object, LoopVerifier]] = field(
        default_factory=dict, init=False, repr=False
    )
    """Verifiers handed to ``verify`` by id (the object is kept so its id stays its own)."""

    def client_for(self, role: str) -> ModelClient:
        """The client of ``role``'s model (``--role-model ROLE=MODEL``), else the run's."""
        return self.clients.get(role, self.client)

    def client_of(self, model: str, api_base: str | None = None) -> ModelClient:
        """The run's client for ``model`` at ``api_base`` (made once, with the run's retry,
        timeout and cache settings), e.g. a loop option's judge model."""
        if model == self.client.model and api_base == self.client.config.api_base:
            return self.client
        key = (model, api_base)
        if key not in self.pool:
            cfg = self.client.config.model_copy(update={"model": model, "api_base": api_base})
            self.pool[key] = ModelClient(cfg, writer=self.writer)
        return self.pool[key]

    def call_seed(self, role: str, round_: int, extra: int = 0) -> int:
        """A deterministic per-call seed: same run seed, task, role and round -> same seed."""
        return derive_seed(self.seed, self.task.id, role, round_, extra)

    async def sample(
        self,
        messages: list[dict[str, Any]],
        *,
        role: Role,
        round_: int,
        n: int = 1,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
    ) -> list[Sample]:
        """Sample under this task's budget, with a derived seed and full trace provenance."""
        return await self.client_for(role).sample(
            messages,
            n=n,
            temperature=temperature,
            max_tokens=max_tokens,
            stop=stop,
            seed=self.call_seed(role, round_) if seed is None else seed,
            budget=self.budget,
            context=CallContext(
                run_id=self.run_id, task_id=self.task.id, loop=self.loop, round=round_, role=role
            ),
        )

    def add_node(
        self,
        sample: Sample | None,
        *,
        role: Role,
        parent_id: str | None,
        depth: int,
        round_: int,
        content: str | None = None,
        answer: str | None = None,
        score: float | None = None,
    ) -> NodeRecord:
        """Record a node; nodes are written when the task finishes (with is_final set)."""
        node = NodeRecord(
            node_id=sample.node_id if sample else new_id(),
            parent_id=parent_id,
            run_id=self.run_id,
            task_id=self.task.id,
            loop=self.loop,
            model=self.client_for(role).model,
            role=role,
            depth=depth,
            round=round_,
            content=sample.text if sample and content is None else content,
            answer=answer,
            score=score,
        )
        self.nodes.append(node)
        return node

    def record_verdict(self, verdict: VerdictRecord) -> None:
        if self.writer is not None:
            self.writer.write(verdict)

    # -- the steps loops are made of ------------------------------------------------------------

    def _seed(self, role: Role, round_: int) -> int:
        """The seed of the next step call of ``role`` in ``round_``: the first one gets the seed
        ``sample`` would derive, each later one a different seed (so a second draft of the same
        question is a new sample, not the cached first)."""
        k = self._calls[(role, round_)]
        self._calls[(role, round_)] = k + 1
        return self.call_seed(role, round_, extra=k)

    def _max_tokens(self, max_tokens: int | None) -> int:
        if max_tokens is not None:
            return max_tokens
        return CODE_MAX_TOKENS if self.task.kind == "code" else MAX_TOKENS

    def _current(self, cand: Candidate) -> Candidate:
        """``cand`` as last verified (a caller may hold the copy from before ``verify``)."""
        return self.candidates.get(cand["node_id"], cand)

    async def draft(
        self,
        n: int = 1,
        *,
        prompt: str | None = None,
        temperature: float = DRAFT_TEMPERATURE,
        max_tokens: int | None = None,
    ) -> list[Candidate]:
        """``n`` first attempts at the task, sampled in one request (role generator, no
        parent, depth 0). Each call to ``draft`` is a new round: 0, then 1, ...

        ``prompt`` replaces the task's draft prompt (the task text with the answer-format
        instruction of its kind).
        """
        from loopwright.loops.graphs import common

        round_ = self._drafts
        self._drafts += 1
        text = common.draft_prompt(self.task) if prompt is None else prompt
        samples = await self.sample(
            common.messages(text),
            role="generator",
            round_=round_,
            n=n,
            temperature=temperature,
            max_tokens=self._max_tokens(max_tokens),
            seed=self._seed("generator", round_),
        )
        return [
            common.add_candidate(self, s, role="generator", parent_id=None, depth=0, round_=round_)
            for s in samples
        ]

    async def critique(
        self,
        cand: Candidate,
        *,
        temperature: float = CRITIC_TEMPERATURE,
        max_tokens: int = CRITIC_MAX_TOKENS,
    ) -> str:
        """The model's critique of ``cand`` (role critic; recorded as its child, in its round).

        On code the critic also sees the verifier's feedback on ``cand`` (the first failed
        test), when it was verified.
        """
        from loopwright.loops.graphs import common
        from loopwright.loops.prompts import render

        cand = self._current(cand)
        table = "self_refine"
        if self.task.kind == "code":
            key = "critique_code" if cand["feedback"] else "critique_code_untested"
            text = render(
                table,
                key,
                question=self.task.prompt.rstrip(),
                answer=common.shown(self.task, cand),
                test_feedback=cand["feedback"] or "",
            )
        else:
            text = render(table, "critique", question=self.task.prompt, answer=cand["text"])
        [s] = await self.sample(
            common.messages(text, prompts=table),
            role="critic",
            round_=cand["round"],
            temperature=temperature,
            max_tokens=max_tokens,
            seed=self._seed("critic", cand["round"]),
        )
        common.add_note(self, s, role="critic", about=cand)
        return s.text

    async def refine(
        self,
        cand: Candidate,
        feedback: str | None = None,
        *,
        temperature: float = DRAFT_TEMPERATURE,
        max_tokens: int | None = None,
    ) -> Candidate:
        """A revision of ``cand`` (role refiner, its child, one round later).

        The prompt shows ``feedback`` -- by default the verifier's feedback on ``cand``.
        """
        from loopwright.loops.graphs import common
        from loopwright.loops.prompts import render

        cand = self._current(cand)
        round_ = cand["round"] + 1
        flavour = common.flavour(self.task)
        said = feedback if feedback is not None else cand["feedback"]
        text = render(
            common.DRAFT_PROMPTS,
            f"refine_{flavour}",
            question=self.task.prompt.rstrip(),
            answer=(cand["answer"] if flavour == "code" else None) or cand["text"],
            feedback=said or NO_FEEDBACK,
            test_feedback=cand["feedback"] or "",
        )
        [s] = await self.sample(
            common.messages(text),
            role="refiner",
            round_=round_,
            temperature=temperature,
            max_tokens=self._max_tokens(max_tokens),
            seed=self._seed("refiner", round_),
        )
        return common.add_candidate(
            self, s, role="refiner", parent_id=cand["node_id"], depth=cand["depth"] + 1,
            round_=round_,
        )  # fmt: skip

    @overload
    async def verify(self, cands: Candidate, verifier: Any = None) -> Candidate: ...

    @overload
    async def verify(self, cands: Sequence[Candidate], verifier: Any = None) -> list[Candidate]: ...

    async def verify(
        self, cands: Candidate | Sequence[Candidate], verifier: Any = None
    ) -> Candidate | list[Candidate]:
        """Verify one candidate or many (concurrently): passed, score and feedback set, a
        verdict row each. ``verifier`` is the run's in-loop verifier unless one is given (a
        ``LoopVerifier`` instance or class, or a ``@verifier`` function). Without either the
        candidates come back unchanged.
        """
        from loopwright.loops.graphs import common

        chosen = self.verifier if verifier is None else self._given_verifier(verifier)
        if isinstance(cands, dict):
            return await common.verify(self, self._current(cands), verifier=chosen)
        current = [self._current(c) for c in cands]
        return await common.verify_all(self, current, verifier=chosen)

    def _given_verifier(self, obj: Any) -> LoopVerifier:
        """``obj`` as this task's in-loop verifier (made once per task)."""
        from loopwright.loops.verify import as_verifier

        key = id(obj)
        if key not in self._verifiers:
            self._verifiers[key] = (obj, as_verifier(obj).bind(self.task))
        return self._verifiers[key][1]

    def best(self, cands: Sequence[Candidate] | None = None) -> Candidate | None:
        """The best of ``cands`` (default: every candidate so far), as last verified: passing
        before failing, then the higher score, then the later round."""
        from loopwright.loops.graphs import common

        pool = self.candidates.values() if cands is None else map(self._current, cands)
        return common.best(pool)

    def vote(self, cands: Sequence[Candidate]) -> Candidate | None:
        """The first of ``cands`` holding the most common answer (normalised for the task's
        kind; the whole text on text tasks), or None when there is none."""
        from loopwright.loops.graphs import common

        by_text = self.task.kind not in ("math", "code")
        keys = [
            common.normalise_answer(self.task, c["text"] if by_text else c["answer"]) for c in cands
        ]
        winner, _ = tally(keys, None)
        if winner is None:
            return None
        return self._current(cands[keys.index(winner)])


__all__ = ["Candidate", "LoopContext", "Opts"]
