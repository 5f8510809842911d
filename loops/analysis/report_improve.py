"""``loopwright report --improve NAME``: an improve series as a Markdown table and PNGs.

One row per round: eval pass@1 and pass@k with 95 % bootstrap CIs (tasks resampled), maj@k,
the loop's own answer, and the round's training side: yield of verified samples, tasks
solved, distinct answers per task, mean completion length, rows trained on, final loss.

A GRPO series (``--method grpo``, or TRL logs brought in by ``loopwright ingest``) adds its
steps: one table row per step (``train_steps``: reward with a 95 % CI resampling the step's
prompt groups, the grader's correctness, format and clip rates, length, groups without
signal, majority agreement, loss, KL, entropy, step time), reward against step, and the
held-out accuracy of each checkpoint (pass@1, pass@k, maj@k with CIs) against its step.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopwright.loops.errors import UserError
from loopwright.traces import TraceStore
from loopwright.traces import lineage as L
from loopwright.traces import metrics as M
from loopwright.traces import rollouts as R


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


def _first(m: dict[str, Any], *keys: str) -> Any:
    return next((m[k] for k in keys if m.get(k) is not None), None)


def reward_cis(rewards: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Step -> mean reward with a 95 % bootstrap CI, resampling the step's prompt groups (the
    completions of one group are not independent)."""
    by_step: dict[int, list[dict[str, Any]]] = {}
    for r in rewards:
        by_step.setdefault(int(r["step"]), []).append(r)
    out = {}
    for step, rows in sorted(by_step.items()):
        mean, lo, hi = M.bootstrap_ci([float(r["reward"]) for r in rows], seed=step,
                                      groups=[r["group_index"] for r in rows])  # fmt: skip
        out[step] = {"mean": mean, "lo": lo, "hi": hi}
    return out


def grpo_table(steps: list[dict[str, Any]], cis: dict[int, dict[str, float]]) -> str:
    """The GRPO steps as a Markdown table (metrics from ``train_steps``)."""
    head = ("| step | rollouts | reward (95% CI) | correct | format | clipped | mean tok "
            "| no-signal groups | maj. agreement | loss | KL | entropy | step s |")  # fmt: skip
    lines = [head, "|" + "---|" * 13]
    pct = "{:.1%}"
    for row in steps:
        m, step = row["metrics"], int(row["step"])
        ci = cis.get(step)
        reward = (f"{ci['mean']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]" if ci
                  else _num(m.get("reward_mean"), "{:.3f}"))  # fmt: skip
        lines.append(
            f"| {step} | {_num(m.get('completions'), '{}')} | {reward} "
            f"| {_num(m.get('correct_rate'), pct)} | {_num(m.get('format_rate'), pct)} "
            f"| {_num(m.get('clip_rate'), pct)} | {_num(m.get('completion_tokens_mean'), '{:.0f}')} "
            f"| {_num(m.get('frac_reward_zero_std'), pct)} "
            f"| {_num(m.get('majority_agreement'), pct)} | {_num(m.get('loss'), '{:.4f}')} "
            f"| {_num(_first(m, 'kl', 'objective/kl'), '{:.4f}')} "
            f"| {_num(m.get('entropy'), '{:.3f}')} "
            f"| {_num(_first(m, 'step_s', 'step_time'), '{:.1f}')} |"
        )
    return "\n".join(lines)


def _checkpoints(rounds: list[dict[str, Any]], marks: dict[int, int]) -> list[tuple[int, dict]]:
    """(step, round row) of every evaluated round whose step is known (round 0: step 0)."""
    out = []
    for r in rounds:
        step = 0 if r["round"] == 0 else marks.get(int(r["round"]))
        if step is not None and (r.get("metrics") or {}).get("eval"):
            out.append((step, r))
    return out


def checkpoint_table(points: list[tuple[int, dict[str, Any]]]) -> str:
    lines = ["| step | round | eval pass@1 | eval pass@k | maj@k |", "|---|---|---|---|---|"]
    for step, r in points:
        e = r["metrics"]["eval"]
        lines.append(f"| {step} | {r['round']} | {_ci(e.get('pass@1'))} | {_ci(e.get('pass@k'))} "
                     f"| {_ci(e.get('maj@k'))} |")  # fmt: skip
    return "\n".join(lines)


def turns_table(points: list[tuple[int, dict[str, Any]]]) -> str:
    """Turn-1 vs turn-2 accuracy of the two-turn eval by checkpoint (``metrics["turns"]``)."""
    lines = [
        "| step | round | episodes | turn 1 | turn 2 | turn 2 - turn 1 | wrong→right "
        "| right→wrong | right→right | wrong→wrong |",
        "|" + "---|" * 10,
    ]
    for step, r in points:
        t = r["metrics"].get("turns") or {}
        lines.append(
            f"| {step} | {r['round']} | {t.get('episodes', 0)} | {_ci(t.get('turn1'))} "
            f"| {_ci(t.get('turn2'))} | {_ci(t.get('delta'))} | {t.get('wrong_to_right', '-')} "
            f"| {t.get('right_to_wrong', '-')} | {t.get('right_to_right', '-')} "
            f"| {t.get('wrong_to_wrong', '-')} |"
        )
    return "\n".join(lines)


def train_turns_table(steps: list[dict[str, Any]]) -> str:
    """Turn-1 vs turn-2 correctness of the two-turn train rollouts, step by step."""
    pct = "{:.1%}"
    lines = ["| step | turn 1 correct | turn 2 correct | wrong→right | right→wrong |",
             "|---|---|---|---|---|"]  # fmt: skip
    for row in steps:
        m = row["metrics"]
        if m.get("turn1_correct_rate") is None:
            continue
        lines.append(
            f"| {row['step']} | {_num(m.get('turn1_correct_rate'), pct)} "
            f"| {_num(m.get('turn2_correct_rate'), pct)} | {_num(m.get('wrong_to_right'), pct)} "
            f"| {_num(m.get('right_to_wrong'), pct)} |"
        )
    return "\n".join(lines)


def _checkpoint_plot(out: Path, name: str, px: list[int],
                     series: list[tuple[str, list[dict[str, float]]]], ylabel: str) -> str:  # fmt: skip
    """Accuracy with 95 % CI error bars against the checkpoints' steps, one line a series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, vals in series:
        ax.errorbar(px, [v["mean"] for v in vals], capsize=4, marker="o", label=label,
                    yerr=[[v["mean"] - v["lo"] for v in vals], [v["hi"] - v["mean"] for v in vals]])  # fmt: skip
    ax.set_xlabel("GRPO step of the checkpoint (0 = base model)")
    ax.set_ylabel(ylabel)
    ax.set_xticks(px)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _turns_plot(out: Path, points: list[tuple[int, dict[str, Any]]]) -> str | None:
    have = [(step, r["metrics"]["turns"]) for step, r in points
            if (r["metrics"].get("turns") or {}).get("turn1")]  # fmt: skip
    if not have:
        return None
    series = [(label, [t[key] for _, t in have])
              for key, label in (("turn1", "turn 1 (draft)"), ("turn2", "turn 2 (revision)"))]  # fmt: skip
    return _checkpoint_plot(out, "turns_vs_step.png", [p[0] for p in have], series,
                            "held-out accuracy of the two-turn loop (95% CI)")  # fmt: skip


def _grpo_plots(out: Path, steps: list[dict[str, Any]], cis: dict[int, dict[str, float]],
                points: list[tuple[int, dict[str, Any]]]) -> list[str]:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    made = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = sorted(cis)
    if xs:
        ax.plot(xs, [cis[x]["mean"] for x in xs], marker=".", label="mean reward")
        ax.fill_between(xs, [cis[x]["lo"] for x in xs], [cis[x]["hi"] for x in xs], alpha=0.25,
                        label="95% CI (prompt groups resampled)")  # fmt: skip
    correct = [(int(s["step"]), s["metrics"].get("correct_rate")) for s in steps]
    correct = [(x, y) for x, y in correct if y is not None]
    if correct:
        ax.plot([x for x, _ in correct], [y for _, y in correct], linestyle="--", marker=".",
                label="graded correct (train rollouts)")  # fmt: skip
    ax.set_xlabel("GRPO step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("reward")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "reward_vs_step.png", dpi=110)
    plt.close(fig)
    made.append("reward_vs_step.png")
    if not points:
        return made
    series = [(key, vals) for key in ("pass@1", "pass@k", "maj@k")
              if all(vals := [p[1]["metrics"]["eval"].get(key) for p in points])]  # fmt: skip
    _checkpoint_plot(out, "heldout_vs_step.png", [p[0] for p in points], series,
                     "held-out accuracy (95% CI)")  # fmt: skip
    made.append("heldout_vs_step.png")
    return made


def _grpo_section(out: Path, steps: list[dict[str, Any]], rewards: list[dict[str, Any]],
                  rounds: list[dict[str, Any]], marks: dict[int, int]) -> tuple[list[str], list[str]]:  # fmt: skip
    """The GRPO steps' Markdown lines and PNGs."""
    cis = reward_cis(rewards)
    points = _checkpoints(rounds, marks)
    pngs = _grpo_plots(out, steps, cis, points)
    lines = ["## GRPO steps", "", grpo_table(steps, cis), ""]
    if any(s["metrics"].get("turn1_correct_rate") is not None for s in steps):
        lines += ["## Two-turn train episodes (draft → revision, graded)", "",
                  train_turns_table(steps), ""]  # fmt: skip
    if points:
        lines += ["## Held-out accuracy by checkpoint step", "", checkpoint_table(points), ""]
    turned = [(step, r) for step, r in points if r["metrics"].get("turns")]
    if turned:
        lines += [
            "## Two-turn loop by checkpoint (draft → revision on the eval tasks, graded)", "",
            "One episode per eval task (`two-turn` loop, no in-loop verifier: the episode "
            "trained); step 0 is the same loop on the base model.", "",
            turns_table(turned), "",
        ]  # fmt: skip
        png = _turns_plot(out, turned)
        if png:
            pngs.append(png)
    return lines, pngs


def write_improve_report(db: str, name: str, out: Path) -> Path:
    """Write ``out/report.md`` and its PNGs for the series ``name``."""
    if not Path(db).exists():
        raise UserError(f"no trace database at {db}")
    with TraceStore(db, read_only=True) as store:
        rounds = L.rounds_of(store, name)
        steps = R.step_metrics(store, name)
        if not rounds and not steps:
            names = sorted({*L.improve_names(store), *R.grpo_series(store)})
            known = ", ".join(names) or "none"
            raise UserError(f"no improve series named {name!r} in {db} (series: {known})")
        models = L.models_of(store, name)
        rewards = R.step_rewards(store, name) if steps else []
        marks = R.checkpoint_steps(store, name) if steps else {}
    out.mkdir(parents=True, exist_ok=True)
    pngs = _plots(out, rounds) if rounds else []
    grpo_lines: list[str] = []
    if steps:
        grpo_lines, more = _grpo_section(out, steps, rewards, rounds, marks)
        pngs += more
    cfg = rounds[0].get("config") or {} if rounds else {}
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if rounds:
        g = cfg.get("grpo") or {}
        how = (
            f"reward {g.get('reward')}, {g.get('steps')} steps of {g.get('prompts_per_step')} "
            f"prompts x {g.get('generations')} "
            + (
                "two-turn episodes (draft → revision)"
                if g.get("rollout") == "self-refine"
                else "completions"
            )
            if cfg.get("method") == "grpo"
            else f"loop {cfg.get('loop')} {cfg.get('options') or ''}"
        )
        head = [
            f"method {cfg.get('method')}, {how}, "
            f"train `{cfg.get('tasks')}`, eval `{cfg.get('eval_tasks')}` "
            f"({cfg.get('eval_samples')} samples a task); generated {when}.",
            "",
            improve_table(rounds),
            "",
        ]
    else:  # GRPO steps alone (a TRL run brought in by `loopwright ingest`): no rounds
        head = [f"{len(steps)} GRPO steps, no evaluated rounds; generated {when}.", ""]
    lines = [
        f"# improve {name}",
        "",
        *head,
        *grpo_lines,
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
