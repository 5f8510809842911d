"""Command-line options defined once: the run settings ``run``, ``sweep`` and ``improve`` share
(``RUN_SETTINGS``, read as ``RunSettings`` fields), and the decorator that adds a group of
flags to a command.

A command declares its own parameters and one parameter per group (``settings: dict[str,
Any]``); ``@with_flags(RUN_SETTINGS)`` gives the command every flag of the group, and the
command receives what the group reads from them. Only typer is imported here: ``loopwright
--help`` must not pay for the model client, the graphs or the trace store.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, cast

import typer

F = TypeVar("F", bound=Callable[..., Any])

# -- option types several commands use -------------------------------------------------------
DbOption = Annotated[str, typer.Option(help="Trace database.")]
ExecutorOption = Annotated[
    str,
    typer.Option(
        help="Where tasks run: local (this process) or ray (Ray worker actors, each with its "
        "own model client and sandboxes; this process writes every trace row)."
    ),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        help="With --executor ray: the cluster to join (HEAD_IP:6379, from `ray start "
        "--head`); default: a local Ray on this machine's cores, stopped at the end."
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(help="With --executor ray: worker actors (default: one per CPU of the cluster)."),
]
LoopOptionsOption = Annotated[
    list[str] | None, typer.Option("--option", "-o", help="Loop option KEY=VALUE.")
]


# -- flag groups -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flag:
    """One command-line flag: its parameter name, type with typer metadata, and default."""

    name: str
    annotation: Any
    default: Any = None


@dataclass(frozen=True)
class FlagGroup:
    """Flags a command receives together, as one parameter named ``param``: what ``read``
    makes of their values (by parameter name; default: those values)."""

    param: str
    flags: tuple[Flag, ...]
    read: Callable[[dict[str, Any]], Any] = dict


def _run_settings(v: Mapping[str, Any]) -> dict[str, Any]:
    """The ``RUN_SETTINGS`` flags as ``RunSettings`` fields (the config validates them)."""
    return {
        "db": v["db"],
        "seed": v["seed"],
        "sandbox": v["sandbox"],
        "verifier": v["verifier"],
        "verifier_options": parse_key_values(v["verifier_option"] or [], "--verifier-option"),
        "grader": v["grader"],
        "role_models": parse_role_models(v["role_model"]),
        "budget": {k: v[f"budget_{k}"] for k in _BUDGET},
        "run_budget": {k: v[f"run_budget_{k}"] for k in _BUDGET},
        "connection": {
            "api_base": v["api_base"],
            "transport": v["transport"],
            "concurrency": v["concurrency"],
            "cache": not v["no_cache"],
        },
        "executor": v["executor"],
        "ray_address": v["ray_address"],
        "workers": v["workers"],
        "tracker": v["tracker"],
        "tracker_project": v["tracker_project"],
    }


def with_flags(*groups: FlagGroup) -> Callable[[F], F]:
    """Give a command every flag of ``groups``: each group reaches the command as what it
    reads from them, in its parameter (which the command declares)."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        params = {g.param for g in groups}
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in sig.parameters.values()
            if p.name not in params
        ]
        added = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                              annotation=f.annotation)
            for g in groups for f in g.flags
        ]  # fmt: skip

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            for g in groups:
                kwargs[g.param] = g.read({f.name: kwargs.pop(f.name) for f in g.flags})
            return fn(**kwargs)

        command.__signature__ = sig.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        command.__annotations__ = {}  # the signature above carries them, resolved
        return cast(F, command)

    return decorate


def _opt(text: str, *decls: str) -> Any:
    """``typer.Option`` with help ``text`` (and flag names ``decls``, if not the default)."""
    return typer.Option(*decls, help=text)


_BUDGET = ("tokens", "calls", "usd", "seconds")

RUN_SETTINGS = FlagGroup(
    "settings",
    (
        Flag("db", DbOption, "loopwright.duckdb"),
        Flag(
            "concurrency",
            Annotated[int, _opt("Model requests in flight (per Ray worker with --executor ray).")],
            4,
        ),
        Flag(
            "seed",
            Annotated[int, _opt("Run seed; a sweep's points take SEED, SEED+1, ... (--seeds).")],
            0,
        ),
        Flag(
            "sandbox",
            Annotated[str, _opt("Sandbox for code tests: bwrap, docker or process.")],
            "bwrap",
        ),
        Flag("api_base", Annotated[str | None, _opt("Endpoint for self-hosted models.")]),
        Flag(
            "transport",
            Annotated[
                str,
                _opt(
                    "litellm, http (direct OpenAI-compatible requests, ~10x less CPU per call) "
                    "or auto: http for openai/ and hosted_vllm/ models with --api-base."
                ),
            ],
            "auto",
        ),
        Flag(
            "no_cache",
            Annotated[bool, _opt("Do not reuse cached calls.", "--no-cache")],
            False,
        ),
        Flag(
            "verifier",
            Annotated[
                str,
                _opt(
                    "In-loop verifier: auto (visible-tests for code, self for math/text, none "
                    "for a loop whose choice ignores verdicts), visible-tests, self, "
                    "consistency, judge, reward, none, or oracle (reads the answer key: upper "
                    "bounds only). `loopwright verifiers` lists them."
                ),
            ],
            "auto",
        ),
        Flag(
            "verifier_option",
            Annotated[
                list[str] | None,
                _opt("In-loop verifier option KEY=VALUE.", "--verifier-option"),
            ],
        ),
        Flag(
            "grader",
            Annotated[
                str | None,
                _opt(
                    "Held-out grader by name (math-answer, code-tests, or one a --plugin "
                    "registers with @grader); default: by task kind."
                ),
            ],
        ),
        Flag(
            "role_model",
            Annotated[
                list[str] | None,
                _opt(
                    "ROLE=MODEL: a model for one role (generator, critic, refiner, "
                    "reflector, judge, value, verifier); the others use the run's model.",
                    "--role-model",
                ),
            ],
        ),
        *(
            Flag(f"budget_{k}", Annotated[kind | None, _opt(f"{what} budget per task.")])
            for k, kind, what in (
                ("tokens", int, "Token"),
                ("calls", int, "Model-sample"),
                ("usd", float, "Dollar"),
                ("seconds", float, "Wall-clock (seconds)"),
            )
        ),
        *(
            Flag(f"run_budget_{k}", Annotated[kind | None, _opt(f"{what} budget per run.")])
            for k, kind, what in (
                ("tokens", int, "Token"),
                ("calls", int, "Model-sample"),
                ("usd", float, "Dollar"),
                ("seconds", float, "Wall-clock (seconds)"),
            )
        ),
        Flag("executor", ExecutorOption, "local"),
        Flag("ray_address", RayAddressOption),
        Flag("workers", WorkersOption),
        Flag(
            "tracker",
            Annotated[
                str | None,
                _opt(
                    "Mirror metrics and a sample table to trackio, wandb or mlflow (offline "
                    "without an account; the trace database stays the record)."
                ),
            ],
        ),
        Flag(
            "tracker_project",
            Annotated[
                str | None,
                _opt("The tracker's project (MLflow: experiment); default: loopwright."),
            ],
        ),
    ),
    read=_run_settings,
)
"""The flags of ``RunSettings``: the same for ``run``, ``sweep`` and ``improve``."""


# -- parsing -----------------------------------------------------------------------------------
def parse_key_values(items: Sequence[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` items (values read as JSON when they parse) as a dict."""
    from loopwright.loops.errors import UserError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out


def parse_role_models(items: Sequence[str] | None) -> dict[str, str]:
    """``ROLE=MODEL`` items as a dict; a malformed item is one error line."""
    from loopwright.loops.errors import UserError

    out: dict[str, str] = {}
    for item in items or []:
        role, sep, model = item.partition("=")
        if not sep or not role.strip() or not model.strip():
            raise UserError(f"--role-model takes ROLE=MODEL, got {item!r}")
        out[role.strip()] = model.strip()
    return out


def config_error(exc: Exception) -> Exception:
    """A config's validation error as the one-line user error naming the flag that set it."""
    from loopwright.loops.errors import UserError, first_error

    return UserError(first_error(exc, as_flag=True))
