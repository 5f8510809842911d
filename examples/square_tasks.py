"""A task source: a loader decorated with its name. It yields Tasks (or dicts shaped like a
task file's lines); ``--tasks squares?n=20&start=3`` fills its parameters by name.

    loopwright run best-of-n --plugin examples/square_tasks.py --tasks 'squares?n=5'

``load_tasks("squares?n=5")`` does the same from Python. The reference is the answer key: the
held-out grader sees it, the loop and its in-loop verifier never do.

    python examples/square_tasks.py          # prints three tasks
"""

from collections.abc import Iterator

from loopwright.loops import Task, task_source


@task_source("squares")
def squares(n: int = 10, start: int = 2) -> Iterator[Task]:
    """What is k squared? for k = start, start+1, ..."""
    for k in range(start, start + n):
        yield Task(
            id=f"square-{k}", prompt=f"What is {k} squared?", kind="math", reference=str(k * k)
        )


if __name__ == "__main__":
    from loopwright.loops import load_tasks

    for task in load_tasks("squares?n=3&start=5"):
        print(task.id, task.prompt, "| answer key:", task.reference)
