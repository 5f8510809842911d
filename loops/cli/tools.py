"""CLI commands for the tools: ``sandbox exec|check|build-image``, ``verify``, ``check math``."""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Annotated, Any

import typer
from loopwright.loops.cli.progress import console as make_console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = make_console()

sandbox_app = typer.Typer(no_args_is_help=True, help="Run programs in a sandbox; check isolation.")
check_app = typer.Typer(no_args_is_help=True, help="Check one answer by hand.")


# -- sandbox -----------------------------------------------------------------------------------


def _backend(name: str) -> Any:
    from loopwright.loops.errors import UserError, unknown
    from loopwright.sandboxes import BACKENDS, SandboxUnavailable, get_sandbox

    if name not in BACKENDS:
        raise unknown("sandbox backend", name, BACKENDS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # we print our own warning for `process`
            return get_sandbox(name)
    except SandboxUnavailable as exc:
        raise UserError(f"the {name} sandbox cannot run here: {exc}") from None


@sandbox_app.command("exec")
def sandbox_exec(
    file: Annotated[Path, typer.Argument(help="Python program to run.")],
    backend: Annotated[str, typer.Option(help="bwrap, docker or process.")] = "bwrap",
    timeout: Annotated[float, typer.Option(help="Wall-clock limit, seconds.")] = 10.0,
    memory_mb: Annotated[int, typer.Option(help="Address-space limit, MiB.")] = 512,
    stdin: Annotated[Path | None, typer.Option(help="File fed to the program's stdin.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run FILE (Python) in a sandbox and print what happened; exits with its exit code."""
    from loopwright.loops.errors import UserError
    from loopwright.sandboxes import SandboxLimits

    if not file.is_file():
        raise UserError(f"{file}: no such file")
    if stdin is not None and not stdin.is_file():
        raise UserError(f"{stdin}: no such file (--stdin)")
    if backend == "process":
        console.print("[yellow]warning:[/yellow] the process backend does not isolate anything")
    limits = SandboxLimits(timeout_s=timeout, memory_mb=memory_mb)
    with _backend(backend) as sb:
        result = sb.run_python(
            file.read_text(encoding="utf-8"),
            stdin=stdin.read_bytes() if stdin is not None else None,
            limits=limits,
        )
    if as_json:
        print(result.model_dump_json())
    else:
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        status = f"exit {result.exit_code}" if result.killed_by is None else result.killed_by
        if result.killed_by == "timeout":
            status = f"timed out after {timeout:g}s"
        elif result.killed_by is not None:
            status = f"killed ({result.killed_by} limit)"
        trunc = ", output truncated" if result.truncated else ""
        make_console(stderr=True).print(
            f"[dim]{backend}: {status}{trunc}, {result.duration_s * 1000:.0f} ms[/dim]"
        )
    raise typer.Exit(result.exit_code if result.exit_code is not None else 124)


def _check_rows() -> list[tuple[str, bool, str]]:
    from loopwright.sandboxes import BACKENDS, cgroups

    rows: list[tuple[str, bool, str]] = []
    for name, cls in BACKENDS.items():
        if name == "process":
            rows.append((name, True, "runs anywhere; isolates NOTHING (rlimits only)"))
            continue
        reason = cls.check()
        detail = "works" if reason is None else reason
        if name == "bwrap" and reason is None:
            detail = _bwrap_detail()
        rows.append((name, reason is None, detail))
    rows.append(("cgroups", "on" in cgroups.status(), cgroups.status()))
    return rows


def _bwrap_detail() -> str:
    from loopwright.sandboxes import BwrapSandbox, SandboxLimits

    with BwrapSandbox(warm_workers=1) as sb:
        t0 = time.perf_counter()
        r = sb.run_python(
            "import socket, os\n"
            "try:\n    socket.create_connection(('127.0.0.1', 22), timeout=1); print('net')\n"
            "except OSError:\n    print('no-net')\n"
            "print(os.getuid() != 0)\n",
            limits=SandboxLimits(timeout_s=10),
        )
        warm_ms = (time.perf_counter() - t0) * 1000
    ok = r.ok and r.stdout.split() == ["no-net", "True"]
    if not ok:
        return f"sandbox self-check failed: {r.stdout.strip()} {r.stderr.strip()[-200:]}"
    return f"works: no network, non-root, warm fast path ({warm_ms:.0f} ms incl. start-up)"


@sandbox_app.command("check")
def sandbox_check(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which isolation works on this machine, and why not where it does not."""
    rows = _check_rows()
    if as_json:
        print(json.dumps([{"backend": n, "works": ok, "detail": d} for n, ok, d in rows]))
        return
    table = Table(title="Sandbox backends on this machine")
    for col in ("backend", "works", "detail"):
        table.add_column(col, overflow="fold")
    for name, ok, detail in rows:
        table.add_row(name, "[green]yes[/green]" if ok else "[red]no[/red]", detail)
    console.print(table)


@sandbox_app.command("build-image")
def sandbox_build_image(
    tag: Annotated[str, typer.Option(help="Image tag to create.")] = "loopwright-sandbox:bookworm",
    suite: Annotated[str, typer.Option(help="Debian suite for debootstrap.")] = "bookworm",
    mirror: Annotated[str | None, typer.Option(help="Debian mirror (default: apt's).")] = None,
) -> None:
    """Build the docker sandbox image offline (debootstrap + docker import; needs root)."""
    from loopwright.sandboxes.image import build_image

    built = build_image(tag, suite=suite, mirror=mirror, progress=console.print)
    console.print(f"built {built}")


# -- verify ------------------------------------------------------------------------------------


def _read_answers(path: Path) -> list[tuple[int, str, str]]:
    from loopwright.loops.errors import UserError
    from loopwright.loops.tasks import read_jsonl

    out: list[tuple[int, str, str]] = []
    for lineno, obj in read_jsonl(path, what="answers file"):
        for key in ("task_id", "answer"):
            if not isinstance(obj.get(key), str):
                raise UserError(f"{path}:{lineno}: field {key!r} must be a string")
        out.append((lineno, obj["task_id"], obj["answer"]))
    if not out:
        raise UserError(f"{path}: no answers")
    return out


def verify(
    tasks: Annotated[str, typer.Option(help="Task spec, e.g. humaneval or math:PATH.")],
    answers: Annotated[Path, typer.Option(help='JSONL of {"task_id", "answer"} per line.')],
    backend: Annotated[str, typer.Option(help="Sandbox for code tests.")] = "bwrap",
    concurrency: Annotated[
        int, typer.Option(help="Answers verified at once (default: cores, at least 2).")
    ] = 0,
    timeout: Annotated[float, typer.Option(help="Wall-clock limit per code answer, s.")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON verdict per line.")] = False,
) -> None:
    """Grade given answers with each task's verifier; print pass count and throughput."""
    import os

    from loopwright.loops.errors import UserError
    from loopwright.loops.tasks import load_tasks
    from loopwright.loops.verify import CodeTests, Grader, Verdict, grader_for
    from loopwright.sandboxes import SandboxLimits

    workers = concurrency or max(2, os.cpu_count() or 1)
    # one warm sandbox per answer in flight: a program that loops until its timeout must not
    # hold up the others
    os.environ.setdefault("LOOPWRIGHT_SANDBOX_WORKERS", str(workers))
    code_grader = CodeTests(backend, SandboxLimits(timeout_s=timeout))

    def grader(task: Any) -> Grader | None:
        g = grader_for(task, sandbox=backend)
        return code_grader if isinstance(g, CodeTests) else g

    by_id = {t.id: t for t in load_tasks(tasks)}
    items = _read_answers(answers)
    for lineno, task_id, _ in items:
        if task_id not in by_id:
            raise UserError(f"{answers}:{lineno}: task_id {task_id!r} is not in {tasks}")
    found = {tid: grader(by_id[tid]) for _, tid, _ in items}
    missing = sorted(tid for tid, g in found.items() if g is None)
    if missing:
        raise UserError(f"no verifier for task {missing[0]!r}: it has no reference or tests")
    graders = {tid: g for tid, g in found.items() if g is not None}

    verdicts: list[Verdict | None] = [None] * len(items)
    t0 = time.perf_counter()
    progress = Progress(
        TextColumn("verifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[passed]} passed"),
        TimeElapsedColumn(),
        console=make_console(stderr=True),
        disable=as_json or not sys.stderr.isatty(),
    )
    with progress, ThreadPoolExecutor(workers) as pool:
        bar = progress.add_task("verify", total=len(items), passed=0)
        futures = {
            pool.submit(graders[tid], by_id[tid], ans): i for i, (_, tid, ans) in enumerate(items)
        }
        passed = 0
        for fut in as_completed(futures):
            i = futures[fut]
            verdict = verdicts[i] = fut.result()
            passed += bool(verdict and verdict.passed)
            progress.update(bar, advance=1, passed=passed)
    elapsed = time.perf_counter() - t0

    done = [v for v in verdicts if v is not None]
    n_pass = sum(v.passed for v in done)
    rate = len(items) / elapsed if elapsed > 0 else float("inf")
    if as_json:
        for (_, tid, _), v in zip(items, verdicts, strict=True):
            assert v is not None
            row = {"task_id": tid, **v.model_dump(exclude={"answer"})}
            print(json.dumps(row))
        print(
            json.dumps(
                {"summary": {"answers": len(items), "passed": n_pass, "per_s": round(rate, 1)}}
            )
        )
        return
    reasons = Counter(
        (v.details.get("killed_by") or ("timed out" if v.details.get("timed_out") else "failed"))
        for v in done
        if not v.passed
    )
    table = Table(title=escape(f"verify {tasks}"))
    for col in ("answers", "passed", "pass rate", "verifier", "answers/s", "failures"):
        table.add_column(col)
    table.add_row(
        str(len(items)),
        str(n_pass),
        f"{n_pass / len(items):.1%}",
        ", ".join(sorted({f"{v.verifier} {v.version}" for v in done})),
        f"{rate:.1f}",
        ", ".join(f"{k} {n}" for k, n in reasons.most_common()) or "-",
    )
    console.print(table)


# -- check -------------------------------------------------------------------------------------


@check_app.command("math")
def check_math(
    gold: Annotated[str, typer.Argument(help="Reference answer (or solution text).")],
    pred: Annotated[str, typer.Argument(help="Predicted answer (or response text).")],
    policy: Annotated[str, typer.Option(help="lenient (units, text) or strict.")] = "lenient",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Are PRED and GOLD the same mathematical answer? Exits 0 when equal, 1 when not."""
    from loopwright.loops.errors import UserError
    from loopwright.tools.math_check import MathChecker, MathCheckError

    if policy not in ("lenient", "strict"):
        raise UserError(f"--policy must be lenient or strict, not {policy!r}")
    checker = MathChecker(policy=policy)  # type: ignore[arg-type]
    try:
        v = checker.check(pred, gold)
    except MathCheckError as exc:  # the worker died on this answer twice: not a verdict
        raise UserError(str(exc)) from None
    finally:
        checker.close()
    if as_json:
        print(v.model_dump_json())
    else:
        verdict = "[green]equal[/green]" if v.passed else "[red]not equal[/red]"
        detail = escape(f"(pred {v.extracted!r} vs gold {v.reference!r}; {v.feedback})")
        console.print(f"{verdict}  {detail}", highlight=False)
    raise typer.Exit(0 if v.passed else 1)
