"""Harvest: training sets for TRL and ``datasets`` from the trace store, as SQL over DuckDB.

>>> from loopwright.traces.harvest import harvest, HarvestOptions
>>> result = harvest("dpo", "loopwright.duckdb", "pairs.parquet", HarvestOptions(min_margin=0.5))
>>> result.rows, result.excluded

Formats: ``sft`` (verified answers as ``messages``), ``dpo`` (``prompt``/``chosen``/``rejected``
with scores, margin and source: siblings, revisions, judge), ``kto`` (``prompt``/``completion``/
``label``), ``prm`` (TRL stepwise supervision), ``critique`` (critiques that led to a better
verified revision) and ``corrections`` (attempt, feedback, revision ... as ``messages``).
The output format follows the extension: ``.jsonl``, ``.parquet``, or a directory written with
``datasets``' ``save_to_disk``. See docs/harvest.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
from loopwright.traces.harvest.base import (
    HarvestError,
    build_candidates,
    build_contamination,
    connect,
    finish,
    lit,
    overlapping,
)
from loopwright.traces.harvest.formats import BUILDERS, Plan
from loopwright.traces.harvest.options import (
    FORMATS,
    Format,
    HarvestOptions,
    HarvestResult,
)

__all__ = [
    "FORMATS",
    "Format",
    "HarvestError",
    "HarvestOptions",
    "HarvestResult",
    "harvest",
    "output_kind",
    "overlapping",
]


def output_kind(out: str | Path) -> str:
    """``jsonl``, ``parquet`` or ``dataset`` (a directory for ``save_to_disk``)."""
    name = str(out).lower()
    if name.endswith(".jsonl") or name.endswith(".json"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if Path(out).suffix == "":
        return "dataset"
    raise HarvestError(
        f"cannot tell the output format of {out}: end it in .jsonl or .parquet, "
        "or give a directory name (no extension) for a `datasets` save_to_disk folder"
    )


def harvest(
    fmt: str,
    db: str | Path,
    out: str | Path | None,
    opts: HarvestOptions | None = None,
    *,
    overwrite: bool = False,
) -> HarvestResult:
    """Export ``fmt`` rows from trace database ``db`` to ``out`` (None: count, write nothing)."""
    t0 = time.perf_counter()
    opts = opts or HarvestOptions()
    if fmt not in BUILDERS:
        raise HarvestError(f"unknown harvest format {fmt!r}; choose one of {', '.join(FORMATS)}")
    kind = output_kind(out) if out is not None else None
    if out is not None and Path(out).exists() and not overwrite:
        raise HarvestError(f"{out} already exists: pick another --out or pass --overwrite")
    if kind == "dataset":
        _need_datasets()
    con = connect(db, opts)
    try:
        build_candidates(con, opts)
        build_contamination(con, opts)
        plan = BUILDERS[fmt](con, opts)
        finish(con, opts, opts.cap(fmt), plan.order, plan.windows)
        select = _select(plan)
        if out is not None and kind is not None:
            _write(con, select, Path(out), kind)
        return _result(con, fmt, out, plan, time.perf_counter() - t0)
    finally:
        con.close()


def _select(plan: Plan) -> str:
    cols = ", ".join(f"{sql} AS {name}" for name, sql in plan.columns.items())
    return f"SELECT {cols} FROM units WHERE reason IS NULL ORDER BY task_id, prompt_key, uid"


def _need_datasets() -> None:
    try:
        import datasets  # noqa: F401
    except ImportError as exc:
        raise HarvestError(
            "writing a dataset folder needs the `datasets` package: "
            "pip install 'loopwright[harvest]' (or end --out in .jsonl / .parquet)"
        ) from exc


def _write(con: duckdb.DuckDBPyConnection, select: str, out: Path, kind: str) -> None:
    """Write next to ``out`` and rename into place: a failed export leaves nothing behind."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise _unwritable(out, exc) from None
    try:
        if kind == "dataset":
            import datasets

            table = con.sql(select).to_arrow_table()
            target = tmp / "ds"
            datasets.Dataset(table).save_to_disk(str(target))
        else:
            target = tmp / out.name
            fmt = "JSON" if kind == "jsonl" else "PARQUET"
            con.execute(f"COPY ({select}) TO {lit(str(target))} (FORMAT {fmt})")
        if out.exists():
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink()
        os.replace(target, out)
    except (OSError, duckdb.IOException) as exc:
        raise _unwritable(out, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unwritable(out: Path, exc: Exception) -> HarvestError:
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
    return HarvestError(f"--out {out}: cannot write the export ({why}); choose a writable path")


def _result(
    con: duckdb.DuckDBPyConnection, fmt: str, out: str | Path | None, plan: Plan, secs: float
) -> HarvestResult:
    def rows(sql: str) -> list[tuple]:
        return con.execute(sql).fetchall()

    [(considered, kept, prompts)] = rows(
        "SELECT count(*), count(*) FILTER (reason IS NULL),"
        " count(DISTINCT prompt_key) FILTER (reason IS NULL) FROM units"
    )
    excluded = dict(rows(
        "SELECT reason, count(*) FROM units WHERE reason IS NOT NULL GROUP BY reason"
        " ORDER BY count(*) DESC, reason"
    ))  # fmt: skip
    [(per_max,)] = rows(
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) n FROM units"
        " WHERE reason IS NULL GROUP BY prompt_key)"
    )
    by_source: dict[str, int] = {}
    labels: dict[str, int] = {}
    hist: list[tuple[float, float, int]] = []
    if fmt == "dpo":
        by_source = dict(rows(
            "SELECT source, count(*) FROM units WHERE reason IS NULL GROUP BY source ORDER BY 1"
        ))  # fmt: skip
        counts = dict(rows(
            "SELECT least(CAST(floor(margin * 10) AS INT), 9), count(*) FROM units"
            " WHERE reason IS NULL GROUP BY 1"
        ))  # fmt: skip
        hist = [(b / 10, (b + 1) / 10, int(counts.get(b, 0))) for b in range(10)]
    elif fmt == "kto":
        labels = {str(k).lower(): v for k, v in rows(
            "SELECT label, count(*) FROM units WHERE reason IS NULL GROUP BY 1 ORDER BY 1 DESC"
        )}  # fmt: skip
    elif fmt == "prm":
        labels = {str(k).lower(): v for k, v in rows(
            "SELECT l, count(*) FROM (SELECT unnest(labels) l FROM units WHERE reason IS NULL)"
            " GROUP BY 1 ORDER BY 1 DESC"
        )}  # fmt: skip
    contaminated = [r[0] for r in rows(
        "SELECT DISTINCT task_id FROM units WHERE reason = 'contaminated' ORDER BY 1"
    )]  # fmt: skip
    return HarvestResult(
        format=fmt,  # type: ignore[arg-type]
        out=None if out is None else str(out),
        rows=kept,
        prompts=prompts,
        per_prompt_max=per_max,
        considered=considered,
        excluded=excluded,
        by_source=by_source,
        labels=labels,
        margin_histogram=hist,
        contaminated_tasks=contaminated,
        columns=list(plan.columns),
        seconds=secs,
    )
