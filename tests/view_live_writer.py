"""A run in its own process for the viewer's live test: self-refine on the scripted model,
each reply slowed by DELAY seconds so the viewer sees it progress.

    python tests/view_live_writer.py DB TASKS DELAY
Prints one JSON line: the model calls made and the tasks done.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from loopwright.loops.execution.runner import RunConfig, run
from loopwright.loops.models.base import ModelCall
from loopwright.loops.models.scripted import ScriptedModel
from view_testkit import reply, tasks_file


def main() -> None:
    db, n, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

    def slow(call: ModelCall) -> str:
        time.sleep(delay)
        return reply(call)

    model = ScriptedModel(slow)
    cfg = RunConfig(loop="self-refine", tasks=tasks_file(Path(db).parent, n),
                    model=model.register(), db=db, run_name="live", concurrency=1,
                    backoff_base_s=0.0)  # fmt: skip
    result = asyncio.run(run(cfg))
    print(json.dumps({"calls": len(model.calls), "done": result.summary["done"]}), flush=True)


if __name__ == "__main__":
    main()
