"""The held-out graders: checks of a response against the task's answer key.

By task kind (the default): math tasks are graded by the math checker (``MathAnswer``:
math-verify over the whole response in a worker process, lenient about units); code tasks run
their (hidden) tests in a sandbox (``CodeTests``); multiple-choice tasks compare the letter
picked with the reference letter (``ChoiceLetter``). Graders read the reference and the hidden
tests, so a loop sees them only through the ``oracle`` in-loop verifier, opt-in. A grader
that cannot run raises (a one-line ``UserError`` when it cannot run here at all): it is never
a failed verdict.

Graders live in a registry (``GRADERS``; ``@grader`` on a function adds one), so a run can
name the one it grades with; ``grader_for(task, name=...)`` picks it. Graders block (a worker
process, a sandbox run): loops call them through ``run_grader``, which takes a grader's
non-blocking ``quick`` verdict when it has one and goes to a thread otherwise;
``grade_many`` grades a batch on a thread pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from loopwright.loops.errors import UserError, unknown
from loopwright.loops.tasks import Task
from loopwright.loops.tasks.answers import extract_choice
from loopwright.loops.verify.base import Grader, Verdict
from loopwright.sandboxes import (
    BACKENDS,
    DEFAULT_BACKEND,
    Sandbox,
    SandboxLimits,
    SandboxUnavailable,
    get_sandbox,
)
from loopwright.sandboxes.base import INSTALL_HINT
from loopwright.tools import code_tests, math_check
from loopwright.tools.code_tests import CodeTestResult


class MathAnswer:
    """Pass when the response's final answer is equivalent to the task's reference.

    Blocking (sympy may run in the worker): call it through ``asyncio.to_thread`` from loops.
    """

    name = "math-answer"
    _checker: math_check.MathChecker | None = None  # one worker process per Python process
    _lock = threading.Lock()

    def applies(self, task: Task) -> bool:
        """A math task with a reference answer."""
        return task.kind == "math" and task.reference is not None

    @staticmethod
    def _get_checker() -> math_check.MathChecker:
        with MathAnswer._lock:
            if MathAnswer._checker is None:
                MathAnswer._checker = math_check.MathChecker(policy="lenient")
            return MathAnswer._checker

    @staticmethod
    def start() -> None:
        """Start the shared checker's worker before any work: a one-line ``UserError``
        (``MathCheckUnavailable``) when it cannot run here."""
        MathAnswer._get_checker().start()

    def quick(self, task: Task, response: str) -> Verdict | None:
        """The verdict when no worker is needed, else None (never blocks)."""
        t0 = time.perf_counter()
        v = self._get_checker().check_quick(response, task.reference or "")
        return None if v is None else self._verdict(v, t0)

    def __call__(self, task: Task, response: str) -> Verdict:
        """The verdict. ``MathCheckUnavailable`` (a one-line ``UserError``) when the checker
        cannot run here, ``MathCheckError`` (the caller records a grading error) when this
        response could not be checked: neither is ever a failed verdict."""
        t0 = time.perf_counter()
        return self._verdict(self._get_checker().check(response, task.reference or ""), t0)

    def _verdict(self, v: math_check.MathVerdict, t0: float) -> Verdict:
        return Verdict(
            passed=v.passed,
            score=1.0 if v.passed else 0.0,
            answer=v.extracted,
            feedback=v.feedback,
            verifier=self.name,
            version=f"{math_check.VERSION}-{v.policy}",
            latency_s=time.perf_counter() - t0,
        )


# -- code ------------------------------------------------------------------------------------
_sandboxes: dict[str, Sandbox] = {}
_sandboxes_lock = threading.Lock()


def shared_sandbox(backend: str = DEFAULT_BACKEND) -> Sandbox:
    """The process-wide sandbox of ``backend``, started on first use.

    Raises a one-line ``UserError`` when the backend cannot run here.
    """
    with _sandboxes_lock:
        sandbox = _sandboxes.get(backend)
        if sandbox is None:
            if backend not in BACKENDS:
                raise unknown("sandbox backend", backend, BACKENDS)
            try:
                sandbox = get_sandbox(backend)
            except SandboxUnavailable as exc:
                raise _unavailable(backend, exc) from None
            _sandboxes[backend] = sandbox
        return sandbox


def _unavailable(backend: str, exc: SandboxUnavailable) -> UserError:
    reason = " ".join(str(exc).replace(INSTALL_HINT, "").split()).rstrip(" :;,")
    return UserError(
        f"code tests need the {backend} sandbox, which cannot run here ({reason}): "
        "install bubblewrap (`apt-get install bubblewrap`) or choose "
        "`--sandbox process` (no isolation)"
    )


class CodeTests:
    """Pass when the program in the response passes every hidden test of a code task.

    The program is ``extract_code(response, prompt, entry_point)``; the tests run in the
    sandbox as the task's ``metadata["test_style"]`` says (asserts, humaneval or io). Score is
    the fraction of tests passed; feedback names the first failure, for a refiner. Blocking:
    call it through ``asyncio.to_thread`` from loops.
    """

    name = "code-tests"

    def __init__(self, sandbox: str = DEFAULT_BACKEND, limits: SandboxLimits | None = None) -> None:
        if sandbox not in BACKENDS:
            raise unknown("sandbox backend", sandbox, BACKENDS)
        self.backend = sandbox
        self.limits = limits or SandboxLimits(timeout_s=10)

    @property
    def version(self) -> str:
        return f"{code_tests.VERSION}-{self.backend}"

    def applies(self, task: Task) -> bool:
        """A code task with tests to run (hidden tests, or io cases)."""
        return task.kind == "code" and _has_code_tests(task)

    def __call__(self, task: Task, response: str) -> Verdict:
        sandbox = shared_sandbox(self.backend)
        t0 = time.perf_counter()
        code = code_tests.extract_code(response, task.prompt, task.entry_point)
        style = task.metadata.get("test_style", "asserts")
        try:
            result = self._run(task, code, style, sandbox)
        except SandboxUnavailable as exc:  # e.g. a warm worker that cannot start any more
            raise _unavailable(self.backend, exc) from None
        return Verdict(
            passed=result.passed,
            score=result.score,
            answer=code,
            feedback=result.feedback,
            verifier=self.name,
            version=self.version,
            latency_s=time.perf_counter() - t0,
            details={
                "test_style": style,
                "tests_passed": result.tests_passed,
                "tests_total": result.tests_total,
                "timed_out": result.timed_out,
                "killed_by": result.exec.killed_by,
                "sandbox": self.backend,
            },
        )

    def _run(self, task: Task, code: str, style: str, sandbox: Sandbox) -> CodeTestResult:
        if style == "humaneval":
            if not task.entry_point:
                raise UserError(f"code task {task.id!r}: humaneval tests need an entry_point")
            test = "\n\n".join(task.tests)
            return code_tests.run_humaneval(code, test, task.entry_point, sandbox, self.limits)
        if style == "io":
            cases = [(str(i), str(o)) for i, o in task.metadata.get("io_cases") or []]
            return code_tests.run_io(code, cases, sandbox, self.limits)
        if style == "asserts":
            return code_tests.run_asserts(
                code, list(task.tests), sandbox, self.limits, entry_point=task.entry_point
            )
        raise UserError(
            f"code task {task.id!r}: unknown test_style {style!r} (choose from: asserts, "
            "humaneval, io)"
        )


def _has_code_tests(task: Task) -> bool:
    if task.metadata.get("test_style") == "io":
        return bool(task.metadata.get("io_cases"))
    return bool(task.tests)


# -- multiple choice -------------------------------------------------------------------------
class ChoiceLetter:
    """Pass when the letter the response picks (``answers.extract_choice``: ``Answer: C``,
    ``(C)``, ``\\boxed{C}``, a last line that is the letter) is the reference letter.

    Never blocks: loops get its verdict without a thread hop (``quick``).
    """

    name = "choice-letter"
    version = "choice-letter-1"

    def applies(self, task: Task) -> bool:
        """A multiple-choice task with a reference letter."""
        return task.kind == "choice" and bool(task.reference)

    def quick(self, task: Task, response: str) -> Verdict:
        return self(task, response)

    def __call__(self, task: Task, response: str) -> Verdict:
        t0 = time.perf_counter()
        want = (task.reference or "").strip().upper()
        got = extract_choice(response, len(task.choices) if task.choices else 26)
        if got is None:
            feedback = "no choice letter found (end with a line 'Answer: X')"
        elif got == want:
            feedback = f"chose {got}: correct"
        else:
            feedback = f"chose {got}: incorrect"
        return Verdict(
            passed=got is not None and got == want,
            score=1.0 if got is not None and got == want else 0.0,
            answer=got,
            feedback=feedback,
            verifier=self.name,
            version=self.version,
            latency_s=time.perf_counter() - t0,
        )


# -- choosing --------------------------------------------------------------------------------
GRADERS: dict[str, Callable[[str], Grader]] = {
    MathAnswer.name: lambda sandbox: MathAnswer(),
    CodeTests.name: CodeTests,
    ChoiceLetter.name: lambda sandbox: ChoiceLetter(),
}
"""Graders by name: each makes its grader for a sandbox backend (the one code runs in)."""

DEFAULT_GRADERS: dict[str, str] = {
    "math": MathAnswer.name,
    "code": CodeTests.name,
    "choice": ChoiceLetter.name,
}
"""The grader of each task kind when a run names none (text tasks have none)."""


def register_grader(grader: Grader) -> Grader:
    """Add ``grader`` to the registry under ``grader.name`` (``@grader`` does this for a
    function); a run that names it grades with it."""
    name = getattr(grader, "name", None)
    if not name or not isinstance(name, str):
        raise TypeError(f"{grader!r} needs a `name` to be registered as a grader")
    GRADERS[name] = lambda sandbox: grader
    return grader


def grader_names() -> list[str]:
    return sorted(GRADERS)


def check_grader(name: str | None) -> None:
    """A one-line ``UserError`` unless ``name`` is None (by task kind) or a registered grader."""
    if name is not None and name not in GRADERS:
        raise unknown("grader", name, grader_names())


def grader_for(
    task: Task, *, name: str | None = None, sandbox: str = DEFAULT_BACKEND
) -> Grader | None:
    """The held-out grader of ``task`` (the keyed task), or None when it has none.

    ``name`` picks a registered grader (``GRADERS``); None picks by task kind: math tasks
    with a reference are compared with it, code tasks with tests run them. A grader that
    does not apply to ``task`` (``applies``) gives None. ``sandbox`` is the backend code runs
    in (``bwrap`` unless the user chose another).
    """
    if name is None:
        name = DEFAULT_GRADERS.get(task.kind)
        if name is None:
            return None
    check_grader(name)
    grader = GRADERS[name](sandbox)
    applies = getattr(grader, "applies", None)
    return grader if applies is None or applies(task) else None


def grade_many(
    items: Iterable[tuple[Task, str]],
    *,
    concurrency: int = 4,
    sandbox: str = DEFAULT_BACKEND,
    limits: SandboxLimits | None = None,
    grader: str | None = None,
) -> list[Verdict | None]:
    """Grade ``(task, response)`` pairs (keyed tasks) on a thread pool, each by the grader
    named ``grader`` (None: its kind's); verdicts in input order.

    None where a task has no grader. ``limits`` apply to each code-test run. A
    ``UserError`` (e.g. no sandbox) propagates.
    """
    if concurrency < 1:
        raise UserError("concurrency must be at least 1")
    check_grader(grader)
    pairs = list(items)
    code = CodeTests(sandbox, limits)

    def one(pair: tuple[Task, str]) -> Verdict | None:
        task, response = pair
        chosen = grader_for(task, name=grader, sandbox=sandbox)
        if isinstance(chosen, CodeTests):
            chosen = code
        return chosen(task, response) if chosen is not None else None

    if concurrency == 1 or len(pairs) <= 1:
        return [one(p) for p in pairs]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(pairs))) as pool:
        return list(pool.map(one, pairs))


def extract_answer(task: Task, response: str) -> str | None:
    """The answer part of a response: the final number for math, the program for code, the
    letter for multiple choice."""
    if task.kind == "math":
        return math_check.extract_answer(response)
    if task.kind == "code":
        return code_tests.extract_code(response, task.prompt, task.entry_point)
    if task.kind == "choice":
        return extract_choice(response, len(task.choices) if task.choices else 26)
    return None
