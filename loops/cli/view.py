"""``loopwright view``: serve the trace viewer, and hand it the sweep report it cannot import.

The viewer lives in traces/ and traces never imports loops, so the sweep page's plots and
tables (loops/analysis/report.py) reach it as a function passed in here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from loopwright.loops.cli.progress import console as make_console
from rich.markup import escape

if TYPE_CHECKING:
    from loopwright.loops.analysis.report_data import SweepData

PLOT_TITLES = {
    "accuracy_vs_tokens.png": "accuracy vs tokens / task",
    "accuracy_vs_calls.png": "accuracy vs model samples / task",
    "accuracy_vs_usd.png": "accuracy vs dollars / task",
    "accuracy_vs_wall.png": "accuracy vs model seconds / task",
    "samples_at_k.png": "pass@k, maj@k, weighted and verifier-picked",
    "overoptimisation.png": "best-of-N against a proxy scorer",
    "transitions.png": "revision turns: fixed vs broken",
}


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f} %"


def sweep_report(db: str, name: str, n_boot: int = 500) -> dict[str, Any]:
    """The report of ``loopwright report`` as the viewer shows it: tables and PNG bytes, or
    ``{"note": why not}`` when it cannot be made (no point finished yet, or the report's own
    one-line refusal): the sweep page then shows its points and that line."""
    from loopwright.loops.analysis.report_data import load_sweep
    from loopwright.loops.errors import UserError

    try:
        data = load_sweep(db, name)
        return _report(data, db, name, n_boot)
    except UserError as exc:  # e.g. no finished point yet: the page shows the points and this
        return {"note": str(exc)}


def _report(data: SweepData, db: str, name: str, n_boot: int) -> dict[str, Any]:
    from loopwright.loops.analysis.report import (
        curve_points,
        matched_table,
        vote_points,
        write_report,
    )

    rows = curve_points(data, n_boot)
    rows += vote_points(data, rows, n_boot)
    points = {
        "title": "accuracy and cost per point (95 % bootstrap CI)",
        "columns": [
            "strategy",
            "value",
            "accuracy",
            "95 % CI",
            "tokens/task",
            "samples/task",
            "$/task",
            "tasks",
        ],
        "rows": [
            [
                r["label"],
                r["value"],
                _pct(r["acc"]),
                f"{_pct(r['lo'])} to {_pct(r['hi'])}",
                f"{r['tokens']:,.0f}",
                f"{r['calls']:.2f}",
                f"{r['usd']:.4f}",
                r["n"],
            ]
            for r in sorted(rows, key=lambda r: (r["label"], r["tokens"]))
        ],
    }
    labels = sorted({r["label"] for r in rows})
    matched = {
        "title": "compute-matched: each strategy's best point within a token budget",
        "columns": ["tokens/task ≤", *labels, "winner", "margin"],
        "rows": [
            [f"{m.budget:,.0f}"]
            + [
                "-" if (point := m.best.get(lab)) is None else _pct(point.accuracy)
                for lab in labels
            ]
            + [m.winner or "-", _pct(m.margin)]
            for m in matched_table(rows)
        ],
    }
    plots: dict[str, tuple[str, bytes]] = {}
    with tempfile.TemporaryDirectory(prefix="loopwright-view-") as tmp:
        write_report(db, name, Path(tmp), n_boot=n_boot)
        for png in sorted(Path(tmp).glob("*.png")):
            plots[png.name] = (PLOT_TITLES.get(png.name, png.stem), png.read_bytes())
    return {"tables": [points, matched], "plots": plots}


def view(
    db: Annotated[str, typer.Option(help="Trace database.")] = "loopwright.duckdb",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8765,
    host: Annotated[
        str, typer.Option(help="Interface to listen on. Anything but 127.0.0.1 exposes traces.")
    ] = "127.0.0.1",
) -> None:
    """Serve a read-only web page over the trace store (works while a run writes it)."""
    from loopwright.loops.errors import UserError
    from loopwright.traces.view import Viewer, ViewError

    err = make_console(stderr=True)
    try:  # a missing file, a port in use or out of range: one line, before anything else
        viewer = Viewer(db, host=host, port=port, sweep_report=sweep_report)
    except ViewError as exc:
        raise UserError(str(exc)) from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(
            f"[yellow]warning:[/yellow] listening on {escape(host)}: anyone who can reach it "
            "reads every prompt and output in the traces (there is no login)",
            highlight=False,
        )
    make_console().print(
        f"loopwright view: {viewer.url}  (read-only over {escape(db)}; Ctrl-C stops)",
        highlight=False,
    )
    try:
        viewer.serve_forever()
    except KeyboardInterrupt:
        err.print("viewer stopped")
