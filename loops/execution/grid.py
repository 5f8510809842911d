"""Sweep grids: ``;``-separated entries, each ``LOOP[(OPT=VAL, ...)][:PARAM=V1,V2,...]``.

    best-of-n:n=1,2,4,8,16; self-refine:max_rounds=1,2,4; reflexion:trials=1,2,4
    best-of-n(selector=majority,temperature=1.0):n=1,4,16

``PARAM`` is a loop option; ``rounds``/``trials`` stand for ``max_rounds``/``max_trials``.
A grid that cannot be read is refused with one line that says how to write it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from loopwright.loops.errors import UserError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ALIASES = {"rounds": "max_rounds", "trials": "max_trials"}
VERIFIER_KEY = "verifier"
"""A grid entry's ``(verifier=NAME)`` overrides the sweep's --verifier for that strategy."""
_ENTRY = re.compile(
    r"^\s*(?P<loop>[A-Za-z0-9_.-]+)\s*(?:\((?P<fixed>[^)]*)\))?\s*(?::\s*(?P<param>[A-Za-z_]\w*)"
    r"\s*=\s*(?P<values>.+?))?\s*$"
)


def _value(raw: str) -> Any:
    raw = raw.strip()
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


class GridEntry(BaseModel):
    """One strategy of a grid: a loop, fixed options, and the option swept over values."""

    model_config = ConfigDict(frozen=True)

    loop: str
    fixed: dict[str, Any] = Field(default_factory=dict)
    param: str | None = None
    values: tuple[Any, ...] = ()

    @property
    def label(self) -> str:
        if not self.fixed:
            return self.loop
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.fixed.items()))
        return f"{self.loop}({inner})"

    @property
    def shared(self) -> bool:
        """Smaller values are read from the run at the largest (best-of-n over n)."""
        return (
            self.loop == "best-of-n"
            and self.param == "n"
            and not self.fixed.get("rejection", False)
            and len(self.values) > 1
        )

    @property
    def verifier(self) -> str | None:
        """The in-loop verifier this strategy overrides the sweep's with, if any."""
        v = self.fixed.get(VERIFIER_KEY)
        return None if v is None else str(v)

    def options(self, value: Any | None) -> dict[str, Any]:
        opts = {k: v for k, v in self.fixed.items() if k != VERIFIER_KEY}
        if self.param is not None:
            opts[self.param] = value
        return opts


def format_value(value: Any) -> str:
    """``value`` as a grid writes it, so that it reads back the same; ValueError when it
    cannot be written (it holds , ; ( ) or =, or is not finite)."""
    if isinstance(value, str):
        try:
            json.loads(value)
            text = json.dumps(value)  # would read back as a number or a bool: quote it
        except json.JSONDecodeError:
            text = value
    else:
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            text = ""
    if not text or text != text.strip() or any(c in text for c in ",;()="):
        raise ValueError(f"{value!r} cannot be written in a grid (it holds , ; ( ) or =)")
    return text


def format_entry(entry: GridEntry) -> str:
    """``entry`` as a grid writes it: ``LOOP(OPT=VAL,...):PARAM=V1,V2``."""
    text = entry.loop
    if entry.fixed:
        inner = ",".join(f"{k}={format_value(v)}" for k, v in sorted(entry.fixed.items()))
        text += f"({inner})"
    if entry.param is not None:
        text += f":{entry.param}=" + ",".join(format_value(v) for v in entry.values)
    return text


def parse_grid(text: str) -> list[GridEntry]:
    """Parse and validate a grid against the loops' option models (one clear error line)."""
    from loopwright.loops.graphs import get_loop

    entries: list[GridEntry] = []
    for part in [p for p in text.split(";") if p.strip()]:
        m = _ENTRY.match(part)
        if not m:
            raise UserError(
                f"cannot read grid entry {part.strip()!r}: write LOOP[(OPT=VAL,...)][:PARAM=V1,V2]"
                ", e.g. best-of-n:n=1,2,4"
            )
        spec = get_loop(m["loop"])
        fields = spec.options.model_fields

        def field_name(name: str, spec_name: str = m["loop"], fields: Any = fields) -> str:
            if name in fields or name == VERIFIER_KEY:
                return name
            if ALIASES.get(name) in fields:
                return ALIASES[name]
            raise UserError(
                f"{spec_name} has no option {name!r}; its options: {', '.join(sorted(fields))}"
            )

        fixed: dict[str, Any] = {}
        for item in [i for i in (m["fixed"] or "").split(",") if i.strip()]:
            key, sep, raw = item.partition("=")
            if not sep:
                raise UserError(f"grid option {item.strip()!r} needs KEY=VALUE")
            fixed[field_name(key.strip())] = _value(raw)
        param = field_name(m["param"]) if m["param"] else None
        values = tuple(_value(v) for v in (m["values"] or "").split(",") if v.strip())
        if param is not None and not values:
            raise UserError(f"grid entry {part.strip()!r} gives {param} no values")
        again = [v for i, v in enumerate(values) if v in values[:i]]
        if again:
            raise UserError(f"grid entry {part.strip()!r} repeats {param}={again[0]}")
        if param == VERIFIER_KEY:
            raise UserError(
                f"grid entry {part.strip()!r}: give each verifier its own entry, "
                "e.g. best-of-n(verifier=oracle):n=1,4"
            )
        if VERIFIER_KEY in fixed:
            from loopwright.loops.verify import check_verifier

            check_verifier(str(fixed[VERIFIER_KEY]))
        entry = GridEntry(loop=m["loop"], fixed=fixed, param=param, values=values)
        for v in values or (None,):
            try:
                spec.options(**entry.options(v))
            except ValidationError as exc:
                e = exc.errors()[0]
                where = ".".join(str(p) for p in e["loc"]) or "options"
                raise UserError(f"grid {entry.label} {where}={v!r}: {e['msg']}") from None
        if entry.shared and not all(isinstance(v, int) for v in values):
            raise UserError(f"grid {entry.label}: n values must be whole numbers")
        entries.append(entry)
    if not entries:
        raise UserError(
            "the grid is empty: e.g. --grid 'best-of-n:n=1,4,16; self-refine:rounds=1,2'"
        )
    labels = [e.label for e in entries]
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup:
        raise UserError(f"the grid names {dup} twice; merge its values into one entry")
    return entries
