"""Experiments as files: a run or a sweep written as YAML or TOML, read into the same
``RunConfig`` / ``SweepConfig`` the command line builds, and written back from a stored run or
sweep (``loopwright export-config``).

A run file holds ``RunConfig``'s fields (``loop``, ``options``, ``tasks``, ``model``,
``role_models``, ``verifier``, ``budget``, ``seed``, ``db``, ...); ``loop`` and ``verifier``
may also be written as ``{name: ..., options: {...}}``. A sweep file holds ``SweepConfig``'s
fields, the loop (and its options) every point starts from, and a ``sweep:`` block: a mapping
is a cartesian product (``{loop.options.n: [1, 4, 16], model: [a, b]}``), a list is the
points themselves (``- {loop: best-of-n, options: {n: 4}}``). A file may name ``plugins:``
(Python files, relative to the file).

The points of a sweep block become the grid ``loopwright sweep --grid`` reads, grouped by what
each point is (its loop, options and verifier), never by where it stands in the file: a
point's run name and id are the same in any file that holds it, so adding points later runs
only the new ones.

Unknown keys are one error line with the closest known key; so are bad values, naming the key.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopwright.loops.errors import UserError
from loopwright.loops.execution.grid import (
    ALIASES,
    VERIFIER_KEY,
    GridEntry,
    format_entry,
    parse_grid,
)
from loopwright.loops.execution.run_config import RunConfig, RunSettings
from loopwright.loops.models.budget import BudgetLimits
from loopwright.loops.models.config import CONNECTION_FIELDS, RETRY_FIELDS, Connection
from loopwright.loops.models.retry import RetryPolicy
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from loopwright.loops.execution.sweep import SweepConfig

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}
"""File suffix -> format."""
FILE_KEYS = frozenset({"plugins"})
"""Keys of a file that are not config fields."""
MERGED = frozenset(
    {"options", "verifier_options", "role_models", "budget", "run_budget", "connection", "retry"}
)
"""Mappings a later layer (overrides, flags) merges into key by key instead of replacing."""
CURVE_PARAMS = ("n", "max_rounds", "max_trials", "simulations", "beam_width")
"""A sweep point's option that names its grid value, when it sets one (else the first of its
options by name): best-of-n's n, so a file's n values share one run as a --grid's do."""
_NESTED: dict[str, type[BaseModel]] = {
    "budget": BudgetLimits,
    "run_budget": BudgetLimits,
    "connection": Connection,
    "retry": RetryPolicy,
}
_RENAMES = {
    "loop.name": "loop",
    "loop.options": "options",
    "verifier.name": "verifier",
    "verifier.options": "verifier_options",
}
"""Spellings of a key path that mean another (``-s loop.options.n=16`` sets ``options.n``)."""


# -- reading ------------------------------------------------------------------------------------
def file_format(path: Path, fmt: str | None = None) -> str:
    """``yaml`` or ``toml``: ``fmt`` when given, else by the file's suffix."""
    if fmt is not None:
        if fmt not in ("yaml", "toml"):
            raise UserError(f"--format takes yaml or toml, got {fmt!r}")
        return fmt
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise UserError(f"{path}: an experiment file ends in .yaml, .yml or .toml")
    return found


def read_file(path: Path) -> dict[str, Any]:
    """The mapping a YAML or TOML file holds; one error line if it cannot be read."""
    fmt = file_format(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it ({exc})") from None
    if fmt == "toml":
        import tomllib

        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"{path}: not valid TOML: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the file must hold a mapping of keys (loop:, tasks:, ...)")
    return data


def parse_set(item: str) -> tuple[str, Any]:
    """``-s a.b.c=VALUE``: the key path and the value read as a YAML scalar (``16`` is a
    number, ``true`` a bool, ``[1, 4]`` a list, anything else text)."""
    import yaml

    path, sep, raw = item.partition("=")
    path = path.strip()
    if not sep or not path or any(not p for p in path.split(".")):
        raise UserError(f"--set takes KEY.PATH=VALUE (e.g. -s loop.options.n=16), got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def _renamed(path: str) -> str:
    for old, new in _RENAMES.items():
        if path == old or path.startswith(old + "."):
            return new + path[len(old) :]
    return path


def set_path(data: dict[str, Any], path: str, value: Any, where: str = "--set") -> None:
    """Set ``path`` (dotted; a number indexes a list) in ``data``. A key that holds dots
    itself (a sweep block's ``loop.options.n``) is matched whole first."""
    parts = _renamed(path).split(".")
    node: Any = data
    while parts:
        if isinstance(node, list):
            if not parts[0].isdigit() or int(parts[0]) >= len(node):
                raise UserError(f"{where} {path}: {parts[0]!r} is not an item of that list")
            if len(parts) == 1:
                node[int(parts[0])] = value
                return
            node = node[int(parts.pop(0))]
            continue
        if not isinstance(node, dict):
            raise UserError(f"{where} {path}: the value above {'.'.join(parts)!r} is not a mapping")
        k = next(
            (k for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in node),
            1,
        )
        key = ".".join(parts[:k])
        parts = parts[k:]
        if not parts:
            node[key] = value
            return
        if node.get(key) is None or not isinstance(node[key], dict | list):
            node[key] = {}
        node = node[key]


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``: the mappings in ``MERGED`` key by key, anything else replaced."""
    out = dict(base)
    for k, v in over.items():
        if k in MERGED and isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


# -- key checks ---------------------------------------------------------------------------------
def unknown_key(src: str, path: str, known: Iterable[str]) -> UserError:
    """``FILE: unknown key 'a.b'; did you mean 'a.c'?`` (or the keys it could be)."""
    known = sorted(set(known))
    key = path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    parent = path[: -len(key)]
    if close:
        hint = f"did you mean {parent + close[0]!r}?"
    else:
        hint = f"the keys there are: {', '.join(known)}"
    return UserError(f"{src}: unknown key {path!r}; {hint}")


def _check_keys(src: str, data: Mapping[str, Any], known: Iterable[str], prefix: str) -> None:
    """Every key of ``data`` is in ``known``; budgets and the connection are checked inside."""
    known = set(known)
    for k, v in data.items():
        path = f"{prefix}{k}"
        if not isinstance(k, str) or k not in known:
            raise unknown_key(src, path, known)
        nested = _NESTED.get(k)
        if nested is not None and isinstance(v, Mapping):
            _check_keys(src, v, nested.model_fields, f"{path}.")


def _loop_fields(src: str, loop: Any, where: str) -> dict[str, Any] | None:
    """The option fields of ``loop`` (None when it is not a name)."""
    if not isinstance(loop, str):
        return None
    from loopwright.loops.graphs import get_loop

    try:
        return dict(get_loop(loop).options.model_fields)
    except UserError as exc:
        raise UserError(f"{src}: {where}: {exc}") from None


def _check_options(src: str, loop: Any, options: Any, prefix: str) -> dict[str, Any]:
    """Loop options with grid aliases resolved; an unknown one is an error."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise UserError(f"{src}: {prefix.rstrip('.')}: give a mapping of loop options")
    fields = _loop_fields(src, loop, "loop")
    if fields is None:
        return dict(options)
    out: dict[str, Any] = {}
    for k, v in options.items():
        name = k if k in fields else ALIASES.get(k, k)
        if name not in fields:
            raise unknown_key(src, f"{prefix}{k}", fields)
        out[name] = v
    return out


def _check_verifier_options(src: str, verifier: Any, options: Any, prefix: str) -> None:
    if not isinstance(verifier, str) or not isinstance(options, Mapping):
        return
    from loopwright.loops.verify import VERIFIERS

    cls = VERIFIERS.get(verifier)
    if cls is not None:
        for k in options:
            if k not in cls.Options.model_fields:
                raise unknown_key(src, f"{prefix}{k}", cls.Options.model_fields)


def _check_roles(src: str, roles: Any) -> None:
    if not isinstance(roles, Mapping):
        return
    from loopwright.traces.records import MODEL_ROLES

    for role in roles:
        if role not in MODEL_ROLES:
            raise unknown_key(src, f"role_models.{role}", MODEL_ROLES)


def _tasks(src: str, tasks: Any) -> Any:
    """A task spec string as it is; a mapping as the dataset it describes (DatasetTasks)."""
    if not isinstance(tasks, Mapping):
        return tasks
    from loopwright.loops.tasks import DatasetTasks, FieldMap

    for k, v in tasks.items():
        if k not in DatasetTasks.model_fields:
            raise unknown_key(src, f"tasks.{k}", DatasetTasks.model_fields)
        if k == "fields" and isinstance(v, Mapping):
            for f in v:
                if f not in FieldMap.model_fields:
                    raise unknown_key(src, f"tasks.fields.{f}", FieldMap.model_fields)
    try:
        return DatasetTasks(**tasks)
    except ValidationError as exc:
        raise UserError(f"{src}: {_first(exc, 'tasks')}") from None


def _first(exc: ValidationError, prefix: str = "") -> str:
    """The first pydantic error as ``key.path: message (got VALUE)``."""
    e = exc.errors()[0]
    loc = [str(p) for p in e["loc"] if not str(p).startswith("function-")]
    where = ".".join([prefix, *loc] if prefix else loc) or "value"
    got = e.get("input")
    shown = "" if isinstance(got, dict) or e["type"] == "missing" else f" (got {got!r})"
    return f"{where}: {e['msg']}{shown}"


# -- normal form --------------------------------------------------------------------------------
def _flatten_named(src: str, data: dict[str, Any], key: str, opts_key: str) -> None:
    """``loop: {name: X, options: {...}}`` as ``loop: X`` and ``options: {...}``."""
    value = data.get(key)
    if not isinstance(value, Mapping):
        return
    for k in value:
        if k not in ("name", "options"):
            raise unknown_key(src, f"{key}.{k}", ("name", "options"))
    if value.get("options") is not None and data.get(opts_key):
        raise UserError(f"{src}: give the {key} options once: {key}.options or {opts_key}")
    data[key] = value.get("name")
    if value.get("options") is not None:
        data[opts_key] = dict(value["options"])


def normal_form(src: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """A file's keys in the form of the config fields (``loop``/``verifier`` as names)."""
    data = dict(raw)
    _flatten_named(src, data, "loop", "options")
    _flatten_named(src, data, "verifier", "verifier_options")
    return data


@dataclass
class Experiment:
    """An experiment file read, with the ``-s`` overrides applied: ``data`` in the form of
    the config fields, plus the plugin files it names."""

    path: Path
    data: dict[str, Any]
    plugins: list[Path] = field(default_factory=list)
    options_at: str = "options."
    """Where the file wrote the loop options (``loop.options.`` or ``options.``)."""
    verifier_options_at: str = "verifier_options."

    @property
    def src(self) -> str:
        return str(self.path)

    def _common(self, data: dict[str, Any], known: set[str]) -> None:
        _check_keys(self.src, data, known, "")
        _check_roles(self.src, data.get("role_models"))
        _check_verifier_options(
            self.src, data.get("verifier"), data.get("verifier_options"), self.verifier_options_at
        )
        if "tasks" not in data:
            raise UserError(f"{self.src}: tasks: give the tasks (e.g. tasks: builtin:arithmetic)")
        data["tasks"] = _tasks(self.src, data["tasks"])

    def run_config(self, given: Mapping[str, Any] | None = None) -> RunConfig:
        """The run the file describes, with ``given`` (the command line's explicit flags, as
        config fields) winning over it."""
        data = merge(self.data, given or {})
        if "sweep" in data or "grid" in data:
            raise UserError(
                f"{self.src}: this file holds a sweep (a sweep: block or a grid): run it with "
                f"`loopwright sweep --config {self.src}`"
            )
        if "models" in data and "model" not in data:  # a sweep's key in a run file
            raise unknown_key(self.src, "models", [*RunConfig.model_fields])
        self._common(data, {*RunConfig.model_fields, *CONNECTION_FIELDS, *RETRY_FIELDS})
        if data.get("loop") is None:
            raise UserError(f"{self.src}: loop: give the loop to run (e.g. loop: best-of-n)")
        data["options"] = _check_options(
            self.src, data["loop"], data.get("options"), self.options_at
        )
        try:
            return RunConfig(**data)
        except ValidationError as exc:
            raise UserError(f"{self.src}: {_first(exc)}") from None

    def sweep_config(self, given: Mapping[str, Any] | None = None) -> SweepConfig:
        """The sweep the file describes (its ``sweep:`` block as a grid), with ``given``
        winning over it: ``--grid`` replaces the block, ``--model`` its models and
        ``--seed``/``--seeds`` its seeds."""
        from loopwright.loops.execution.sweep import SweepConfig

        given = dict(given or {})
        data = dict(self.data)
        if "grid" in given:
            for k in ("sweep", "loop", "options"):
                data.pop(k, None)
        if "models" in given:
            data.pop("model", None)
        data = merge(data, given)
        known = {*SweepConfig.model_fields, *CONNECTION_FIELDS, *RETRY_FIELDS,
                 "model", "loop", "options", "sweep"}  # fmt: skip
        self._common(data, known)
        if "model" in data:
            if "models" in data:
                raise UserError(f"{self.src}: give model or models, not both")
            data["models"] = [data.pop("model")]
        if isinstance(data.get("models"), str):
            data["models"] = [data["models"]]
        data.setdefault("name", _stem_name(self.path))
        block = data.pop("sweep", None)
        loop, options = data.pop("loop", None), data.pop("options", None)
        if "grid" in data:
            if block is not None or loop is not None or options:
                raise UserError(
                    f"{self.src}: a grid names each entry's loop and options: drop "
                    "loop/options/sweep, or write the points as a sweep block instead"
                )
        else:
            base = _Point(loop, _check_options(self.src, loop, options, self.options_at))
            points, axes = sweep_points(self.src, base, block, str(data.get("verifier", "auto")))
            if "models" in axes and "models" not in given:
                if "models" in data:
                    raise UserError(
                        f"{self.src}: sweep.model: the models are given twice (also as "
                        "model/models): keep one"
                    )
                data["models"] = axes["models"]
            if "seed" in axes and not {"seed", "seeds"} & given.keys():
                data["seed"], data["seeds"] = axes["seed"]
            data["grid"] = grid_text(self.src, points)
        if not isinstance(data["tasks"], str):  # a sweep stores its tasks as the spec string
            data["tasks"] = data["tasks"].spec()
        try:
            cfg = SweepConfig(**data)
        except ValidationError as exc:
            raise UserError(f"{self.src}: {_first(exc)}") from None
        try:
            parse_grid(cfg.grid)
        except UserError as exc:
            raise UserError(f"{self.src}: grid: {exc}") from None
        return cfg


def _stem_name(path: Path) -> str:
    """A sweep's default name: the file's name without its suffix, made a valid name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-") or "sweep"


def load(path: Path, sets: Sequence[str] = ()) -> Experiment:
    """Read an experiment file and apply ``-s KEY.PATH=VALUE`` overrides in order."""
    src = str(path)
    raw = read_file(path)
    at = "loop.options." if isinstance(raw.get("loop"), Mapping) else "options."
    vat = "verifier.options." if isinstance(raw.get("verifier"), Mapping) else "verifier_options."
    data = normal_form(src, raw)
    for item in sets:
        key, value = parse_set(item)
        set_path(data, key, value)
    data = normal_form(src, data)  # an override may set loop: {name: ..., options: ...}
    plugins = data.pop("plugins", None) or []
    if isinstance(plugins, str):
        plugins = [plugins]
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise UserError(f"{src}: plugins: give a list of Python file paths")
    return Experiment(path, data, [path.parent / p for p in plugins], at, vat)


# -- sweep blocks -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Point:
    loop: Any
    options: dict[str, Any]
    verifier: str | None = None


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def _point_keys(src: str, item: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A point's (or a product's) keys, flattened to dotted paths in their normal spelling."""
    flat: dict[str, Any] = {}
    _flat("", item, flat)
    out: dict[str, Any] = {}
    for k, v in flat.items():
        key = _renamed(k)
        key = "models" if key == "model" else key
        if key not in ("loop", "verifier", "models", "seed") and not key.startswith("options."):
            raise unknown_key(src, f"{where}{k}", ("loop", "options", "verifier", "model", "seed"))
        out[key] = v
    return out


def sweep_points(
    src: str, base: _Point, block: Any, verifier: str
) -> tuple[list[_Point], dict[str, Any]]:
    """The points of a ``sweep:`` block (a mapping: the product of its lists; a list: the
    points), and the axes every point shares: ``models`` and ``(seed, seeds)``."""
    axes: dict[str, Any] = {}
    if block is None:
        if base.loop is None:
            raise UserError(f"{src}: sweep: give a sweep block (or a grid, or one loop)")
        return [base], axes
    points: list[_Point] = []
    if isinstance(block, Mapping):
        keys = _point_keys(src, block, "sweep.")
        lists = {k: v if isinstance(v, list) else [v] for k, v in keys.items()}
        for k, v in lists.items():
            if not v:
                raise UserError(f"{src}: sweep.{k}: give at least one value")
        if "models" in lists:
            axes["models"] = lists.pop("models")
        if "seed" in lists:
            axes["seed"] = _seed_range(src, lists.pop("seed"))
        names = list(lists)
        for combo in itertools.product(*(lists[k] for k in names)):
            points.append(
                _apply(src, base, dict(zip(names, combo, strict=True)), "sweep.", verifier)
            )
    elif isinstance(block, list):
        for i, item in enumerate(block):
            where = f"sweep[{i}]."
            if not isinstance(item, Mapping):
                raise UserError(f"{src}: sweep[{i}]: give a point as a mapping (loop:, options:)")
            keys = _point_keys(src, item, where)
            shared = [k for k in keys if k in ("models", "seed")]
            if shared:
                raise UserError(
                    f"{src}: {where}{shared[0].rstrip('s')}: a point of a list cannot set its "
                    "own model or seed: give models:/seeds: for every point"
                )
            points.append(_apply(src, base, keys, where, verifier))
    else:
        raise UserError(f"{src}: sweep: give a mapping (a product) or a list of points")
    if not points:
        raise UserError(f"{src}: sweep: the block holds no points")
    return points, axes


def _seed_range(src: str, seeds: list[Any]) -> tuple[int, int]:
    ok = all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not ok or sorted(seeds) != list(range(min(seeds), min(seeds) + len(seeds))):
        raise UserError(f"{src}: sweep.seed: give consecutive whole numbers (e.g. [0, 1, 2])")
    return min(seeds), len(seeds)


def _apply(src: str, base: _Point, keys: Mapping[str, Any], where: str, verifier: str) -> _Point:
    """A point: the top's loop and options (those only for the top's loop, when it names
    one) under the point's own keys."""
    loop = keys.get("loop", base.loop)
    if not isinstance(loop, str):
        raise UserError(f"{src}: {where}loop: give each point a loop (or loop: at the top)")
    own = {k.removeprefix("options."): v for k, v in keys.items() if k.startswith("options.")}
    options = _check_options(src, loop, own, f"{where}loop.options.")
    if base.loop is None or loop == base.loop:
        options = {**_check_options(src, loop, base.options, "options."), **options}
    v = keys.get("verifier")
    if v is not None and not isinstance(v, str):
        raise UserError(f"{src}: {where}verifier: give a verifier name")
    return _Point(loop=loop, options=options, verifier=None if v == verifier else v)


def _param(point: _Point) -> str | None:
    """The option a point's grid value names (see CURVE_PARAMS)."""
    if not point.options:
        return None
    return next((p for p in CURVE_PARAMS if p in point.options), min(point.options))


def grid_entries(points: Sequence[_Point]) -> list[GridEntry]:
    """Points grouped into grid entries by what they are: loop, verifier and every option
    but the one whose values they take (which depends on the point alone)."""
    groups: dict[str, tuple[GridEntry, list[Any]]] = {}
    for p in points:
        param = _param(p)
        fixed = {k: v for k, v in p.options.items() if k != param}
        if p.verifier is not None:
            fixed[VERIFIER_KEY] = p.verifier
        entry = GridEntry(loop=p.loop, fixed=fixed, param=param)
        key = json.dumps([entry.loop, entry.fixed, entry.param], sort_keys=True, default=str)
        got = groups.setdefault(key, (entry, []))
        if param is not None and p.options[param] not in got[1]:
            got[1].append(p.options[param])
    return [e.model_copy(update={"values": tuple(vs)}) for e, vs in groups.values()]


def grid_text(src: str, points: Sequence[_Point]) -> str:
    """The grid of ``points``; refused when it would not read back as the same points."""
    entries = grid_entries(points)
    labels = [e.label for e in entries]
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup:
        raise UserError(
            f"{src}: sweep: {dup} is given both with and without a swept option: "
            "give its points that option too"
        )
    try:
        text = "; ".join(format_entry(e) for e in entries)
    except ValueError as exc:
        raise UserError(f"{src}: sweep: the value {exc}") from None
    try:
        back = parse_grid(text)
    except UserError as exc:
        raise UserError(f"{src}: sweep: {exc}") from None
    for mine, read in zip(entries, back, strict=True):
        if (mine.loop, mine.fixed, mine.param, mine.values) != (
            read.loop, read.fixed, read.param, read.values,
        ):  # fmt: skip
            raise UserError(f"{src}: sweep {mine.label}: its values cannot be written in a grid")
    return text


# -- writing (export-config) ----------------------------------------------------------------------
_ORDER = (
    "name", "run_name", "resume", "loop", "options", "grid", "model", "models", "role_models",
    "tasks", "limit", "seed", "seeds", "verifier", "verifier_options", "grader", "budget",
    "run_budget", "grade", "db",
)  # fmt: skip


def _drop_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        out = {k: _drop_none(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in out.items() if v != {}}
    if isinstance(value, list | tuple):
        return [_drop_none(v) for v in value]
    return value


def _ordered(data: Mapping[str, Any]) -> dict[str, Any]:
    first = {k: data[k] for k in _ORDER if k in data}
    return {**first, **{k: v for k, v in data.items() if k not in first}}


def _how(stored: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The HOW settings that differ from their defaults (the connection key by key)."""
    out: dict[str, Any] = {}
    for k in RunSettings.HOW - {"db"}:
        if k not in stored:
            continue
        v, d = stored[k], defaults.get(k)
        if isinstance(v, Mapping) and isinstance(d, Mapping):
            diff = {
                kk: vv for kk, vv in v.items() if vv != d.get(kk) and not (
                    isinstance(vv, Mapping) and isinstance(d.get(kk), Mapping)
                )
            }  # fmt: skip
            for kk, vv in v.items():  # one more level: connection.retry
                sub = d.get(kk)
                if isinstance(vv, Mapping) and isinstance(sub, Mapping):
                    inner = {x: y for x, y in vv.items() if y != sub.get(x)}
                    if inner:
                        diff[kk] = inner
            if diff:
                out[k] = diff
        elif v != d:
            out[k] = v
    return out


def run_file(stored: Mapping[str, Any], name: str, db: str) -> dict[str, Any]:
    """The experiment file of a stored run (its ``runs.config``): fed to ``run --config`` it
    resumes that run (same name, same identity)."""
    tasks = stored.get("tasks")
    if isinstance(tasks, str) and tasks.startswith("inline:"):
        raise UserError(
            f"run {name!r} was given its tasks as a Python list ({tasks}): a file cannot hold "
            "them; write them to a JSONL file and run that"
        )
    fields = set(RunConfig.model_fields)
    keep = {k: v for k, v in stored.items() if k in fields and k not in RunSettings.HOW}
    defaults = RunConfig(loop="x", tasks="x").model_dump(mode="json")
    out = {**keep, **_how(stored, defaults), "run_name": name, "resume": True, "db": db}
    return _ordered(_drop_none(out))


def sweep_file(stored: Mapping[str, Any], db: str) -> dict[str, Any]:
    """The experiment file of a stored sweep (its ``sweeps.config``): fed to ``sweep
    --config`` it resumes that sweep."""
    from loopwright.loops.execution.sweep import SweepConfig

    fields = set(SweepConfig.model_fields)
    keep = {k: v for k, v in stored.items() if k in fields and k not in RunSettings.HOW}
    defaults = SweepConfig(name="x", tasks="x", grid="x").model_dump(mode="json")
    out = {**keep, **_how(stored, defaults), "db": db}
    return _ordered(_drop_none(out))


def dumps(data: Mapping[str, Any], fmt: str) -> str:
    """``data`` as YAML or TOML text."""
    if fmt == "yaml":
        import yaml

        return str(yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, width=100))
    return toml_dumps(data)


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k, ensure_ascii=False)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        inner = ", ".join(f"{_toml_key(str(k))} = {_toml_value(x)}" for k, x in v.items())
        return "{" + inner + "}" if inner else "{}"
    raise UserError(f"a value of type {type(v).__name__} cannot be written as TOML")


def toml_dumps(data: Mapping[str, Any], prefix: str = "") -> str:
    """A small TOML writer (``tomllib`` only reads): scalars and lists first, then each
    mapping as its own ``[table]``. None values are left out (TOML has no null)."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, Mapping) and v:
            tables.append((k, v))
        else:
            lines.append(f"{_toml_key(str(k))} = {_toml_value(_drop_none(v))}")
    out = "\n".join(lines)
    for k, v in tables:
        name = f"{prefix}.{_toml_key(str(k))}" if prefix else _toml_key(str(k))
        body = toml_dumps(v, name)
        head = f"[{name}]"
        out += ("\n\n" if out else "") + head + ("\n" + body if body else "")
    return out + ("\n" if not prefix else "")
