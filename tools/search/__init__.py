"""Search: one small interface; a local SQLite FTS5 (BM25) index is the default backend.

``LocalIndex.build(source, index_path)`` indexes a JSONL file (``id`` + ``text``, optional
``title``/``url``/``metadata``) or a folder of ``.txt``/``.md`` files as overlapping word
passages; ``get_searcher("local", index_path=...)`` opens one. Queries are never FTS5 syntax:
free text is cut into quoted terms, so anything a user or model types is safe. Web providers
(Tavily, Exa, Brave, SerpAPI) live in ``loopwright.tools.web_search`` behind ``Searcher``.
"""

from loopwright.tools.search.base import (
    SEARCHERS,
    MissingAPIKey,
    Searcher,
    SearchError,
    SearchResult,
    evidence,
    format_evidence,
    get_searcher,
)
from loopwright.tools.search.corpus import CorpusError, Document, chunk_words, load_corpus
from loopwright.tools.search.local import (
    BuildStats,
    IndexConfig,
    LocalIndex,
    fts_query,
    require_fts5,
)

__all__ = [
    "SEARCHERS",
    "BuildStats",
    "CorpusError",
    "Document",
    "IndexConfig",
    "LocalIndex",
    "MissingAPIKey",
    "SearchError",
    "SearchResult",
    "Searcher",
    "chunk_words",
    "evidence",
    "format_evidence",
    "fts_query",
    "get_searcher",
    "load_corpus",
    "require_fts5",
]
