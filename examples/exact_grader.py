"""A held-out grader: a function of any of (task, response, answer), by name. It receives
the keyed task -- reference, hidden tests, metadata -- which loops and in-loop verifiers never
see, and it runs after the loop, on the answer the loop chose.

    from loopwright.loops import Task
    exact_text(Task(id="t", prompt="Capital of France?", reference="Paris"), "paris")

    python examples/exact_grader.py          # grades two responses
"""

from loopwright.loops import Task, Verdict, grader


@grader(name="exact-text", kinds="text")
def exact_text(task, answer: str) -> Verdict:
    """The stripped response equals the reference, ignoring case."""
    passed = answer.casefold() == (task.reference or "").strip().casefold()
    said = "" if passed else f"expected {task.reference!r}"
    return Verdict(passed=passed, score=float(passed), feedback=said)


if __name__ == "__main__":
    task = Task(id="t", prompt="Capital of France?", reference="Paris", kind="text")
    for response in (" paris\n", "Lyon"):
        print(repr(response), "->", exact_text(task, response))
