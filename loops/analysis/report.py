"""``loopwright report``: a sweep as PNG plots and one Markdown file.

Sections: accuracy against tokens / calls / dollars / wall time per strategy with bootstrap
confidence intervals (tasks resampled, seeds kept together); pass@k, maj@k and weighted vote
from the shared best-of-n samples; a compute-matched table (at each token budget, which
strategy wins and by how much); and caution metrics — per-turn transitions of revision loops,
how often feedback changed the answer at all, sample diversity, best-of-N against a proxy
scorer (mean logprob) as N grows, and judge order flips, length bias and agreement with the
grader when the sweep has judge verdicts.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopwright.loops.analysis.report_data import ORACLE_MARK, Point, SweepData, load_sweep, select
from loopwright.loops.analysis.report_plots import COSTS, write_plots
from loopwright.traces import metrics as M


def _label(p: Point, multi_model: bool) -> str:
    return f"{p.strategy} [{p.model}]" if multi_model else p.strategy


def _fmt_value(p: Point) -> str:
    if p.param is None or p.value is None:
        return "default"
    v = p.value
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return f"{p.param}={v}"


def curve_points(data: SweepData, n_boot: int) -> list[dict[str, Any]]:
    """One row per point: accuracy with CI and mean costs."""
    multi = len({p.model for p in data.points}) > 1
    rows = []
    for p in data.points:
        if not p.results:
            continue
        acc = [float(r.correct) for r in p.results]
        mean, lo, hi = M.bootstrap_ci(acc, n_boot=n_boot, groups=[r.task_id for r in p.results])
        row = {"point": p, "label": _label(p, multi), "value": _fmt_value(p), "acc": mean,
               "lo": lo, "hi": hi, "n": len(p.results)}  # fmt: skip
        for key, _ in COSTS:
            row[key] = sum(getattr(r, key) for r in p.results) / len(p.results)
        rows.append(row)
    return rows


def vote_points(data: SweepData, rows: list[dict[str, Any]], n_boot: int) -> list[dict[str, Any]]:
    """Majority vote over the same shared samples, as its own strategy at the same costs.

    For every best-of-n point at k, a ``... majority`` point: the same first-k samples, the
    answer picked by plain majority over normalised answers, at what the samples cost (the
    vote needs no verification).
    """
    out = []
    for r in rows:
        p: Point = r["point"]
        if p.loop != "best-of-n" or p.param != "n" or p.value is None:
            continue
        k = int(float(p.value))
        seeds = {res.seed for res in p.results}
        shared = [
            (task, seed, samples[:k])
            for (model, strategy, seed, task), samples in sorted(data.samples.items())
            if model == p.model and strategy == p.strategy and seed in seeds and len(samples) >= k
        ]
        if not shared:
            continue
        per_task = [(task, seed, select(first, "majority")) for task, seed, first in shared]
        mean, lo, hi = M.bootstrap_ci([float(c) for _, _, c in per_task], n_boot=n_boot,
                                      groups=[t for t, _, _ in per_task])  # fmt: skip
        # A vote needs the samples only, not the loop's verification or judging of them.
        costs = {
            "tokens": statistics.fmean(
                sum(s.prompt_tokens + s.completion_tokens for s in f) for _, _, f in shared
            ),
            "calls": float(k),
            "usd": statistics.fmean(sum(s.usd for s in f) for _, _, f in shared),
        }
        out.append({**r, **costs, "label": f"{r['label']} majority", "acc": mean, "lo": lo,
                    "hi": hi, "n": len(per_task)})  # fmt: skip
    return out


def sample_curves(data: SweepData) -> dict[str, dict[int, dict[str, float]]]:
    """Per best-of-n strategy: for each k, pass@k, maj@k, weighted@k, verifier@k, proxy."""
    groups: dict[str, list[list[Any]]] = defaultdict(list)
    multi = len({k[0] for k in data.samples}) > 1
    for (model, strategy, _seed, _task), samples in sorted(data.samples.items()):
        groups[f"{strategy} [{model}]" if multi else strategy].append(samples)
    out: dict[str, dict[int, dict[str, float]]] = {}
    for label, tasks in groups.items():
        n = min(len(s) for s in tasks)
        if n == 0:
            continue
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= n]
        if n not in ks:
            ks.append(n)
        counts = [(len(s), sum(bool(x.correct) for x in s)) for s in tasks]
        per_k: dict[int, dict[str, float]] = {}
        for k in ks:
            first = [s[:k] for s in tasks]
            proxy, proxy_acc = M.best_of_k(
                [[(x.logprob, bool(x.correct)) for x in s] for s in first], k
            )
            per_k[k] = {
                "pass@k": M.mean_pass_at_k(counts, k),
                "maj@k": _mean(select(s, "majority") for s in first),
                "weighted@k": _mean(select(s, "weighted") for s in first),
                "verifier@k": _mean(select(s, "verifier") for s in first),
                "logprob proxy": proxy,
                "logprob pick accuracy": proxy_acc,
            }
        out[label] = per_k
    return out


def _mean(xs: Any) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else 0.0


def matched_table(rows: list[dict[str, Any]]) -> list[M.MatchedRow]:
    pts = [M.CurvePoint(strategy=r["label"], cost=r["tokens"], accuracy=r["acc"], lo=r["lo"],
                        hi=r["hi"], label=r["value"]) for r in rows]  # fmt: skip
    budgets = sorted({math.ceil(r["tokens"]) for r in rows})  # ceil: a point fits its own budget
    if len(budgets) > 8:  # a readable table: 8 budgets spread over the range, geometric
        lo, hi = max(budgets[0], 1), budgets[-1]
        budgets = sorted({round(lo * (hi / lo) ** (i / 7)) for i in range(8)})
    table = M.compute_matched(pts, budgets)
    honest = [p for p in pts if "oracle" not in p.strategy]
    if not honest or len(honest) == len(pts):
        return table
    # Oracle strategies are shown beside the others but win nothing: the winner is the best
    # strategy a deployed system could run.
    fair = M.compute_matched(honest, budgets)
    return [
        dataclasses.replace(f, best={**t.best, **f.best}) for f, t in zip(fair, table, strict=True)
    ]


def _winner_cell(m: M.MatchedRow) -> str:
    """The winner; an accuracy tie says so, and which point was cheaper when one was."""
    if m.winner is None or m.margin != 0 or m.runner_up is None:
        return m.winner or "-"
    w, r = m.best.get(m.winner), m.best.get(m.runner_up)
    if w is not None and r is not None and w.cost < r.cost:
        return f"tie ({m.winner} cheaper)"
    return "tie"


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f} %"


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.2f}" if x < 10 else f"{x:,.1f}"


def write_report(db: str, sweep: str, out: Path, n_boot: int = 2000) -> Path:
    """Write ``out/report.md`` and its PNGs; return the Markdown path."""
    data = load_sweep(db, sweep)
    out.mkdir(parents=True, exist_ok=True)
    rows = curve_points(data, n_boot)
    rows += vote_points(data, rows, n_boot)
    curves = sample_curves(data)
    trans: dict[str, list[dict[str, int]]] = {}
    changes: dict[str, list[float]] = {}
    chains_by: dict[str, list[list[tuple[bool | None, str | None]]]] = defaultdict(list)
    for (model, strategy, _seed, _task), chain in sorted(data.chains.items()):
        chains_by[strategy if len({k[0] for k in data.chains}) == 1 else f"{strategy} [{model}]"]\
            .append(chain)  # fmt: skip
    for label, chains in chains_by.items():
        trans[label] = M.transitions([[bool(c) for c, _ in ch] for ch in chains])
        changes[label] = M.change_rate([[k for _, k in ch] for ch in chains])
    plots = write_plots(out, rows, curves, trans)
    md = _markdown(data, rows, curves, trans, changes, plots=plots, db=db)
    path = out / "report.md"
    path.write_text(md, encoding="utf-8")
    return path


def _markdown(
    data: SweepData, rows: list[dict[str, Any]], curves: dict[str, dict[int, dict[str, float]]],
    trans: dict[str, list[dict[str, int]]], changes: dict[str, list[float]], *,
    plots: list[tuple[str, str]], db: str,
) -> str:  # fmt: skip
    cfg = data.config
    L: list[str] = [
        f"# Sweep `{data.name}`",
        "",
        f"- tasks: `{data.tasks_spec}`" + (f" (first {cfg['limit']})" if cfg.get("limit") else ""),
        f"- models: {', '.join(f'`{m}`' for m in cfg.get('models', []))}",
        f"- grid: `{data.grid}`; seeds: {cfg.get('seeds', 1)}",
        f"- trace database: `{db}`; report written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- in-loop verifiers: {', '.join(f'`{v}`' for v in sorted(set(data.verifiers.values())))}",
        *(
            [
                f"- **{ORACLE_MARK.strip()}**: strategies marked so ran with the grader's own "
                "check in the loop (the answer key): their numbers are upper bounds, not results."
            ]
            if data.oracle
            else []
        ),
        "",
        "Accuracy is the held-out grader's verdict on the answer each strategy returns. Costs "
        "are means per task; model seconds count a cached call at its original latency. "
        "Intervals are 95 % bootstrap CIs over tasks (seeds resampled with their task).",
        "",
        "## Points",
        "",
        *(
            [
                f"Not finished yet (left out; re-run the sweep to complete): "
                f"{', '.join(f'`{r}`' for r in data.unfinished)}.",
                "",
            ]
            if data.unfinished
            else []
        ),
        "| strategy | value | accuracy | 95 % CI | tokens/task | samples/task | $/task "
        "| model s/task | tasks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["label"], r["tokens"])):
        L.append(
            f"| {r['label']} | {r['value']}{' (shared)' if r['point'].derived else ''} | "
            f"{_pct(r['acc'])} | {_pct(r['lo'])} to {_pct(r['hi'])} | {_num(r['tokens'])} | "
            f"{_num(r['calls'])} | {r['usd']:.4f} | {_num(r['wall'])} | {r['n']} |"
        )
    for name, title in plots:
        if name.startswith("accuracy_vs"):
            L += ["", f"![{title}]({name})"]
    L += ["", "## Compute-matched", "",
          "At each token budget per task, each strategy's best point within it; the winner "
          "(among strategies without the oracle, when both are present), "
          "its margin over the runner-up, and whether the CIs separate.", ""]  # fmt: skip
    matched = matched_table(rows)
    labels = sorted({r["label"] for r in rows})
    L.append("| tokens/task ≤ | " + " | ".join(labels) + " | winner | margin | CIs separate |")
    L.append("|---" * (len(labels) + 4) + "|")
    for m in matched:
        cells = []
        for lab in labels:
            b = m.best.get(lab)
            cells.append("-" if b is None else f"{_pct(b.accuracy)} ({b.label})")
        sig = "-" if m.significant is None else ("yes" if m.significant else "no")
        L.append(f"| {_num(m.budget)} | " + " | ".join(cells) +
                 f" | {_winner_cell(m)} | {_pct(m.margin) if m.margin is not None else '-'} | {sig} |")  # fmt: skip
    if curves:
        L += ["", "## Samples: pass@k, maj@k, weighted vote", "",
              "From the shared best-of-n samples (the first k of each task's N). pass@k is the "
              "unbiased estimator over all N (an oracle upper bound); maj@k votes over "
              "normalised answers; weighted votes with exp(mean logprob); verifier@k is the "
              "in-loop verifier's pick.", ""]  # fmt: skip
        for label, per_k in curves.items():
            L += [f"**{label}**", "", "| k | pass@k | maj@k | weighted@k | verifier@k |",
                  "|---|---|---|---|---|"]  # fmt: skip
            for k in sorted(per_k):
                v = per_k[k]
                L.append(f"| {k} | {_pct(v['pass@k'])} | {_pct(v['maj@k'])} | "
                         f"{_pct(v['weighted@k'])} | {_pct(v['verifier@k'])} |")  # fmt: skip
            L.append("")
        L += ["![samples at k](samples_at_k.png)", ""]
    L += ["## Caution metrics", ""]
    if trans:
        L += ["### Revision loops: what each turn did", "",
              "Per turn t → t+1 over each task's answers (graded): fixed (wrong→right), broken "
              "(right→wrong), and how often the feedback changed the answer at all.", "",
              "| strategy | turn | wrong→right | right→wrong | right→right | wrong→wrong "
              "| answer changed |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for label, turns in sorted(trans.items()):
            for t, c in enumerate(turns):
                ch = changes[label][t] if t < len(changes[label]) else None
                L.append(f"| {label} | {t}→{t + 1} | {c['wrong_to_right']} | "
                         f"{c['right_to_wrong']} | {c['right_to_right']} | {c['wrong_to_wrong']} "
                         f"| {_pct(ch)} |")  # fmt: skip
        L += ["", "![transitions](transitions.png)", ""]
    else:
        L += ["No revision-loop runs in this sweep.", ""]
    if data.samples:
        L += ["### Sample diversity", "", "| strategy | distinct answers / task | distinct-1 | "
              "distinct-2 | mean pairwise Jaccard |", "|---|---|---|---|---|"]  # fmt: skip
        by: dict[str, list[Any]] = defaultdict(list)
        for (_m, strategy, _s, _t), samples in sorted(data.samples.items()):
            by[strategy].append(samples)
        for label, tasks in by.items():
            d = M.diversity(
                [[x.text for x in s] for s in tasks], [[x.key for x in s] for s in tasks]
            )
            L.append(f"| {label} | {d['distinct_answers']:.2f} | {d['distinct_1']:.3f} | "
                     f"{d['distinct_2']:.3f} | {d['mean_pairwise_jaccard']:.3f} |")  # fmt: skip
        L += ["", "### Best-of-N against a proxy scorer", "",
              "The proxy is the sample's mean token logprob. If the proxy score of the pick keeps "
              "rising while its graded accuracy does not, picking harder is over-optimising the "
              "proxy.", "", "| strategy | N | proxy of the pick | graded accuracy of the pick |",
              "|---|---|---|---|"]  # fmt: skip
        for label, per_k in curves.items():
            for k in sorted(per_k):
                L.append(f"| {label} | {k} | {per_k[k]['logprob proxy']:.3f} | "
                         f"{_pct(per_k[k]['logprob pick accuracy'])} |")  # fmt: skip
        L += ["", "![over-optimisation](overoptimisation.png)", ""]
    L += _agreement_section(data)
    L += ["### Judges", ""]
    if data.judge_pairs:
        s = M.pairwise_judge_stats(data.judge_pairs)
        L += [f"- pairwise judgements: {s['n']} ({s['decided']} decided in both orders)",
              f"- order-flip rate: {_pct(s['order_flip_rate'])}; first-position win rate: "
              f"{_pct(s['first_position_win_rate'])}; longer answer wins: "
              f"{_pct(s['longer_win_rate'])}"]  # fmt: skip
    if data.judge_points:
        a = M.judge_agreement([p[0] for p in data.judge_points], [p[1] for p in data.judge_points])
        corr = M.length_correlation(
            [float(p[2]) for p in data.judge_points if p[3] is not None],
            [float(p[3]) for p in data.judge_points if p[3] is not None],
        )
        L += [f"- pointwise judge vs grader: precision {_pct(a['precision'])}, recall "
              f"{_pct(a['recall'])}, accuracy {_pct(a['accuracy'])} over {a['n']} answers "
              f"({a['unparsed']} unparsed)",
              f"- correlation of judge score with answer length: "
              f"{'-' if corr is None else f'{corr:.2f}'}"]  # fmt: skip
    if not data.judge_pairs and not data.judge_points:
        L.append("No judge verdicts in this sweep's runs (`loopwright judge pairs` adds some).")
    L.append("")
    return "\n".join(L)


def _agreement_section(data: SweepData) -> list[str]:
    """In-loop verdict against the grader's, on the answers each strategy returned."""
    if not data.agreement:
        return []
    L = ["### In-loop verifier vs grader", "",
         "On each strategy's returned answers (its largest run per value): how often the "
         "in-loop verifier's verdict agreed with the held-out grader. *Fooled* = verified "
         "in the loop but graded wrong; *missed* = rejected in the loop but graded right.", "",
         "| strategy | answers | verified & right | fooled | missed | rejected & wrong | "
         "no verdict | precision |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for strategy, pairs in sorted(data.agreement.items()):
        a = M.judge_agreement([v for v, _ in pairs], [g for _, g in pairs])
        tp = sum(1 for v, g in pairs if v and g)
        fp = sum(1 for v, g in pairs if v and not g)
        fn = sum(1 for v, g in pairs if v is False and g)
        tn = sum(1 for v, g in pairs if v is False and not g)
        L.append(f"| {strategy} | {len(pairs)} | {tp} | {fp} | {fn} | {tn} | {a['unparsed']} "
                 f"| {_pct(a['precision'])} |")  # fmt: skip
    L.append("")
    return L
