"""``loopwright search``: build a local index and query it (or a web provider)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, cast

import typer
from loopwright.loops.cli.progress import console
from rich.markup import escape
from rich.table import Table

Mode = Literal["or", "and", "phrase"]
_BOLD = re.compile(r"\*\*(.+?)\*\*")

search_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Build a local search index (SQLite FTS5, BM25) and query it or a web provider.",
)


@search_app.command("index")
def index(
    source: Annotated[str, typer.Argument(help="A .jsonl file or a folder of .txt/.md files.")],
    index_path: Annotated[Path, typer.Option("--index", help="Index file to create or update.")],
    passage_words: Annotated[int, typer.Option(help="Words per passage.")] = 200,
    overlap: Annotated[int, typer.Option(help="Words shared by consecutive passages.")] = 50,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if unchanged.")] = False,
) -> None:
    """Index SOURCE into --index; an unchanged corpus is skipped, a changed one updated."""
    from loopwright.loops.errors import UserError, first_error
    from loopwright.tools.search import IndexConfig, LocalIndex
    from pydantic import ValidationError

    try:
        config = IndexConfig(passage_words=passage_words, overlap=overlap)
    except ValidationError as exc:  # pydantic: one line naming the bad value
        raise UserError(first_error(exc)) from None
    ix = LocalIndex.build(source, index_path, config, force=force)
    ix.close()
    s = ix.last_build
    assert s is not None
    if s.skipped:
        msg = f"unchanged: {s.documents} documents, {s.passages} passages in {index_path}"
    else:
        msg = (
            f"indexed {s.documents} documents, {s.passages} passages into {index_path} "
            f"(added {s.added}, updated {s.updated}, removed {s.removed}; {s.seconds:.2f}s)"
        )
    console().print(msg, highlight=False, soft_wrap=True)


@search_app.command("query")
def query(
    text: Annotated[str, typer.Argument(help="What to search for (free text).")],
    index_path: Annotated[
        Path | None, typer.Option("--index", help="Index file (local provider).")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Number of results.")] = 5,
    provider: Annotated[str, typer.Option(help="local, tavily, exa, brave or serpapi.")] = "local",
    mode: Annotated[str, typer.Option(help="Local only: or (rank by BM25), and, phrase.")] = "or",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Search and print a table, or JSON lines with --json."""
    from loopwright.loops.errors import UserError
    from loopwright.tools.search import LocalIndex, Searcher, SearchResult, get_searcher

    if mode not in ("or", "and", "phrase"):
        raise UserError(f"--mode must be or, and or phrase, got {mode!r}")
    searcher: Searcher
    if provider == "local":
        if index_path is None:
            raise UserError("--index PATH is required for the local provider")
        searcher = LocalIndex(index_path)
    else:
        searcher = get_searcher(provider)
    with searcher:
        results: list[SearchResult]
        if isinstance(searcher, LocalIndex):
            results = searcher.search(text, k, mode=cast(Mode, mode), highlight=not as_json)
        else:
            results = searcher.search(text, k)
    if as_json:
        for r in results:
            typer.echo(r.model_dump_json())
        return
    con = console()
    if not results:
        con.print("no results", highlight=False)
        return
    t = Table(title=escape(f"{provider}: {text}"), title_justify="left")
    t.add_column("#", justify="right")
    t.add_column("score", justify="right")
    t.add_column("source", overflow="fold")
    t.add_column("title", overflow="fold")
    t.add_column("snippet", overflow="fold")
    for r in results:
        t.add_row(
            str(r.rank),
            "-" if r.score is None else f"{r.score:.3f}",
            escape(r.source_id),
            escape(r.title),
            _BOLD.sub(r"[bold]\1[/bold]", escape(r.snippet or r.text[:200])),
        )
    con.print(t)
