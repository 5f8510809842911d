"""``LocalIndex``: BM25 over passages in one SQLite FTS5 file (stdlib ``sqlite3``).

Layout: ``documents`` (one row per document: digest, url, metadata), ``chunks`` (one row per
passage) and ``chunks_fts``, an external-content FTS5 table over ``chunks`` with the
``porter unicode61`` tokenizer, so passage text is stored once. ``meta`` holds the schema
version, the passage config and the corpus fingerprint.

Building is incremental: an unchanged fingerprint skips the build outright; otherwise only
documents whose digest changed are re-indexed and the ones gone from the source are dropped.
A changed passage config re-indexes everything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any, Literal

from loopwright.tools.errors import UserError
from loopwright.tools.search.base import Searcher, SearchResult
from loopwright.tools.search.corpus import (
    CorpusError,
    Document,
    Source,
    chunk_words,
    located_docs,
    source_digest,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator

Mode = Literal["or", "and", "phrase"]

SCHEMA_VERSION = "fts5-bm25-1"
MAX_QUERY_TERMS = 64
"""Terms beyond this many are dropped: a pasted paragraph must not become a huge OR."""

_TERM = re.compile(r"\w+")


def query_terms(text: str) -> list[str]:
    """Lower-cased ``\\w+`` words of ``text``, first occurrence order, at most MAX_QUERY_TERMS."""
    return list(dict.fromkeys(t.lower() for t in _TERM.findall(text)))[:MAX_QUERY_TERMS]


def fts_query(text: str, mode: Mode = "or") -> str | None:
    """A safe FTS5 MATCH expression from free text, or None when it has no word terms.

    Every term becomes a double-quoted string (``\\w+`` never contains a quote), so
    operators (AND/OR/NOT/NEAR), ``*``, ``:``, ``-``, ``^``, parentheses and column filters
    in the input are plain words or gone. ``or`` lets BM25 rank by term rarity; ``and``
    needs every term; ``phrase`` needs them adjacent and in order.
    """
    if mode == "phrase":
        words = [t.lower() for t in _TERM.findall(text)][:MAX_QUERY_TERMS]
        return '"' + " ".join(words) + '"' if words else None
    return _join(query_terms(text), " OR " if mode == "or" else " AND ")


def _join(terms: list[str], op: str) -> str | None:
    return op.join(f'"{t}"' for t in terms) or None


@cache
def require_fts5() -> None:
    """Raise one clear line when this Python's SQLite was built without FTS5."""
    try:
        sqlite3.connect(":memory:").execute("create virtual table t using fts5(x)")
    except sqlite3.OperationalError:
        raise UserError(
            f"this Python's SQLite {sqlite3.sqlite_version} lacks FTS5; use a Python whose "
            "sqlite3 has it (python.org, conda and most Linux distributions do)"
        ) from None


class IndexConfig(BaseModel):
    """How documents are cut into passages and weighted; changing it re-indexes everything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    passage_words: int = Field(default=200, ge=8, description="Words per passage.")
    overlap: int = Field(default=50, ge=0, description="Words shared by consecutive passages.")
    title_weight: float = Field(default=2.0, gt=0, description="BM25 weight of the title column.")

    @model_validator(mode="after")
    def _overlap_fits(self) -> IndexConfig:
        if self.overlap >= self.passage_words:
            raise ValueError("overlap must be smaller than passage_words")
        return self


class BuildStats(BaseModel):
    """What one build or add did."""

    documents: int = Field(description="Documents in the index afterwards.")
    passages: int = Field(description="Passages in the index afterwards.")
    added: int = Field(default=0, description="New documents indexed.")
    updated: int = Field(default=0, description="Changed documents re-indexed.")
    removed: int = Field(default=0, description="Documents no longer in the source, dropped.")
    skipped: bool = Field(default=False, description="True when the corpus fingerprint matched.")
    seconds: float = Field(default=0.0, description="Wall time of the build.")


_SCHEMA = """
create table if not exists meta(key text primary key, value text not null);
create table if not exists documents(
    doc_id text primary key, title text, url text, metadata text, digest text, passages int);
create table if not exists chunks(
    id integer primary key, doc_id text not null, passage int not null, title text, text text);
create index if not exists chunks_doc on chunks(doc_id);
create virtual table if not exists chunks_fts using fts5(
    title, text, content='chunks', content_rowid='id', tokenize='porter unicode61');
"""
_DROP = "".join(f"drop table if exists {t};" for t in ("chunks_fts", "chunks", "documents", "meta"))


class LocalIndex(Searcher):
    """BM25 search over passages in one SQLite file; thread-safe (one connection per thread)."""

    name = "local"
    version = SCHEMA_VERSION

    def __init__(self, index_path: str | Path) -> None:
        require_fts5()
        self.path = Path(index_path)
        if not self.path.is_file():
            raise UserError(
                f"no search index at {self.path}; build one with "
                f"`loopwright search index SOURCE --index {self.path}`"
            )
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self.last_build: BuildStats | None = None
        """What the ``build`` that returned this index did."""
        if _meta(self._conn(), "version") != SCHEMA_VERSION:
            self.close()
            raise UserError(f"{self.path} is not a loopwright {SCHEMA_VERSION} index; rebuild it")

    @classmethod
    def build(
        cls,
        source: Source,
        index_path: str | Path,
        config: IndexConfig | None = None,
        *,
        force: bool = False,
    ) -> LocalIndex:
        """Index ``source`` into ``index_path`` (see module docstring); returns the open index."""
        require_fts5()
        config = config or IndexConfig()
        started = time.perf_counter()
        h = hashlib.sha256(f"{SCHEMA_VERSION}\n{config.model_dump_json()}\n".encode())
        if isinstance(source, str | Path):
            h.update(source_digest(source))
        else:
            docs = [d for _, d in located_docs(source)]  # fingerprinted, then indexed
            for doc in docs:
                h.update(doc.digest().encode())
            source = docs
        fingerprint = h.hexdigest()
        path = Path(index_path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unwritable(path, exc) from None
        created = not path.exists()
        try:
            with _Writer(path) as conn:
                if not force and _meta(conn, "fingerprint") == fingerprint:
                    stats = _counts(conn, skipped=True)
                else:
                    if force or _meta(conn, "config") != config.model_dump_json():
                        _wipe(conn, config)
                    stats = _sync(conn, located_docs(source), config, replace_all=True)
                    _set_meta(conn, fingerprint=fingerprint)
        except BaseException as exc:
            if created:  # leave no half-made index behind a failed first build
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            if _is_unwritable(exc):
                raise _unwritable(path, exc) from None
            raise
        index = cls(path)
        index.last_build = stats.model_copy(update={"seconds": time.perf_counter() - started})
        return index

    def add(self, docs: Iterable[Document | dict[str, Any]]) -> BuildStats:
        """Add or replace documents by id and keep the rest; the next ``build`` re-checks all."""
        with _Writer(self.path) as conn:
            config = IndexConfig.model_validate_json(_meta(conn, "config") or "{}")
            stats = _sync(conn, located_docs(docs), config, replace_all=False)
            _set_meta(conn, fingerprint="")
        return stats

    def search(
        self, query: str, k: int = 5, *, mode: Mode = "or", highlight: bool = False
    ) -> list[SearchResult]:
        """Top ``k`` passages by BM25; ``highlight`` wraps matched terms in ``**`` in snippets."""
        if k < 1:
            raise ValueError("k must be at least 1")
        conn = self._conn()
        mark = ("**", "**") if highlight else ("", "")
        terms = query_terms(query)
        if mode == "or" and len(terms) > 1:
            # FTS5 scores every row an OR matches, so one word found in most passages ("the")
            # makes a query cost O(corpus). Such words have IDF <= 0, which FTS5's BM25 clamps
            # to 1e-6: leaving them out changes no score that matters, only which near-zero
            # rows are scored. They count again when the other words find fewer than k rows.
            rare = self._without_common(conn, terms)
            if rare and len(rare) < len(terms):
                rows = self._ranked(conn, _join(rare, " OR "), k, mark)
                if len(rows) == k:
                    return self._results(rows)
        match = fts_query(query, mode)
        return self._results(self._ranked(conn, match, k, mark)) if match else []

    def _without_common(self, conn: sqlite3.Connection, terms: list[str]) -> list[str]:
        """``terms`` minus those in at least half of the passages (BM25 IDF <= 0)."""
        passages = int(_meta(conn, "passages") or 0)
        count = "select count(*) from chunks_fts where chunks_fts match ?"
        return [t for t in terms if 2 * conn.execute(count, (f'"{t}"',)).fetchone()[0] < passages]

    def _ranked(
        self, conn: sqlite3.Connection, match: str | None, k: int, mark: tuple[str, str]
    ) -> list[Any]:
        # ``rank`` is bm25 with the title weight, stored in the FTS5 table's config by _wipe.
        # Keep this one flat query: as a subquery, snippet() runs on every matched row.
        return conn.execute(
            "select c.doc_id, c.passage, c.title, c.text, d.url, d.metadata, -f.rank,"
            " snippet(chunks_fts, 1, ?, ?, '…', 24)"
            " from chunks_fts f join chunks c on c.id = f.rowid join documents d using (doc_id)"
            " where chunks_fts match ? order by f.rank limit ?",
            (*mark, match, k),
        ).fetchall()

    def _results(self, rows: list[Any]) -> list[SearchResult]:
        return [
            SearchResult(
                doc_id=doc_id,
                passage=passage,
                title=title or "",
                text=text,
                snippet=snip,
                score=score,
                url=url,
                source=self.name,
                rank=i,
                metadata=json.loads(meta) if meta else {},
            )
            for i, (doc_id, passage, title, text, url, meta, score, snip) in enumerate(rows, 1)
        ]

    def stats(self) -> BuildStats:
        """Document and passage counts."""
        return _counts(self._conn())

    def close(self) -> None:
        """Close every thread's connection (a later search opens a new one)."""
        with self._lock:
            for c in self._conns:
                c.close()
            self._conns.clear()
            self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False only so close() may close it from another thread.
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            conn.execute("pragma query_only = 1")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn


def _is_unwritable(exc: BaseException) -> bool:
    """The index file or its folder cannot be written (read-only filesystem, permissions,
    a full disk): the user's to fix, not a bug."""
    if isinstance(exc, OSError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and any(
        m in msg for m in ("readonly database", "unable to open", "disk is full", "disk i/o")
    )


def _unwritable(path: Path, exc: BaseException) -> UserError:
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return UserError(f"--index {path}: cannot write the index ({why}); choose a writable path")


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    try:
        row = conn.execute("select value from meta where key = ?", (key,)).fetchone()
    except sqlite3.DatabaseError:
        return None
    return row[0] if row else None


class _Writer:
    """A write connection holding one immediate transaction: commit on success, else roll back.

    Creates the schema; a file from another schema version is dropped and recreated, a file
    that is not ours is refused.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        self.conn = sqlite3.connect(self.path, timeout=30)
        try:
            tables = {r[0] for r in self.conn.execute("select name from sqlite_master")}
        except sqlite3.DatabaseError:
            self.conn.close()
            raise UserError(
                f"{self.path} is not a SQLite file; choose another index path"
            ) from None
        if tables and "meta" not in tables:
            self.conn.close()
            raise UserError(f"{self.path} is not a loopwright search index; choose another path")
        if tables and _meta(self.conn, "version") != SCHEMA_VERSION:
            self.conn.executescript(_DROP)
        self.conn.executescript(_SCHEMA)
        self.conn.execute("begin immediate")
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.conn.commit()
        else:
            self.conn.rollback()
        self.conn.close()


def _set_meta(conn: sqlite3.Connection, **values: str) -> None:
    values = {"version": SCHEMA_VERSION, **values}
    conn.executemany("insert or replace into meta values (?, ?)", values.items())


def _wipe(conn: sqlite3.Connection, config: IndexConfig) -> None:
    """Empty the index and record a new config (FTS5's persistent rank function included)."""
    conn.execute("insert into chunks_fts(chunks_fts) values ('delete-all')")
    conn.execute("delete from chunks")
    conn.execute("delete from documents")
    rank = f"bm25({config.title_weight:.6g}, 1.0)"  # title weight, then text weight
    conn.execute("insert into chunks_fts(chunks_fts, rank) values ('rank', ?)", (rank,))
    _set_meta(conn, config=config.model_dump_json(), fingerprint="")


def _drop_doc(conn: sqlite3.Connection, doc_id: str) -> None:
    # External content: FTS5 needs the old values to remove their terms.
    conn.execute(
        "insert into chunks_fts(chunks_fts, rowid, title, text)"
        " select 'delete', id, title, text from chunks where doc_id = ?",
        (doc_id,),
    )
    conn.execute("delete from chunks where doc_id = ?", (doc_id,))
    conn.execute("delete from documents where doc_id = ?", (doc_id,))


def _sync(
    conn: sqlite3.Connection,
    docs: Iterable[tuple[str, Document]],
    config: IndexConfig,
    *,
    replace_all: bool,
) -> BuildStats:
    """Index new and changed documents; with ``replace_all`` also drop those not in ``docs``."""
    existing = dict(conn.execute("select doc_id, digest from documents").fetchall())
    seen: dict[str, str] = {}
    added = updated = 0
    for where, doc in docs:
        if doc.doc_id in seen:
            raise CorpusError(f"{where}: duplicate id {doc.doc_id!r} (first at {seen[doc.doc_id]})")
        seen[doc.doc_id] = where
        digest = doc.digest()
        if existing.get(doc.doc_id) == digest:
            continue
        if doc.doc_id in existing:
            _drop_doc(conn, doc.doc_id)
            updated += 1
        else:
            added += 1
        passages = chunk_words(doc.text, config.passage_words, config.overlap)
        conn.execute(
            "insert into documents values (?, ?, ?, ?, ?, ?)",
            (doc.doc_id, doc.title, doc.url, json.dumps(doc.metadata), digest, len(passages)),
        )
        for i, text in enumerate(passages):
            cur = conn.execute(
                "insert into chunks(doc_id, passage, title, text) values (?, ?, ?, ?)",
                (doc.doc_id, i, doc.title, text),
            )
            conn.execute(
                "insert into chunks_fts(rowid, title, text) values (?, ?, ?)",
                (cur.lastrowid, doc.title, text),
            )
    removed = [d for d in existing if d not in seen] if replace_all else []
    for doc_id in removed:
        _drop_doc(conn, doc_id)
    stats = _counts(conn, added=added, updated=updated, removed=len(removed))
    _set_meta(conn, passages=str(stats.passages))  # read by every OR search; count(*) is O(n)
    return stats


def _counts(conn: sqlite3.Connection, **kw: Any) -> BuildStats:
    docs = conn.execute("select count(*) from documents").fetchone()[0]
    passages = conn.execute("select count(*) from chunks").fetchone()[0]
    return BuildStats(documents=docs, passages=passages, **kw)
