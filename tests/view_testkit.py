"""What the viewer tests share: trace stores built through the product (loops run on the
scripted model), a browser (Debian's chromium through Playwright) and a started viewer.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from loop_testkit import RIGHT, WRONG, last_user, math_task, write_jsonl
from loopwright.loops.execution.runner import RunConfig, run
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.scripted import ScriptedModel
from loopwright.traces.store import TraceStore
from loopwright.traces.view import Viewer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]
PAYLOAD_ID = "javascript:window.__pwned=3"
PAYLOAD_PROMPT = "<script>window.__pwned=1</script> What is 2 + 3?"
PAYLOAD_REPLY = (
    '<img src=x onerror="window.__pwned=2"> <script>window.__pwned=4</script> '
    '<a href="javascript:window.__pwned=5">click</a> 2 + 3 = 5. The answer is 5.'
)


REVISED = "Recounting: Tom had 2 apples, then 3 more, so 2 + 3 = 5. The answer is 5."


def have_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not Path(CHROMIUM).exists():
        return f"no {CHROMIUM}: `make sysdeps` installs Debian's chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed (pip install -e '.[dev]')"
    return None


browser_only = pytest.mark.skipif(have_browser() is not None, reason=str(have_browser()))


def reply(call: ModelCall) -> str:
    """One scripted model for every loop: answers by the role of the call."""
    user, index, role = last_user(call.messages), call.index, call.params.role
    if role == "value":  # mcts
        return f"Plausible.\nRating: [[{(index * 7) % 11}]]"
    if role == "verifier":  # the in-loop self-check
        answer = user.split("Proposed answer:", 1)[1]
        return "CORRECT: 2 + 3 = 5." if "is 5" in answer else "INCORRECT: 2 + 3 is 5."
    if role == "critic":
        return "2 + 3 is not 6: recount the apples and state the answer again."
    if role == "reflector":
        return "Lesson: add the two numbers carefully."
    if role in ("refiner", "expander"):  # a revision
        return REVISED if index % 3 else WRONG
    if "<script>" in user:
        return PAYLOAD_REPLY
    return [WRONG, RIGHT, "The answer is 7."][index % 3]


def tasks_file(tmp: Path, n: int = 4, payload: bool = False) -> str:
    rows = [math_task(f"t{i}", reference="5" if i % 4 else "6") for i in range(n)]
    if payload:
        rows.append({"id": PAYLOAD_ID, "prompt": PAYLOAD_PROMPT, "kind": "math", "reference": "5"})
    return write_jsonl(tmp / f"tasks-{n}-{payload}.jsonl", rows)


def run_loop(
    db: Path, loop: str, tasks: str, name: str, verifier: str = "auto", **options: Any
) -> None:
    model = ScriptedModel(reply)
    cfg = RunConfig(loop=loop, tasks=tasks, model=model.register(), db=str(db), run_name=name,
                    backoff_base_s=0.0, concurrency=1, options=options,
                    verifier=verifier)  # fmt: skip
    asyncio.run(run(cfg))


def build_store(tmp: Path, sweep: bool = False) -> Path:
    """A store holding a self-refine, an MCTS, a best-of-n and a Reflexion run (scripted),
    and with ``sweep`` a small best-of-n / self-refine sweep named "grid"."""
    db = tmp / "view.duckdb"
    tasks = tasks_file(tmp, 4, payload=True)
    run_loop(db, "self-refine", tasks, "refine-a", max_rounds=2)
    # The oracle stops MCTS on the reference, which the script's tree shapes rely on (and
    # the runs page then shows an oracle run beside honest ones).
    run_loop(db, "mcts", tasks, "mcts-a", verifier="oracle", children=2, simulations=4)
    run_loop(db, "best-of-n", tasks, "bon-a", n=4)
    run_loop(db, "reflexion", tasks, "reflexion-a", max_trials=3)
    if sweep:
        from loopwright.loops.execution.sweep import SweepConfig, run_sweep

        model = ScriptedModel(reply)
        cfg = SweepConfig(name="grid", tasks=tasks_file(tmp, 12), models=(model.register(),),
                          grid="best-of-n:n=1,2,4; self-refine:max_rounds=1,2", db=str(db),
                          sandbox="process")  # fmt: skip
        run_sweep(cfg)
    return db


@contextmanager
def browser_page(tmp: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            ctx = b.new_context(viewport={"width": 1400, "height": 900})
            page = ctx.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            b.close()


@contextmanager
def viewer(db: Path, **kw: Any) -> Iterator[Viewer]:
    v = Viewer(db, port=0, **kw).start()
    try:
        yield v
    finally:
        v.stop()


def wait_for(pred: Any, timeout: float = 30.0, every: float = 0.1) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise AssertionError("condition not met in time")


def thousand_node_store(db: Path, n: int = 1000) -> Path:
    """A store holding run "big", whose task "big-task" has an ``n``-node tree (generated
    rows: benchmarks/view_pages.py's builder, the same tree the page-time benchmark uses)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from view_pages import add_tree

    with TraceStore(db, serve_reads=False) as s:
        add_tree(s, n)
    return db
