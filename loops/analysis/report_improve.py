"""``loopwright report --improve NAME``: an improve series as a Markdown table and PNGs.

One row per round: eval pass@1 and pass@k with 95 % bootstrap CIs (tasks resampled), maj@k,
the loop's own answer, and the round's training side: yield of verified samples, tasks
solved, distinct answers per task, mean completion length, rows trained on, final loss.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopwright.loops.errors import UserError
from loopwright.traces import TraceStore
from loopwright.traces import lineage as L


def _ci(m: dict[str, Any] | None) -> str:
    if not m:
        return "-"
    return f"{m['mean']:.1%} [{m['lo']:.1%}, {m['hi']:.1%}]"


def _num(x: Any, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def improve_table(rounds: list[dict[str, Any]]) -> str:
    """The rounds as a Markdown table."""
    head = ("| round | stage | eval pass@1 | eval pass@k | maj@k | loop | train yield | solved "
            "| distinct/task | mean tok | rows | final loss |")  # fmt: skip
    lines = [head, "|" + "---|" * 12]
    for r in rounds:
        m = r.get("metrics") or {}
        e, t = m.get("eval") or {}, m.get("train") or {}
        lines.append(
            f"| {r['round']} | {r['stage']} | {_ci(e.get('pass@1'))} | {_ci(e.get('pass@k'))} "
            f"| {_ci(e.get('maj@k'))} | {_ci(e.get('loop'))} | {_num(t.get('yield'), '{:.1%}')} "
            f"| {_num(t.get('solved'), '{:.1%}')} | {_num(e.get('distinct_answers'))} "
            f"| {_num(e.get('mean_completion_tokens'), '{:.0f}')} | {_num(t.get('data_rows'), '{}')} "
            f"| {_num(m.get('final_loss'), '{:.3f}')} |"
        )
    return "\n".join(lines)


def _plots(out: Path, rounds: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rounds if (r.get("metrics") or {}).get("eval")]
    xs = [r["round"] for r in done]
    made = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("pass@1", "pass@1"), ("pass@k", "pass@k"), ("maj@k", "maj@k")):
        pts = [r["metrics"]["eval"].get(key) for r in done]
        if not any(pts):
            continue
        ys = [p["mean"] for p in pts]
        err = [[p["mean"] - p["lo"] for p in pts], [p["hi"] - p["mean"] for p in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, label=label)
    ax.set_xlabel("round (0 = base model)")
    ax.set_ylabel("eval accuracy (95% CI)")
    ax.set_xticks(xs)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)
    made.append("accuracy.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    tr = [r for r in rounds if (r.get("metrics") or {}).get("train")]
    if tr:
        ax.plot([r["round"] for r in tr], [r["metrics"]["train"].get("yield") or 0 for r in tr],
                marker="o", label="train yield (verified share)")  # fmt: skip
    ax2 = ax.twinx()
    ax2.plot(xs, [r["metrics"]["eval"].get("distinct_answers") or 0 for r in done], marker="s",
             color="tab:red", label="eval distinct answers / task")  # fmt: skip
    ax.set_xlabel("round")
    ax.set_ylabel("yield")
    ax2.set_ylabel("distinct answers / task")
    ax.set_xticks(xs)
    fig.legend(loc="upper left", bbox_to_anchor=(0.1, 0.95))
    fig.tight_layout()
    fig.savefig(out / "yield_diversity.png", dpi=110)
    plt.close(fig)
    made.append("yield_diversity.png")
    return made


def write_improve_report(db: str, name: str, out: Path) -> Path:
    """Write ``out/report.md`` and its PNGs for the series ``name``."""
    if not Path(db).exists():
        raise UserError(f"no trace database at {db}")
    with TraceStore(db, read_only=True) as store:
        rounds = L.rounds_of(store, name)
        if not rounds:
            known = ", ".join(L.improve_names(store)) or "none"
            raise UserError(f"no improve series named {name!r} in {db} (series: {known})")
        models = L.models_of(store, name)
    out.mkdir(parents=True, exist_ok=True)
    pngs = _plots(out, rounds)
    cfg = rounds[0].get("config") or {}
    lines = [
        f"# improve {name}",
        "",
        f"method {cfg.get('method')}, loop {cfg.get('loop')} {cfg.get('options') or ''}, "
        f"train `{cfg.get('tasks')}`, eval `{cfg.get('eval_tasks')}` "
        f"({cfg.get('eval_samples')} samples a task); generated "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        improve_table(rounds),
        "",
        "## Lineage",
        "",
        "| round | model | parent | trained from | rows | data sha256 | loss | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        lines.append(
            f"| {m['round']} | `{Path(str(m['model_id'])).name}` | `{Path(str(m['parent'])).name}` "
            f"| `{Path(str(m['base'])).name}` | {m['data_rows']} | {str(m['data_hash'])[:12]} "
            f"| {_num(m['final_loss'], '{:.3f}')} | {_num(m['train_s'], '{:.0f}')} |"
        )
    lines += ["", *[f"![{p}]({p})" for p in pngs], ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
