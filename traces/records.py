"""Typed rows of the trace store. Field names match the DuckDB columns one to one."""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

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


# -- text repair ---------------------------------------------------------------------------------
# A Python str may hold surrogate code points (U+D800-U+DFFF): JSON's "\ud83d" escape decodes to
# one, a server that splits an emoji between two chunks sends half of it, and undecodable bytes in
# a file name or argv arrive as U+DC80-U+DCFF. UTF-8 cannot encode them, so neither Arrow nor
# DuckDB stores them. Every string is repaired once, on its way into a row (repair_row):
#   1. a high surrogate directly followed by a low one is joined into the character the pair
#      encodes (lossless: "\ud83d" "\ude00" becomes U+1F600);
#   2. every surrogate left over is replaced by U+FFFD, the Unicode replacement character.
# Text that UTF-8 can encode is never changed. In JSON columns the rule also applies inside the
# document: an escaped lone surrogate ("\\ud83d" in the JSON text) becomes "\\ufffd"; an escaped
# pair is valid JSON and stays.

REPLACEMENT = "\ufffd"
_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# JSON escapes left to right, so an escaped backslash is never taken for the start of another
# escape: an escaped surrogate pair, an escaped lone surrogate, or any other escape.
_JSON_ESCAPE = re.compile(
    r"(?P<pair>\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?P<lone>\\u[dD][89a-fA-F][0-9a-fA-F]{2})"
    r"|\\.",
    re.DOTALL,
)


@dataclass
class Repair:
    """What repairing one value changed: surrogate pairs joined, lone surrogates replaced."""

    joined: int = 0
    replaced: int = 0

    def __bool__(self) -> bool:
        return bool(self.joined or self.replaced)

    def add(self, other: Repair) -> None:
        self.joined += other.joined
        self.replaced += other.replaced


def _join_pair(m: re.Match[str]) -> str:
    return m.group().encode("utf-16-le", "surrogatepass").decode("utf-16-le")


def repair_text(text: str) -> tuple[str, Repair]:
    """``text`` made encodable as UTF-8 by the rule above, and what was changed."""
    if text.isascii():
        return text, Repair()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return text, Repair()
    text, joined = _PAIR.subn(_join_pair, text)
    text, replaced = _SURROGATE.subn(REPLACEMENT, text)
    return text, Repair(joined, replaced)


def repair_json_text(text: str) -> tuple[str, Repair]:
    """JSON text made storable: its characters repaired as text, then every escaped lone
    surrogate replaced by an escaped U+FFFD. One scan of the text, whatever its nesting."""
    text, total = repair_text(text)
    if "\\u" not in text or not _JSON_SURROGATE_ESCAPE.search(text):
        return text, total
    replaced = 0

    def fix(m: re.Match[str]) -> str:
        nonlocal replaced
        if m.lastgroup == "lone":
            replaced += 1
            return "\\ufffd"
        return m.group()

    text = _JSON_ESCAPE.sub(fix, text)
    total.add(Repair(0, replaced))
    return text, total


def repair_row(
    row: dict[str, Any], json_columns: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], dict[str, Repair]]:
    """``row`` with every string value repaired (``json_columns`` as JSON text), and the
    repairs by column. The row is copied only when something changed."""
    fixes: dict[str, Repair] = {}
    out = row
    for key, value in row.items():
        if not isinstance(value, str):
            continue
        if key in json_columns:
            if value.isascii() and "\\u" not in value:
                continue
            fixed, rep = repair_json_text(value)
        elif value.isascii():  # the common case, decided without a call
            continue
        else:
            fixed, rep = repair_text(value)
        if rep:
            if out is row:
                out = dict(row)
            out[key] = fixed
            fixes[key] = rep
    return out, fixes


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def row(self) -> dict[str, Any]:
        return self.model_dump()


# -- roles -----------------------------------------------------------------------------------
# Every node and model call carries the role it was made in. The groups below are the one
# definition; ``Role`` is their union and each ``*_ROLES`` tuple is read off its group.

CandidateRole = Literal["generator", "refiner", "expander"]
"""A whole answer the model wrote itself: what a loop chooses among."""
AnswerRole = Literal[CandidateRole, "rollout"]
"""A node that holds a whole answer (a rollout finishes another node's steps)."""
FeedbackRole = Literal["critic", "reflector"]
"""A comment on an answer."""
RatingRole = Literal["judge", "value", "verifier"]
"""A model's rating of an answer: a judgement, a search value, a self-check."""
ModelRole = Literal[AnswerRole, FeedbackRole, RatingRole]
"""The roles model calls are made in; ``--role-model ROLE=MODEL`` picks a model for one."""
MarkRole = Literal["root", "vote", "evidence", "refused"]
"""Nodes recorded without a call of their own role: a search tree's root (the question), a
vote's tally, a tool's evidence, a draft the loop refused."""
Role = Literal[ModelRole, MarkRole]
"""Every role a node or a call is recorded with."""

ROLES: tuple[Role, ...] = get_args(Role)
CANDIDATE_ROLES: tuple[CandidateRole, ...] = get_args(CandidateRole)
ANSWER_ROLES: tuple[AnswerRole, ...] = get_args(AnswerRole)
"""Roles of nodes that hold a whole answer: what grading grades and harvesting harvests."""
FEEDBACK_ROLES: tuple[FeedbackRole, ...] = get_args(FeedbackRole)
RATING_ROLES: tuple[RatingRole, ...] = get_args(RatingRole)
MODEL_ROLES: tuple[ModelRole, ...] = get_args(ModelRole)
DRAFT_ROLES: tuple[Role, ...] = (*ANSWER_ROLES, "refused")
"""Nodes whose text is a draft of the answer (a revision of one is shown as a diff)."""

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
    role: Role = Field(description="generator, critic, refiner, verifier, ... (``Role``).")
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
    role: Role | None = None
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
    answer_key: str | None = Field(
        None,
        description="The keyed task as JSON (reference, hidden tests, test style, entry point, "
        "metadata): what grading reads, so a run is graded from the database alone.",
    )
