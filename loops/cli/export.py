"""``loopwright export-config``: the experiment file (YAML or TOML) that reproduces a stored
run or sweep. Fed back with ``run --config`` (``sweep --config``) it resumes that same run
(sweep): same name, same identity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from loopwright.loops.cli.options import DbOption


def export_config(
    name: Annotated[str, typer.Argument(help="Run (name or id) or sweep name.")],
    db: DbOption = "loopwright.duckdb",
    out: Annotated[
        Path | None, typer.Option(help="File to write (.yaml/.toml); default: print it.")
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="yaml or toml (default: by --out's suffix, else yaml)."),
    ] = None,
) -> None:
    """Write the experiment file of a stored run or sweep (run --config / sweep --config
    resumes it)."""
    import json

    from loopwright.loops.cli.progress import console
    from loopwright.loops.errors import UserError
    from loopwright.loops.execution.config_file import dumps, file_format, run_file, sweep_file
    from loopwright.traces.queries import table_names
    from loopwright.traces.runs import run_by_id, run_by_name
    from loopwright.traces.store import TraceStore
    from loopwright.traces.sweeps import sweep_by_name, sweep_names

    kind = file_format(out, fmt) if out is not None else file_format(Path("x.yaml"), fmt)
    if not Path(db).exists():
        raise UserError(f"{db}: no such trace database (give --db)")
    with TraceStore(db, read_only=True) as store:
        run = run_by_name(store, name) or run_by_id(store, name)
        has_sweeps = "sweeps" in table_names(store)
        sweep = sweep_by_name(store, name) if has_sweeps and run is None else None
        known = sweep_names(store) if has_sweeps and run is None and sweep is None else []
    if run is not None:
        data = run_file(json.loads(run["config"] or "{}"), run["name"], db)
        what = f"run {run['name']}"
    elif sweep is not None:
        data = sweep_file(json.loads(sweep["config"] or "{}"), db)
        what = f"sweep {sweep['name']}"
    else:
        sweeps = f"; sweeps: {', '.join(known)}" if known else ""
        raise UserError(
            f"no run or sweep named {name!r} in {db} (`loopwright runs --db {db}` lists the "
            f"runs{sweeps})"
        )
    text = f"# {what} in {db}: loopwright {'sweep' if sweep else 'run'} --config FILE\n"
    text += dumps(data, kind)
    if out is None:
        typer.echo(text, nl=False)
        return
    out.write_text(text, encoding="utf-8")
    console(stderr=True).print(f"wrote {out} ({what})", markup=False, highlight=False)
