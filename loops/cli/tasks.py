"""``loopwright tasks SPEC --show N``: what a task spec loads, where it came from, and per
task what the loop sees (the blind task) against what only the grader sees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from loopwright.loops.cli.progress import console
from rich.markup import escape
from rich.rule import Rule

if TYPE_CHECKING:
    from loopwright.loops.tasks import SourceInfo, Task


def tasks(
    spec: Annotated[
        str,
        typer.Argument(
            help="A --tasks spec: PATH.jsonl, PATH.parquet?prompt=COL&reference=COL, a folder, "
            "hf:ORG/NAME?split=S&prompt=COL, gsm8k:PATH, builtin:code, ..."
        ),
    ],
    show: Annotated[int, typer.Option(help="How many tasks to print (0: only the source).")] = 3,
    limit: Annotated[int | None, typer.Option(help="Load only the first N tasks.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False,
    plugin: Annotated[
        list[Path] | None, typer.Option(help="Python file registering custom task sources.")
    ] = None,
) -> None:
    """Show what a task spec loads: its source and provenance, then per task what the loop
    sees (the blind task) and what only the grader sees (reference, hidden tests, private
    metadata)."""
    from loopwright.loops.cli.main import load_plugins
    from loopwright.loops.errors import UserError
    from loopwright.loops.tasks import load_task_set

    if show < 0:
        raise UserError("--show must be 0 or more")
    load_plugins(plugin)
    task_set = load_task_set(spec, limit)
    shown = task_set.tasks[:show]
    if json_out:
        out = {
            "source": task_set.source.model_dump(mode="json"),
            "count": len(task_set.tasks),
            "tasks": [_views(t) for t in shown],
        }
        typer.echo(json.dumps(out, indent=2, ensure_ascii=False, default=str))
        return
    con = console()
    _print_source(con, task_set.source, len(task_set.tasks), len(shown))
    for task in shown:
        views = _views(task)
        con.print(Rule(escape(f"task {task.id} ({task.kind})"), align="left"))
        con.print("[bold green]what the loop sees[/]")
        _print_fields(con, views["loop_sees"])
        con.print("[bold red]what only the grader sees[/]")
        _print_fields(con, views["grader_only"])


def _views(task: Task) -> dict[str, Any]:
    """The blind task's fields, and what the keyed task adds (the answer key)."""
    blind = task.blind()
    private = {k: v for k, v in task.metadata.items() if k not in blind.metadata}
    sees: dict[str, Any] = {
        "id": blind.id,
        "kind": blind.kind,
        "prompt": blind.prompt,
        "entry_point": blind.entry_point,
        "choices": blind.choices,
        "visible_tests": blind.visible_tests or [],
        "public_metadata": blind.metadata,
    }
    grader: dict[str, Any] = {
        "reference": task.reference,
        "hidden_tests": task.tests,
        "private_metadata": private,
    }
    return {"id": task.id, "loop_sees": sees, "grader_only": grader}


def _print_source(con: Any, info: SourceInfo, count: int, shown: int) -> None:
    rows = [
        ("spec", info.spec),
        ("source", f"{info.kind} {info.location}"),
        ("config", info.config),
        ("split", info.split),
        ("revision", info.revision),
        ("rows sha256", info.rows_sha256),
        ("template sha256", info.template_sha256),
        ("seeds", ", ".join(f"{k}={v}" for k, v in info.seeds.items()) or None),
        ("fields", ", ".join(f"{k}={v}" for k, v in info.fields.items()) or None),
        ("tasks", f"{count}" + (f" (showing {shown})" if shown < count else "")),
    ]
    for label, value in rows:
        if value is not None:
            con.print(f"[bold]{label:<16}[/]{escape(str(value))}", highlight=False, soft_wrap=True)


def _print_fields(con: Any, fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        if name in ("id", "kind") or value in (None, [], {}):
            continue
        label = name.replace("_", " ")
        if name == "choices":
            text = "\n".join(f"{chr(65 + i)}) {c}" for i, c in enumerate(value))
        elif isinstance(value, list):
            text = "\n".join(str(v) for v in value)
        elif isinstance(value, dict):
            text = "\n".join(
                f"{k}: {v if isinstance(v, str) else json.dumps(v, default=str)}"
                for k, v in value.items()
            )
        else:
            text = str(value)
        if "\n" in text or len(text) > 100:
            con.print(f"  [bold]{label}:[/]", highlight=False)
            con.print(escape(_indent(text)), highlight=False, soft_wrap=True)
        else:
            con.print(f"  [bold]{label}:[/] {escape(text)}", highlight=False, soft_wrap=True)


def _indent(text: str, width: int = 4) -> str:
    return "\n".join(" " * width + line for line in text.splitlines())
