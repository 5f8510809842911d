"""Mirroring runs to the experiment tracker people already look at: Trackio, W&B or MLflow.

The trace database stays the record; a tracker gets a copy. ``--tracker NAME`` gives every
run its tracker run at the end (its summary — pass rate, graded accuracy, tokens, calls,
dollars, wall time — and a table of its first tasks: prompt, final answer, in-loop and graded
verdict), a sweep one tracker run per run of its points (grouped by the sweep's name, the
point's settings as config), and an ``improve`` series one tracker run whose steps are its
rounds.

Each tracker is one small class behind :class:`Tracker` (``start``, ``log``, ``table``,
``finish``) and imports its package only when it is chosen: the packages are optional
extras (``pip install 'loopwright[trackio]'``, ``[wandb]``, ``[mlflow]``, or ``[trackers]``
for all three). A tracker that fails while mirroring (no network, a bug in the package) never
fails the run: :func:`make_tracker` wraps it so the first failure is reported on stderr once
and mirroring stops there.

Where each writes without an account (docs/trackers.md): Trackio to its local SQLite files
(``TRACKIO_DIR``, default the Hugging Face cache's ``trackio`` folder); W&B offline into
``./wandb`` (``WANDB_DIR``; ``wandb sync`` uploads it later) when neither ``WANDB_MODE`` nor an
API key says otherwise; MLflow to ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlflow.db``
with the full ``mlflow`` package, or a ``./mlruns`` file store with ``mlflow-skinny``.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_PROJECT",
    "SAMPLE_ROWS",
    "TRACKERS",
    "Tracker",
    "check_tracker",
    "make_tracker",
    "mirror_run",
    "numeric_metrics",
    "run_metrics",
]

import contextlib
import importlib.util
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from loopwright.loops.errors import UserError
from loopwright.traces import TraceStore, run_summary
from loopwright.traces.run_queries import task_samples

DEFAULT_PROJECT = "loopwright"
SAMPLE_ROWS = 20
"""Tasks in a run's sample table (the first ones, in task order)."""
TEXT_MAX = 4000
"""Characters of a prompt or answer kept in the sample table (the trace keeps all)."""

TRACKERS: dict[str, str] = {"trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}
"""Tracker name -> the module it imports (its extra has the tracker's name)."""


class Tracker(Protocol):
    """One tracker run at a time: ``start`` it, ``log`` metrics and ``table`` rows to it,
    ``finish`` it with the loopwright status (done, failed, interrupted)."""

    name: str

    def start(self, name: str, config: dict[str, Any], group: str | None = None) -> None: ...

    def log(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def table(self, name: str, rows: list[dict[str, Any]]) -> None: ...

    def finish(self, status: str = "done") -> None: ...


def install_hint(name: str) -> str:
    return f"pip install 'loopwright[{name}]'"


def check_tracker(name: str | None) -> None:
    """Refuse, in one line, a tracker whose package is not installed (before a run starts)."""
    if name is None:
        return
    if name not in TRACKERS:
        raise UserError(f"--tracker takes trackio, wandb or mlflow, got {name!r}")
    if importlib.util.find_spec(TRACKERS[name]) is None:
        raise UserError(
            f"--tracker {name} needs `{install_hint(name)}` (or loopwright[trackers] for all three)"
        )


def make_tracker(name: str, project: str | None = None) -> Tracker:
    """The tracker ``name`` writing to ``project`` (default: loopwright), guarded so that a
    failure inside it is reported once and never reaches the run. Its package is imported
    when the tracker starts, not here."""
    check_tracker(name)
    impl: Tracker
    project = project or DEFAULT_PROJECT
    if name == "trackio":
        impl = TrackioTracker(project)
    elif name == "wandb":
        impl = WandbTracker(project)
    else:
        impl = MlflowTracker(project)
    return Guarded(impl)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class Guarded:
    """A tracker whose first failure is reported on stderr and ends the mirroring, while the
    run goes on: the trace database, not the tracker, is the record."""

    def __init__(self, inner: Tracker) -> None:
        self.inner = inner
        self.name = inner.name
        self.failed: str | None = None
        self.started = False

    def _guard(self, what: str, fn: Any, *args: Any) -> None:
        if self.failed is not None:
            return
        try:
            fn(*args)
        except Exception as exc:
            self.failed = f"{type(exc).__name__}: {exc}".strip()
            first = self.failed.splitlines()[0][:300]
            _warn(
                f"--tracker {self.name} failed in {what} ({first}); mirroring stops, the run "
                "goes on: the trace database keeps everything"
            )

    def start(self, name: str, config: dict[str, Any], group: str | None = None) -> None:
        self._guard("start", self.inner.start, name, config, group)
        self.started = self.failed is None

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._guard("log", self.inner.log, metrics, step)

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        self._guard("table", self.inner.table, name, rows)

    def finish(self, status: str = "done") -> None:
        if not self.started:
            return
        self.started = False
        if self.failed is None:
            self._guard("finish", self.inner.finish, status)
        else:  # close what the tracker holds open; it already had its warning
            with contextlib.suppress(Exception):
                self.inner.finish("failed")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Trackers print banners; loopwright's stdout stays its own."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


# -- the trackers -------------------------------------------------------------------------------


def _grid(rows: list[dict[str, Any]]) -> tuple[list[Any], list[list[Any]]]:
    """A table's columns (the first row's keys) and its rows as lists in that order."""
    columns: list[Any] = list(rows[0]) if rows else []
    return columns, [[r.get(c) for c in columns] for r in rows]


class TrackioTracker:
    """Trackio (local-first: a SQLite file per project under ``TRACKIO_DIR``; a Space when
    ``TRACKIO_SPACE_ID`` is set)."""

    name = "trackio"

    def __init__(self, project: str) -> None:
        self.project = project
        self.run: Any = None

    def start(self, name: str, config: dict[str, Any], group: str | None = None) -> None:
        import trackio

        with _stdout_to_stderr():
            self.run = trackio.init(
                project=self.project, name=name, group=group, config=config, embed=False,
                auto_log_cpu=False, auto_log_gpu=False,
            )  # fmt: skip

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        import trackio

        columns, data = _grid(rows)
        self.run.log({name: trackio.Table(columns=columns, data=data)})

    def finish(self, status: str = "done") -> None:
        import trackio

        run, self.run = self.run, None
        with _stdout_to_stderr():
            if trackio.context_vars.current_run.get() is run:
                trackio.finish()  # also forgets it, or trackio finishes it again at exit
            else:
                run.finish()


def wandb_mode() -> str:
    """``WANDB_MODE`` when set; else online with an API key (``WANDB_API_KEY`` or a netrc
    entry for the W&B host), offline without one."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    with contextlib.suppress(Exception):  # no netrc, or one that does not parse
        if host and netrc.netrc().authenticators(host):
            return "online"
    return "offline"


class WandbTracker:
    """Weights & Biases: offline (``./wandb``, or ``WANDB_DIR``) unless an API key or
    ``WANDB_MODE`` says otherwise; ``wandb sync`` uploads an offline run later."""

    name = "wandb"
    _told_offline = False

    def __init__(self, project: str) -> None:
        self.project = project
        self.run: Any = None

    def start(self, name: str, config: dict[str, Any], group: str | None = None) -> None:
        import wandb

        mode: Any = wandb_mode()  # wandb types it as a Literal; WANDB_MODE may say more
        if mode == "offline" and not os.environ.get("WANDB_MODE") and not self._told_offline:
            WandbTracker._told_offline = True
            _warn(
                "--tracker wandb: no W&B API key here, so runs are logged offline (under "
                "./wandb, or WANDB_DIR); `wandb sync` uploads them"
            )
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
        with _stdout_to_stderr():
            self.run = wandb.init(
                project=self.project, name=name, group=group, config=config, mode=mode,
                settings=settings, reinit="create_new",
            )  # fmt: skip

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        import wandb

        columns, data = _grid(rows)
        self.run.log({name: wandb.Table(columns=columns, data=data)})

    def finish(self, status: str = "done") -> None:
        run, self.run = self.run, None
        with _stdout_to_stderr():
            run.finish(exit_code=0 if status == "done" else 1)


def mlflow_tracking_uri() -> str | None:
    """Where MLflow writes: ``MLFLOW_TRACKING_URI`` when set (None: MLflow reads it); else
    MLflow's own default (``sqlite:///mlflow.db``) when its database backend is installed
    (the full ``mlflow`` package); else a ``./mlruns`` file store (``mlflow-skinny``)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    if all(importlib.util.find_spec(m) is not None for m in ("sqlalchemy", "alembic")):
        return None
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # skinny's only local store
    return f"file:{os.path.abspath('mlruns')}"


_MLFLOW_STATUS = {"done": "FINISHED", "interrupted": "KILLED"}


class MlflowTracker:
    """MLflow: the project is the experiment; config as params (flattened, dotted keys), the
    group as the tag ``loopwright.group``, the sample table as a logged table artifact."""

    name = "mlflow"

    def __init__(self, project: str) -> None:
        self.project = project
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, name: str, config: dict[str, Any], group: str | None = None) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = client = MlflowClient(tracking_uri=mlflow_tracking_uri())
        exp = client.get_experiment_by_name(self.project)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(self.project)
        tags = {"loopwright.group": group} if group else {}
        self.run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        params = [Param(k[:250], v[:6000]) for k, v in _flat_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def table(self, name: str, rows: list[dict[str, Any]]) -> None:
        columns, cells = _grid(rows)
        data = {c: [row[i] for row in cells] for i, c in enumerate(columns)}
        try:
            with warnings.catch_warnings():  # pandas' notices about MLflow's own calls
                warnings.simplefilter("ignore")
                self.client.log_table(self.run_id, data=data, artifact_file=f"{name}.json")
        except ImportError:  # log_table needs pandas; the same {columns, data} shape without
            split = {"columns": columns, "data": [[r.get(c) for c in columns] for r in rows]}
            self.client.log_dict(self.run_id, split, f"{name}.json")

    def finish(self, status: str = "done") -> None:
        run_id, self.run_id = self.run_id, None
        self.client.set_terminated(run_id, _MLFLOW_STATUS.get(status, "FAILED"))


def _flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, scalar values as text, lists as JSON."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flat_params(value, f"{name}."))
        elif isinstance(value, str):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


# -- what is mirrored ---------------------------------------------------------------------------


def numeric_metrics(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) metrics dict, keys joined with ``/``; text and None left out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(numeric_metrics(value, f"{name}/"))
        elif isinstance(value, int | float):  # bools too, as 0 and 1
            out[name] = float(value)
    return out


def run_metrics(summary: Mapping[str, Any], wall_s: float | None) -> dict[str, float]:
    """A run's summary (``run_summary``) as tracker metrics."""
    named = {
        "tasks": summary.get("tasks"),
        "done": summary.get("done"),
        "failed": summary.get("failed"),
        "pass_rate": summary.get("verified_rate"),  # the in-loop verifier's
        "graded_accuracy": summary.get("graded_pass_rate"),  # the held-out grader's
        "tokens": summary.get("tokens"),
        "calls": summary.get("calls"),
        "usd": summary.get("cost_usd"),
        "mean_rounds": summary.get("mean_rounds"),
        "wall_s": wall_s,
    }
    return numeric_metrics(named)


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > TEXT_MAX:
        return value[:TEXT_MAX] + f"... [{len(value) - TEXT_MAX} more characters]"
    return value


def sample_rows(store: TraceStore, run_id: str, limit: int = SAMPLE_ROWS) -> list[dict[str, Any]]:
    """The run's first tasks as the sample table shows them."""
    return [
        {
            "task": r["task_id"],
            "prompt": _clip(r["prompt"]),
            "final_answer": _clip(r["final_answer"]),
            "in_loop_verdict": r["verdict"],
            "graded_verdict": r["graded"],
            "status": r["status"],
            "stop_reason": r["stop_reason"],
            "tokens": r["total_tokens"],
        }
        for r in task_samples(store, run_id, limit)
    ]


def mirror_run(
    tracker: str,
    project: str | None,
    store: TraceStore,
    run_id: str,
    *,
    name: str,
    config: dict[str, Any],
    status: str,
    wall_s: float | None = None,
    group: str | None = None,
) -> None:
    """Mirror one finished run to ``tracker``: its summary metrics and its sample table, as
    one tracker run named ``name``. Reads the store; never fails because the tracker did."""
    metrics = run_metrics(run_summary(store, run_id), wall_s)
    rows = sample_rows(store, run_id)
    t = make_tracker(tracker, project)
    t.start(name, config, group)
    t.log(metrics)
    if rows:
        t.table("samples", rows)
    t.finish(status)
