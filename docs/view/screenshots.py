"""Take the screenshots in docs/view/ with the test setup (scripted runs, headless chromium).

.venv/bin/python docs/view/screenshots.py [OUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from loopwright.loops.cli.view import sweep_report  # noqa: E402
from loopwright.traces import TraceStore  # noqa: E402
from view_testkit import browser_page, build_store, viewer  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        db = build_store(Path(tmp), sweep=True)
        with TraceStore(db, read_only=True) as s:
            [refined] = s.query(
                "SELECT t.task_id, t.final_node_id FROM tasks t JOIN runs r USING (run_id) "
                "WHERE r.name = 'refine-a' AND t.rounds >= 1 ORDER BY t.rounds DESC, t.idx "
                "LIMIT 1"
            )
            [mcts] = s.query(  # the task with the largest tree
                "SELECT n.task_id FROM nodes n JOIN runs r USING (run_id) WHERE r.name = "
                "'mcts-a' GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
            )
        with viewer(db, sweep_report=sweep_report) as v, browser_page(Path(tmp)) as page:
            shots = [
                ("runs.png", "", "#runs"),
                ("mcts-tree.png", f"run/mcts-a/task/{mcts['task_id']}", "#calls"),
                ("self-refine-diff.png",
                 f"run/refine-a/task/{refined['task_id']}?node={refined['final_node_id']}",
                 "#diff"),
                ("sweep.png", "sweep/grid", ".plots img"),
            ]  # fmt: skip
            for name, path, ready in shots:
                page.goto(v.url + path)
                page.wait_for_selector(ready)
                if name == "mcts-tree.png":  # show a call opened, too
                    page.click("#calls button.open-call")
                    page.wait_for_selector("#call-detail")
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(out / name), full_page=name == "sweep.png")
                print(out / name)


if __name__ == "__main__":
    main()
