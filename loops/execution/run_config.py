"""A run's configuration and what a run reports back (its progress and result)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from loopwright.loops.models.budget import BudgetLimits
from loopwright.loops.models.config import Connection, nest_connection
from pydantic import BaseModel, ConfigDict, Field, model_validator

SEED_MAX = 2**63 - 1
"""The largest seed: seeds are stored as signed 64-bit integers."""


class RunConfig(BaseModel):
    """One run: which loop, on which tasks, with which model, under which limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loop: str = Field(description="Loop name, e.g. self-refine.")
    tasks: str = Field(
        description="Task spec: PATH.jsonl, gsm8k:PATH, math:PATH, humaneval, builtin:NAME."
    )
    model: str = Field("local/smollm2-135m", description="litellm model string.")
    limit: int | None = Field(None, ge=1, description="Use only the first N tasks.")
    db: str = Field("loopwright.duckdb", description="Trace database path.")
    run_name: str | None = Field(None, description="Name to resume by; generated if absent.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Run seed; per-call seeds derive from it.")
    budget: BudgetLimits = Field(default_factory=BudgetLimits, description="Per-task limits.")
    run_budget: BudgetLimits = Field(default_factory=BudgetLimits, description="Whole-run limits.")
    options: dict[str, Any] = Field(default_factory=dict, description="Loop options.")
    sandbox: str = Field("bwrap", description="Sandbox backend code tests run in.")
    resume: bool = Field(False, description="Continue the run named run_name.")
    verifier: str = Field(
        "auto",
        description="In-loop verifier (loopwright.loops.verify): auto = visible-tests for "
        "code, self for math and text; oracle reads the answer key (upper bounds only).",
    )
    verifier_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the in-loop verifier."
    )
    role_models: dict[str, str] = Field(
        default_factory=dict,
        description="Model per role (generator, critic, refiner, reflector, judge, value, "
        "verifier, ...); roles not named use `model`.",
    )
    connection: Connection = Field(
        default_factory=Connection,
        description="Endpoint, transport, concurrency, timeout, retries and call cache; may "
        "be given flat (concurrency=8, max_attempts=3).",
    )

    executor: Literal["local", "ray"] = Field(
        "local",
        description="Where tasks run: 'local' (this process) or 'ray' (Ray worker actors; "
        "this process keeps the one trace writer). Not part of the run's identity.",
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join (ray start --head's address); none: a local one."
    )
    workers: int | None = Field(
        None, ge=1, description="Ray worker actors; none: one per CPU of the cluster."
    )

    _flat = model_validator(mode="before")(nest_connection)

    def identity(self, options: BaseModel | None = None) -> dict[str, Any]:
        """The fields that define what a run computes (resume must match them).

        ``options`` are the validated loop options, so defaults written out or left implicit
        hash the same.
        """
        ident = self.model_dump(
            include={
                "loop",
                "tasks",
                "model",
                "seed",
                "options",
                "budget",
                "run_budget",
                "verifier",
                "verifier_options",
                "role_models",
            },
            mode="json",
        )
        if options is not None:
            ident["options"] = options.model_dump(mode="json")
        return ident

    def config_hash(self, options: BaseModel | None = None) -> str:
        blob = json.dumps(self.identity(options), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Progress:
    total: int
    done: int = 0
    failed: int = 0
    passed: int = 0
    tokens: int = 0
    skipped: int = 0


@dataclass
class RunResult:
    run_id: str
    name: str
    """The run's name as stored (text UTF-8 cannot encode is repaired)."""
    summary: dict[str, Any]
    progress: Progress
    started: bool = True
    """Whether this call created the run. ``--resume`` of a run the store does not hold (one
    stopped before its run row was committed) starts it: then True although resume was asked."""
