"""A run's scope: what every task of one run shares, built once in each process that runs
them (this one for the local executor, each Ray worker for ``--executor ray``).

The scope holds the run's settings, its loop (spec, validated options, compiled graph), the
trace writer, the run budget, and one model client per model: the run's own, those of
``--role-model``, and those a loop's options name (a judge model), made on first use. A
client is found one way, by role (:meth:`RunScope.client_for`) or by model
(:meth:`RunScope.client_of`); the in-loop verifier and the grader of a task come from it too.
"""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass, field
from typing import Any

from loopwright.loops.execution.run_config import RunConfig, model_name
from loopwright.loops.graphs import get_loop
from loopwright.loops.graphs.base import LoopSpec
from loopwright.loops.graphs.context import LoopContext
from loopwright.loops.models.base import Model
from loopwright.loops.models.budget import Budget
from loopwright.loops.models.client import ModelClient
from loopwright.loops.models.config import ClientConfig
from loopwright.loops.tasks import Task
from loopwright.loops.verify import Grader, LoopVerifier, grader_for, make_verifier
from loopwright.traces.writer import TraceWriter
from pydantic import BaseModel

ClientKey = tuple[str, str | None]
"""A client's model string and endpoint (``api_base``)."""


def task_slots(concurrency: int) -> int:
    """Tasks in progress at once for ``concurrency`` requests in flight (1 stays sequential).

    Requests are bounded by the client; tasks get a little slack beyond that. With exactly
    ``concurrency`` tasks a slot only reopens after a finished task's verify, grade and trace
    work, which on a burst of answers all interleave on the event loop: the next requests
    then leave late every round (0.83 vs 0.90 of the ideal rate at 64 in flight,
    benchmarks/throughput.py)."""
    return concurrency + concurrency // 4


def in_loop_verifier(cfg: RunConfig, spec: LoopSpec[Any], options: BaseModel) -> str:
    """The in-loop verifier the run uses: ``cfg.verifier``, except that under ``auto`` a
    loop whose choice ignores verdicts with these options gets none (it would pay for
    checks nothing reads)."""
    if cfg.verifier == "auto" and not spec.uses_verdicts(options):
        return "none"
    return cfg.verifier


def samples_per_request(options: BaseModel) -> int:
    """The samples one request of the loop asks for: its ``n`` option if it has one."""
    n = getattr(options, "n", None)
    return n if isinstance(n, int) and n > 0 else 1


_frozen = False


def freeze_imports() -> None:
    """Once per process: move what is alive now (the imported litellm, LangGraph, pydantic
    object graphs, ~10^6 objects) out of the cyclic collector's reach. Each full collection
    would otherwise walk all of it: ~1 ms of CPU per task at 64 in flight."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True


@dataclass
class RunScope:
    """What the tasks of one run share in this process; build it with :meth:`build`."""

    cfg: RunConfig
    run_id: str
    writer: TraceWriter
    spec: LoopSpec[Any]
    options: BaseModel
    graph: Any
    run_budget: Budget
    """The whole run's budget (``--run-budget-*``); a Ray worker charges a shared one."""
    slots: asyncio.Semaphore
    """Tasks of the run in progress at once here (``task_slots(concurrency)``)."""
    verifier: str
    """The in-loop verifier's name as the run uses it (see :func:`in_loop_verifier`)."""
    base: ClientConfig
    """The run model's client config; every other client is a copy with its model."""
    clients: dict[ClientKey, ModelClient] = field(default_factory=dict)
    """Every client of the run by model and endpoint, made once, closed with the run."""
    by_role: dict[str, ModelClient] = field(default_factory=dict)
    """``--role-model``: role -> its model's client."""

    @classmethod
    def build(cls, cfg: RunConfig, run_id: str, writer: TraceWriter) -> RunScope:
        """The scope of run ``run_id`` (``cfg`` was checked by ``runner.prepare``)."""
        spec = get_loop(cfg.loop)
        options = spec.options(**cfg.options)
        conn = cfg.connection
        base = ClientConfig.of(
            cfg.model_name, conn, in_flight=conn.concurrency * samples_per_request(options)
        )
        scope = cls(
            cfg=cfg, run_id=run_id, writer=writer, spec=spec, options=options,
            graph=spec.build(), run_budget=Budget(cfg.run_budget),
            slots=asyncio.Semaphore(task_slots(conn.concurrency)),
            verifier=in_loop_verifier(cfg, spec, options), base=base,
        )  # fmt: skip
        scope.client_of(cfg.model, conn.api_base)
        for role, model in cfg.role_models.items():
            scope.by_role[role] = scope.client_of(model, conn.api_base)
        freeze_imports()
        return scope

    @property
    def client(self) -> ModelClient:
        """The run model's client."""
        return self.client_of(self.cfg.model, self.cfg.connection.api_base)

    def client_for(self, role: str) -> ModelClient:
        """The client of ``role``'s model (``--role-model ROLE=MODEL``), else the run's."""
        return self.by_role.get(role, self.client)

    def client_of(self, model: str | Model, api_base: str | None = None) -> ModelClient:
        """The run's client for ``model`` at ``api_base`` (made on first use, with the run's
        retry, timeout and cache settings), e.g. a loop option's judge model."""
        key = (model_name(model), api_base)
        client = self.clients.get(key)
        if client is None:
            config = self.base.model_copy(update={"model": key[0], "api_base": api_base})
            client = ModelClient(
                config, writer=self.writer, model=None if isinstance(model, str) else model
            )
            self.clients[key] = client
        return client

    def context(self, task: Task, budget: Budget) -> LoopContext[Any]:
        """A task's loop context: the blind task (the loop never sees the answer key), its
        in-loop verifier, its budget, and the run's clients."""
        return LoopContext(
            task=task.blind(),
            client=self.client,
            clients=self.by_role,
            pool=self.clients,
            verifier=self.verifier_for(task),
            budget=budget,
            options=self.options,
            loop=self.spec.name,
            run_id=self.run_id,
            seed=self.cfg.seed,
            writer=self.writer,
        )

    def verifier_for(self, task: Task) -> LoopVerifier | None:
        """The in-loop verifier of ``task`` (None: the run has none for its kind)."""
        options = self.cfg.verifier_options if self.verifier == self.cfg.verifier else {}
        return make_verifier(self.verifier, task, options=options, sandbox=self.cfg.sandbox)

    def grader_for(self, task: Task) -> Grader | None:
        """The held-out grader of ``task``'s final answer (None: its kind has none)."""
        return grader_for(task, name=self.cfg.grader, sandbox=self.cfg.sandbox)

    async def aclose(self) -> None:
        """Close every client of the run."""
        for client in self.clients.values():
            await client.aclose()
