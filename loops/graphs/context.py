"""What a node needs at run time, passed in through the graph config — never globals."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import RunnableConfig
from loopwright.loops.models.budget import Budget
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import CallContext, Sample
from loopwright.loops.tasks import Task
from loopwright.loops.verify import LoopVerifier
from loopwright.traces.records import NodeRecord, VerdictRecord, new_id
from loopwright.traces.writer import TraceWriter
from pydantic import BaseModel


@dataclass
class LoopContext:
    """Everything one task's loop may touch: model, verifier, budget, trace writer.

    ``task`` is the blind view (``Task.blind()``: no reference, no hidden tests) unless a
    caller builds the context by hand. ``clients`` maps roles to their model's client
    (``--role-model``); a role without one uses ``client``.
    """

    task: Task
    client: ModelClient
    verifier: LoopVerifier | None
    budget: Budget
    options: BaseModel
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
        # surrogatepass: an id holding a lone surrogate still gets a seed (text without one
        # encodes as before)
        blob = f"{self.seed}|{self.task.id}|{role}|{round_}|{extra}".encode(
            "utf-8", "surrogatepass"
        )
        return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF

    async def sample(
        self,
        messages: list[dict[str, Any]],
        *,
        role: str,
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
        role: str,
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


def ctx_of(config: RunnableConfig) -> LoopContext:
    return config["configurable"]["loopwright"]  # type: ignore[no-any-return]
