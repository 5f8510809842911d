"""The PNG plots of a sweep report: accuracy against each cost with bootstrap CIs, the
sample curves (pass@k, maj@k, weighted vote, verifier pick), best-of-N against a proxy scorer,
and per-turn transitions of revision loops."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

COSTS = (("tokens", "tokens / task"), ("calls", "model samples / task"),
         ("usd", "dollars / task"), ("wall", "model seconds / task"))  # fmt: skip


def write_plots(
    out: Path, rows: list[dict[str, Any]], curves: dict[str, dict[int, dict[str, float]]],
    trans: dict[str, list[dict[str, int]]],
) -> list[tuple[str, str]]:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_label[r["label"]].append(r)
    for key, axis in COSTS:
        if not any(r[key] > 0 for r in rows):
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, pts in sorted(by_label.items()):
            pts = sorted(pts, key=lambda r: r[key])
            xs = [r[key] for r in pts]
            ys = [r["acc"] for r in pts]
            err = [[r["acc"] - r["lo"] for r in pts], [r["hi"] - r["acc"] for r in pts]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
        if all(r[key] > 0 for r in rows):
            ax.set_xscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel("graded accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"accuracy vs {axis} (95% bootstrap CI)")
        name = f"accuracy_vs_{key}.png"
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append((name, f"accuracy vs {axis}"))
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, per_k in curves.items():
            ks = sorted(per_k)
            for metric, style in (("pass@k", "--"), ("maj@k", "-"), ("weighted@k", ":"),
                                  ("verifier@k", "-.")):  # fmt: skip
                ax.plot(ks, [per_k[k][metric] for k in ks], style, marker="o",
                        label=f"{metric} {label}")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (samples)")
        ax.set_ylabel("graded accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title("pass@k (oracle), maj@k, weighted vote, verifier pick")
        fig.tight_layout()
        fig.savefig(out / "samples_at_k.png", dpi=110)
        plt.close(fig)
        made.append(("samples_at_k.png", "pass@k, maj@k, weighted and verifier-picked"))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax2 = ax.twinx()
        for label, per_k in curves.items():
            ks = sorted(per_k)
            ax.plot(ks, [per_k[k]["logprob proxy"] for k in ks], "--", marker="s",
                    label=f"proxy (mean logprob) {label}")  # fmt: skip
            ax2.plot(ks, [per_k[k]["logprob pick accuracy"] for k in ks], "-", marker="o",
                     label=f"graded accuracy of the pick {label}")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (samples the proxy picks from)")
        ax.set_ylabel("proxy score of the pick")
        ax2.set_ylabel("graded accuracy of the pick")
        ax2.set_ylim(-0.02, 1.02)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
        ax.set_title("best-of-N against a proxy scorer")
        fig.tight_layout()
        fig.savefig(out / "overoptimisation.png", dpi=110)
        plt.close(fig)
        made.append(("overoptimisation.png", "best-of-N against a proxy scorer"))
    if trans:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        width = 0.8 / max(len(trans), 1)
        for i, (label, turns) in enumerate(sorted(trans.items())):
            xs = [t + i * width for t in range(len(turns))]
            ax.bar(xs, [t["wrong_to_right"] for t in turns], width, label=f"{label}: wrong→right")
            ax.bar(xs, [-t["right_to_wrong"] for t in turns], width,
                   label=f"{label}: right→wrong")  # fmt: skip
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlabel("turn t → t+1")
        ax.set_ylabel("answers (up: fixed, down: broken)")
        ax.legend(fontsize=7)
        ax.set_title("what each revision turn did")
        fig.tight_layout()
        fig.savefig(out / "transitions.png", dpi=110)
        plt.close(fig)
        made.append(("transitions.png", "revision turns: fixed vs broken"))
    return made
