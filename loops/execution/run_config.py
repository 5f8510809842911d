"""A run's configuration, the settings a run, a sweep and an improve series share, and what a
run reports back (its progress and result)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from loopwright.loops.models.base import Model
from loopwright.loops.models.budget import BudgetLimits
from loopwright.loops.models.config import Connection, nest_connection
from loopwright.loops.tasks import DatasetTasks, Task
from loopwright.loops.tasks.datasets import inline_spec
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, model_validator

SEED_MAX = 2**63 - 1
"""The largest seed: seeds are stored as signed 64-bit integers."""


def _model_ref(value: Any) -> str | Model:
    if isinstance(value, (str, Model)):
        return value
    raise ValueError(
        "give a model string (e.g. local/smollm2-135m) or a Model object "
        "(loopwright.loops.models.base.Model)"
    )


def model_name(model: str | Model) -> str:
    """The model string a model is recorded under: the string itself, or a Model's name."""
    return model if isinstance(model, str) else model.name


ModelRef = Annotated[
    str | Model,
    PlainValidator(_model_ref),
    PlainSerializer(model_name, return_type=str, when_used="json"),
]
"""A model string, or a :class:`Model` object used as it is (and pickled to Ray workers);
stored and hashed by its name."""


class RunSettings(BaseModel):
    """What every run of a ``run``, a ``sweep`` or an ``improve`` series shares: trace
    database, seed, sandbox, in-loop verifier, models per role, budgets, how models are
    reached, and where tasks run.

    One identity rule for all three (what a resume must match, :meth:`config_hash`): every
    field, except where and how the work is done (``HOW``: the database, the sandbox
    backend, the connection — endpoint, transport, concurrency, timeout, retries, cache —
    the executor, and the tracker runs are mirrored to) and a config's own bookkeeping (``BOOKKEEPING``: its name, resume).
    So a series resumes against the same model served at a new address, as the call cache
    (keyed by model string, messages and sampling settings) already treats it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    db: str = Field("loopwright.duckdb", description="Trace database path.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Run seed; per-call seeds derive from it.")
    sandbox: str = Field("bwrap", description="Sandbox backend code tests run in.")
    verifier: str = Field(
        "auto",
        description="In-loop verifier (loopwright.loops.verify): auto = visible-tests for "
        "code, self for math and text, none for a loop whose choice ignores verdicts; oracle "
        "reads the answer key (upper bounds only).",
    )
    verifier_options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the in-loop verifier."
    )
    grader: str | None = Field(
        None,
        description="Held-out grader by name (a built-in, or one registered with @grader); "
        "none: by task kind (math-answer for math, code-tests for code, none for text).",
    )
    role_models: dict[str, ModelRef] = Field(
        default_factory=dict,
        description="Model per role (generator, critic, refiner, reflector, judge, value, "
        "verifier, ...); roles not named use the run's model.",
    )
    budget: BudgetLimits = Field(default_factory=BudgetLimits, description="Per-task limits.")
    run_budget: BudgetLimits = Field(default_factory=BudgetLimits, description="Whole-run limits.")
    connection: Connection = Field(
        default_factory=Connection,
        description="Endpoint, transport, concurrency, timeout, retries and call cache; may "
        "be given flat (concurrency=8, max_attempts=3).",
    )
    executor: Literal["local", "ray"] = Field(
        "local",
        description="Where tasks run: 'local' (this process) or 'ray' (Ray worker actors; "
        "this process keeps the one trace writer).",
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join (ray start --head's address); none: a local one."
    )
    workers: int | None = Field(
        None, ge=1, description="Ray worker actors; none: one per CPU of the cluster."
    )
    tracker: Literal["trackio", "wandb", "mlflow"] | None = Field(
        None,
        description="Mirror metrics and a sample table to this experiment tracker (offline "
        "when no account is set up); the trace database stays the record. docs/trackers.md.",
    )
    tracker_project: str | None = Field(
        None, description="The tracker's project (MLflow: experiment); none: loopwright."
    )

    _flat = model_validator(mode="before")(nest_connection)

    HOW: ClassVar[frozenset[str]] = frozenset(
        {"db", "sandbox", "connection", "executor", "ray_address", "workers"}
        | {"tracker", "tracker_project"}
    )
    """Where and how the work is done: never part of a config's identity."""
    BOOKKEEPING: ClassVar[frozenset[str]] = frozenset()
    """A config's own fields that are not part of its identity either (names, resume)."""

    def settings(self) -> dict[str, Any]:
        """The shared settings, as keyword arguments of another config (a sweep's or an
        improve series' runs)."""
        return {name: getattr(self, name) for name in RunSettings.model_fields}

    def identity(self) -> dict[str, Any]:
        """The fields that define what the config computes (a resume must match them)."""
        out = self.model_dump(mode="json", exclude=set(self.HOW | self.BOOKKEEPING))
        if out.get("grader") is None:  # as runs stored before a grader could be named
            out.pop("grader", None)
        return out

    def config_hash(self) -> str:
        return identity_hash(self.identity())


def identity_hash(identity: dict[str, Any]) -> str:
    """The short hash stored with a run, sweep or series and compared on resume."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class RunConfig(RunSettings):
    """One run: which loop, on which tasks, with which model, under which limits."""

    loop: str = Field(description="Loop name, e.g. self-refine.")
    tasks: str | DatasetTasks | list[Task] = Field(
        description="Task spec (PATH.jsonl, gsm8k:PATH, math:PATH, humaneval, builtin:NAME), "
        "a dataset with its field map (DatasetTasks), or the tasks themselves."
    )
    model: ModelRef = Field(
        "local/smollm2-135m", description="litellm model string, or a Model object."
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N tasks.")
    run_name: str | None = Field(None, description="Name to resume by; generated if absent.")
    options: dict[str, Any] = Field(default_factory=dict, description="Loop options.")
    resume: bool = Field(False, description="Continue the run named run_name.")

    BOOKKEEPING: ClassVar[frozenset[str]] = frozenset({"run_name", "resume", "limit"})

    @property
    def tasks_spec(self) -> str:
        """The task spec as stored: the spec given, a dataset's canonical spec, or an inline
        list's content hash."""
        if isinstance(self.tasks, DatasetTasks):
            return self.tasks.spec()
        return self.tasks if isinstance(self.tasks, str) else inline_spec(self.tasks)

    @property
    def model_name(self) -> str:
        return model_name(self.model)

    def identity(self, options: BaseModel | None = None) -> dict[str, Any]:
        """What a run computes; ``options`` are the validated loop options, so defaults
        written out or left implicit hash the same."""
        ident = super().identity()
        ident["tasks"] = self.tasks_spec
        if options is not None:
            ident["options"] = options.model_dump(mode="json")
        return ident

    def config_hash(self, options: BaseModel | None = None) -> str:
        return identity_hash(self.identity(options))

    def stored(self) -> dict[str, Any]:
        """The config as ``runs.config`` keeps it (models by name, inline tasks by spec)."""
        return {**self.model_dump(mode="json", exclude={"tasks"}), "tasks": self.tasks_spec}


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
