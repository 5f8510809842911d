"""``--config FILE``, ``-s/--set KEY.PATH=VALUE`` and ``--dry-run`` of ``run`` and ``sweep``:
which flags the command line gave explicitly (those win over the file), and the dry run's
printout (the points and their hashes; nothing written).

Only typer and click are imported here at start; the config machinery when a flag is used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from loopwright.loops.cli.options import RUN_SETTINGS
from rich.markup import escape

if TYPE_CHECKING:
    from loopwright.loops.execution.run_config import RunConfig
    from loopwright.loops.execution.sweep import SweepConfig

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Experiment file (YAML or TOML) holding the whole run or sweep; flags given on "
        "the command line win over it (docs/experiments.md).",
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a key of the --config file: -s loop.options.n=16 (value read as YAML).",
    ),
]
DryRunOption = Annotated[
    bool,
    typer.Option(
        "--dry-run", help="Resolve and validate, print the points and their hashes, write nothing."
    ),
]

_SETTING_PATHS: dict[str, tuple[str, ...]] = {
    "api_base": ("connection", "api_base"),
    "transport": ("connection", "transport"),
    "concurrency": ("connection", "concurrency"),
    "no_cache": ("connection", "cache"),
    "verifier_option": ("verifier_options",),
    "role_model": ("role_models",),
    **{f"budget_{k}": ("budget", k) for k in ("tokens", "calls", "usd", "seconds")},
    **{f"run_budget_{k}": ("run_budget", k) for k in ("tokens", "calls", "usd", "seconds")},
}
"""Where a run-settings flag lands in the settings it is read into (default: its own name)."""


def explicit(ctx: typer.Context, name: str) -> bool:
    """Whether the command line (or its environment) gave parameter ``name``."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def given(
    ctx: typer.Context, settings: Mapping[str, Any], own: Mapping[str, tuple[str, Any]]
) -> dict[str, Any]:
    """The config fields the command line set explicitly: the run-settings flags (read from
    ``settings``) and the command's ``own`` parameters (name -> (field, value))."""
    out: dict[str, Any] = {}
    for flag in RUN_SETTINGS.flags:
        if not explicit(ctx, flag.name):
            continue
        path = _SETTING_PATHS.get(flag.name, (flag.name,))
        node: Any = settings
        for part in path:
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            target = out
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = node
    for name, (key, value) in own.items():
        if explicit(ctx, name) and value is not None:
            out[key] = value
    return out


def print_run_plan(cfg: RunConfig) -> None:
    """``--dry-run`` of ``run``: the run's identity and what it would do; nothing written."""
    from loopwright.loops.cli.progress import console
    from loopwright.loops.execution.runner import prepare

    plan = prepare(cfg)
    exists = _run_exists(cfg.db, cfg.run_name) if cfg.run_name else False
    state = "stored: would resume" if exists else "new"
    out = console()
    out.print(
        f"run {escape(cfg.run_name or '(name generated at start)')}: {escape(cfg.loop)} on "
        f"{escape(cfg.tasks_spec)} ({len(plan.tasks)} tasks) with {escape(cfg.model_name)}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        f"  config_hash {cfg.config_hash(plan.options)}  options "
        f"{escape(json.dumps(cfg.options, sort_keys=True))}  {escape(f'[{state}]')}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"dry run: nothing written ({escape(cfg.db)} untouched)", highlight=False)


def _run_exists(db: str, name: str) -> bool:
    if not Path(db).exists():
        return False
    from loopwright.traces.runs import run_by_name
    from loopwright.traces.store import TraceStore

    with TraceStore(db, read_only=True) as store:
        return run_by_name(store, name) is not None


def print_sweep_plan(cfg: SweepConfig) -> None:
    """``--dry-run`` of ``sweep``: every point, its id (a hash of what the point is) and the
    run that produces it, marked new or stored; nothing written."""
    from loopwright.loops.cli.progress import console
    from loopwright.loops.execution.sweep import preview, validate

    validate(cfg)
    grown, points, new = preview(cfg)
    out = console()
    runs = len({p.run_name for p in points})
    out.print(
        f"sweep {escape(grown.name)}: {len(points)} points in {runs} runs on "
        f"{escape(grown.tasks)}; grid {escape(grown.grid)}",
        highlight=False,
        soft_wrap=True,
    )
    for p in points:
        value = "" if p.param is None else f" {p.param}={p.value}"
        how = "read from" if p.derived else "run"
        mark = "new" if p.point_id in new else "stored"
        out.print(
            f"  {p.point_id}  {escape(p.strategy + value)} {escape(p.model)} s{p.seed}  "
            f"{how} {escape(p.run_name)}  {escape(f'[{mark}]')}",
            highlight=False,
            soft_wrap=True,
        )
    out.print(
        f"dry run: {len(new)} new point(s); nothing written ({escape(grown.db)} untouched)",
        highlight=False,
    )
