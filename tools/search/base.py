"""The search interface: ``SearchResult``, the ``Searcher`` ABC, the registry, evidence blocks."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self

from loopwright.tools.errors import UserError, unknown
from pydantic import BaseModel, ConfigDict, Field


class SearchError(RuntimeError):
    """A search backend failed (provider down, bad response) — not something the user did."""


class MissingAPIKey(UserError):
    """A web provider was chosen but its API key is not set."""


class SearchResult(BaseModel):
    """One ranked hit: a passage of a local document or one web result."""

    model_config = ConfigDict(frozen=True)

    doc_id: str = Field(description="Document id (local) or result URL (web).")
    passage: int = Field(default=0, description="Passage index within the document.")
    title: str = Field(default="", description="Document or page title.")
    text: str = Field(description="The passage text, or the provider's content/snippet.")
    snippet: str | None = Field(default=None, description="Short excerpt around the matches.")
    score: float | None = Field(description="Relevance, higher is better; None if order only.")
    url: str | None = Field(default=None, description="Where the document lives, if known.")
    source: str = Field(description="Name of the searcher that produced the hit.")
    rank: int = Field(ge=1, description="1-based position in the result list.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Extra document fields.")

    @property
    def source_id(self) -> str:
        """Citation id: ``doc_id#passage`` for local hits, the URL for web hits."""
        return self.doc_id if self.url == self.doc_id else f"{self.doc_id}#{self.passage}"


class Searcher(ABC):
    """Anything that answers a query with ranked results."""

    name: ClassVar[str]
    version: ClassVar[str]

    @abstractmethod
    def search(self, query: str, k: int = 5) -> list[SearchResult]:
        """Top ``k`` results for ``query``; an empty or term-less query gives ``[]``."""

    def evidence(self, query: str, k: int = 5, max_chars: int = 600) -> str:
        """The top ``k`` results as a compact context block a verifier can cite from."""
        return format_evidence(self.search(query, k), max_chars)

    def close(self) -> None:  # noqa: B027  (optional hook; most searchers hold nothing)
        """Release connections; the default has none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def format_evidence(results: list[SearchResult], max_chars: int = 600) -> str:
    """``[source_id] title`` then the text cut to ``max_chars``, per result, as one block."""
    if not results:
        return "No evidence found."
    blocks = []
    for r in results:
        text = " ".join(r.text.split())
        if len(text) > max_chars:
            text = text[: max_chars - 1].rstrip() + "…"
        head = f"[{r.source_id}]" + (f" {r.title}" if r.title else "")
        blocks.append(f"{head}\n{text}")
    return "\n\n".join(blocks)


SEARCHERS: dict[str, str] = {
    "local": "loopwright.tools.search.local:LocalIndex",
    "tavily": "loopwright.tools.web_search:TavilySearch",
    "exa": "loopwright.tools.web_search:ExaSearch",
    "brave": "loopwright.tools.web_search:BraveSearch",
    "serpapi": "loopwright.tools.web_search:SerpAPISearch",
}
"""Searcher name -> ``module:Class``; web providers are imported only when asked for."""


def get_searcher(name: str, **kwargs: Any) -> Searcher:
    """Instantiate the searcher registered as ``name`` (``local`` takes ``index_path``)."""
    if name not in SEARCHERS:
        raise unknown("search provider", name, SEARCHERS)
    module, _, cls = SEARCHERS[name].partition(":")
    searcher: Searcher = getattr(importlib.import_module(module), cls)(**kwargs)
    return searcher


def evidence(searcher: Searcher, query: str, k: int = 5, max_chars: int = 600) -> str:
    """``searcher.evidence(...)`` as a function, for use as a verifier's context source."""
    return searcher.evidence(query, k, max_chars)
