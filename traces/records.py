"""Typed rows of the trace store. Field names match the DuckDB columns one to one."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_id() -> str:
    """A fresh 128-bit random id (hex) for runs, nodes, calls and verdicts.

    Drawn from one process-wide generator seeded from the OS once: uuid4() makes a system
    call per id, which on a busy event loop costs more than the rest of a cached call.
    """
    return f"{_ids.getrandbits(128):032x}"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def row(self) -> dict[str, Any]:
        return self.model_dump()


ANSWER_ROLES = ("generator", "refiner", "expander", "rollout")
"""Roles of nodes that hold a whole answer: what grading grades and harvesting harvests."""
FEEDBACK_ROLES = ("critic", "reflector")
"""Roles of nodes that comment on an answer."""
OPINION_VERIFIERS = ("llm-judge", "llm-judge-pairwise", "reward-model")
"""Verifiers that rate an answer without checking it: scores, never a pass/fail label."""


class NodeRecord(_Row):
    """One draft, critique, candidate or search-tree node."""

    node_id: str = Field(default_factory=new_id, description="Unique node id.")
    parent_id: str | None = Field(None, description="Node this one was derived from.")
    run_id: str = Field(description="Run that produced the node.")
    task_id: str = Field(description="Task the node belongs to.")
    loop: str | None = Field(None, description="Loop name, for provenance.")
    model: str | None = Field(None, description="Model that wrote the content.")
    role: str = Field(description="generator, critic, refiner, verifier, ...")
    depth: int = Field(0, description="Distance from the root draft.")
    round: int = Field(0, description="Refinement round or search iteration.")
    content: str | None = Field(None, description="Full text the model produced.")
    answer: str | None = Field(None, description="Extracted final answer, if any.")
    score: float | None = Field(None, description="Verifier score of this node.")
    value: float | None = Field(None, description="Search value estimate.")
    visits: int | None = Field(None, description="Search visit count.")
    is_final: bool = Field(False, description="True for the node the loop returned.")
    created_at: datetime = Field(default_factory=utcnow)


class CallRecord(_Row):
    """One sample of one model request (a request with n=4 yields four rows)."""

    call_id: str = Field(default_factory=new_id)
    request_id: str = Field(description="Shared by the samples of one request.")
    run_id: str | None = None
    task_id: str | None = None
    node_id: str | None = None
    loop: str | None = None
    round: int | None = None
    role: str | None = None
    model: str
    messages: str = Field(description="JSON-encoded chat messages sent.")
    temperature: float | None = None
    max_tokens: int | None = None
    n: int = 1
    seed: int | None = None
    sample_index: int = 0
    output: str | None = None
    finish_reason: str | None = None
    logprob_mean: float | None = None
    prompt_tokens: int = Field(0, description="Charged once per request, on sample 0.")
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 1
    cache_hit: bool = False
    cache_key: str | None = None
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class VerdictRecord(_Row):
    """A verifier's or grader's judgement of one node."""

    verdict_id: str = Field(default_factory=new_id)
    run_id: str
    task_id: str
    node_id: str | None = None
    stage: Literal["in_loop", "graded", "judge"] = Field(
        description="in_loop: what the loop saw; graded: the held-out final check; judge: a "
        "judgement made after the run (pairwise preferences for harvesting)."
    )
    verifier: str
    verifier_version: str | None = None
    passed: bool | None = None
    score: float | None = None
    feedback: str | None = None
    details: str | None = Field(None, description="JSON-encoded verifier details.")
    latency_s: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)


class CacheRecord(_Row):
    """A cached model sample, keyed on request content and sample index."""

    cache_key: str
    sample_index: int
    model: str
    output: str | None
    finish_reason: str | None = None
    logprob_mean: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)


TaskStatus = Literal["pending", "running", "done", "failed"]


class TaskRecord(_Row):
    """The outcome of one task in one run; what resume reads."""

    run_id: str
    task_id: str
    idx: int
    kind: str
    prompt: str
    reference: str | None = None
    final_answer: str | None = None
    final_node_id: str | None = None
    verdict: bool | None = None
    graded: bool | None = None
    score: float | None = None
    stop_reason: str | None = None
    rounds: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    wall_s: float = 0.0
    status: TaskStatus = "pending"
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str | None = None  # where it ran with --executor ray: host:pid; None in-process
