"""Local search throughput: queries/s of ``LocalIndex`` over GSM8K test questions.

Builds an index from the questions in ``--data`` (read by path, never copied into the
repository) in a temporary folder, then times ``--queries`` searches, each a random
``--words``-word window of one question, in one thread and in ``--threads`` threads. It
also prints hit@1 (the question the window came from ranks first), the cost of a rebuild
that the corpus fingerprint skips, and the cost of a one-document incremental update.

    python benchmarks/search.py [--data ../shared/data/gsm8k/test.jsonl] [--queries 5000]

Exits 0 whatever the figures; it is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loopwright.tools.search import LocalIndex

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _smoke

_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=_DEFAULT, help="GSM8K JSONL")
    p.add_argument("--queries", type=int, default=5000, help="Searches per measurement.")
    p.add_argument("--words", type=int, default=6, help="Words per query window.")
    p.add_argument("--threads", type=int, default=4, help="Threads for the parallel run.")
    p.add_argument("-k", type=int, default=5, help="Results per search.")
    p.add_argument("--json", action="store_true", help="Print a final JSON line of rows.")
    args = _smoke.parse_args(p, argv, queries=60, threads=2)

    with Path(args.data).open() as f:
        questions = [json.loads(line)["question"] for line in f if line.strip()]
    docs = [{"id": f"gsm8k-{i}", "text": q} for i, q in enumerate(questions)]
    rng = random.Random(0)
    work: list[tuple[str, str]] = []
    for _ in range(args.queries):
        i = rng.randrange(len(questions))
        words = questions[i].split()
        start = rng.randrange(max(1, len(words) - args.words + 1))
        work.append((f"gsm8k-{i}", " ".join(words[start : start + args.words])))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gsm8k.db"
        t0 = time.perf_counter()
        ix = LocalIndex.build(docs, path)
        build_s = time.perf_counter() - t0
        stats = ix.stats()
        print(
            f"built {stats.documents} docs / {stats.passages} passages in {build_s:.2f}s "
            f"({path.stat().st_size / 1e6:.1f} MB)"
        )
        t0 = time.perf_counter()
        LocalIndex.build(docs, path).close()
        print(f"unchanged rebuild (skipped): {time.perf_counter() - t0:.3f}s")
        docs[0] = {"id": "gsm8k-0", "text": questions[0] + " (edited)"}
        t0 = time.perf_counter()
        LocalIndex.build(docs, path).close()
        print(f"rebuild with 1 changed doc: {time.perf_counter() - t0:.3f}s")

        for _, q in work[:200]:  # warm the page cache and this thread's connection
            ix.search(q, args.k)

        t0, c0 = time.perf_counter(), time.process_time()
        hits = 0
        for doc_id, q in work:
            top = ix.search(q, args.k)
            hits += bool(top) and top[0].doc_id == doc_id
        one, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"1 thread : {len(work) / one:8.0f} queries/s  (k={args.k}, {args.words}-word queries; "
            f"{cpu / len(work) * 1000:.2f} CPU ms/query)"
        )
        print(f"hit@1    : {hits / len(work):.1%}  (the source question ranks first)")

        chunks = [work[i :: args.threads] for i in range(args.threads)]

        def run(part: list[tuple[str, str]]) -> None:
            for _, q in part:
                ix.search(q, args.k)

        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(run, [c[:50] for c in chunks]))  # warm each thread's connection
            t0 = time.perf_counter()
            list(pool.map(run, chunks))
            many = time.perf_counter() - t0
        print(f"{args.threads} threads: {len(work) / many:8.0f} queries/s")
        ix.close()
    if args.json:
        rows = [
            {
                "figure": f"GSM8K search queries/s, {args.threads} threads (baseline: 1 thread)",
                "value": round(len(work) / many, 1),
                "baseline": round(len(work) / one, 1),
                "ratio": round(one / many, 3),
                "target": "",
            },
            {
                "figure": "search hit@1 (source question ranks first; baseline: queries)",
                "value": hits,
                "baseline": len(work),
                "ratio": round(hits / len(work), 3),
                "target": "",
            },
        ]
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
