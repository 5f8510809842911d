"""Search: the local FTS5/BM25 index, hostile queries, corpus loading, incremental builds,
the web providers against a fake 127.0.0.1 server, and the ``search`` CLI sub-app.

No test touches the network: web providers are pointed at a ``ThreadingHTTPServer`` bound to
127.0.0.1 on port 0 and stopped at teardown, and every web API key is unset first.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from loopwright.loops.cli.search import search_app
from loopwright.loops.errors import UserError
from loopwright.tools.search import (
    SEARCHERS,
    CorpusError,
    Document,
    IndexConfig,
    LocalIndex,
    MissingAPIKey,
    SearchError,
    chunk_words,
    evidence,
    format_evidence,
    fts_query,
    get_searcher,
    load_corpus,
)
from loopwright.tools.web_search import (
    BraveSearch,
    ExaSearch,
    SerpAPISearch,
    TavilySearch,
    WebSearcher,
    retry_after_seconds,
)
from typer.testing import CliRunner

WEB_KEYS = (
    "TAVILY_API_KEY",
    "EXA_API_KEY",
    "BRAVE_API_KEY",
    "BRAVE_SEARCH_API_KEY",
    "SERPAPI_API_KEY",
)
SECRET = "sk-test-secret-0123456789"


@pytest.fixture(autouse=True)
def _no_web_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a real search provider: unset every provider key."""
    for key in WEB_KEYS:
        monkeypatch.delenv(key, raising=False)


DOCS = [
    {
        "id": "plants",
        "title": "Photosynthesis",
        "text": "Plants use chlorophyll and sunlight to make sugar from carbon dioxide and water.",
    },
    {
        "id": "ocean",
        "title": "Tides",
        "text": "The moon's gravity pulls the ocean, which makes tides rise and fall twice a day.",
    },
    {
        "id": "volcano",
        "title": "Volcanoes",
        "text": "Magma rises through the crust and erupts as lava; volcanoes build mountains.",
    },
    {
        "id": "apple1",
        "title": "Orchard",
        "text": "An apple orchard grows apple trees; apple harvest comes in autumn. apple apple.",
    },
    {
        "id": "apple2",
        "title": "Fruit",
        "text": "An apple a day keeps the doctor away, people say about the apple.",
    },
    {"id": "apple3", "title": "Pie", "text": "Apple pie needs apple slices, sugar and cinnamon."},
    {
        "id": "apple4",
        "title": "Cider",
        "text": "Cider is pressed apple juice; the apple is crushed first.",
    },
    {
        "id": "zebra",
        "title": "Savanna",
        "text": "A zebra grazes near an apple tree on the savanna.",
    },
    {"id": "cats", "title": "Cats", "text": "A cat sat on the mat. Cats sleep most of the day."},
    {
        "id": "code",
        "title": "Python",
        "text": "Use the sqlite3 module; FTS5 supports bm25 ranking of full-text matches.",
    },
]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIndex]:
    """One index over DOCS shared by the read-only tests."""
    ix = LocalIndex.build(DOCS, tmp_path_factory.mktemp("search") / "ix.db")
    yield ix
    ix.close()


def ids(results: list[Any]) -> list[str]:
    return [r.doc_id for r in results]


# -- ranking ----------------------------------------------------------------------------------


def test_relevant_document_ranks_first(index: LocalIndex) -> None:
    assert ids(index.search("how do plants use sunlight and chlorophyll?"))[0] == "plants"
    assert ids(index.search("why does the ocean have tides"))[0] == "ocean"
    assert ids(index.search("lava erupting", k=1)) == ["volcano"]


def test_bm25_prefers_the_rarer_term(index: LocalIndex) -> None:
    # "apple" is in six documents, several times; "zebra" in one. The zebra doc must win.
    results = index.search("apple zebra", k=10)
    assert results[0].doc_id == "zebra"
    assert {r.doc_id for r in results} >= {"apple1", "apple2", "apple3", "apple4", "zebra"}
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    assert [r.rank for r in results] == list(range(1, len(results) + 1))


def test_result_fields_and_porter_stemming(index: LocalIndex) -> None:
    [hit] = index.search("sleeping", k=1)  # porter: sleeping ~ sleep
    assert (hit.doc_id, hit.passage, hit.title, hit.source) == ("cats", 0, "Cats", "local")
    assert "Cats sleep" in hit.text and hit.score is not None and hit.score > 0
    [hit] = index.search("sleeping", k=1, highlight=True)
    assert "**sleep**" in (hit.snippet or "")


def test_dropping_common_words_keeps_the_bm25_ranking(tmp_path: Path) -> None:
    # "the" is in every passage (IDF <= 0), so OR queries leave it out unless needed.
    docs = [
        {"id": f"d{i}", "text": f"the {' '.join(f'w{j}' for j in range(i % 7, i % 7 + 3))} the"}
        for i in range(40)
    ] + [{"id": "only-the", "text": "the the the"}]
    with LocalIndex.build(docs, tmp_path / "ix.db") as ix:
        conn = ix._conn()
        for q in ("the w1", "w3 the w4", "The w0 w8", "w2 w9 the"):
            full = ix._ranked(conn, fts_query(q), 5, ("", ""))
            assert ids(ix.search(q, k=5)) == [r[0] for r in full]
        # fewer than k passages match "w0": the common word counts again
        rare = ids(ix.search("w0", k=20))
        hits = ids(ix.search("the w0", k=20))
        assert len(rare) < 20 and len(hits) == 20 and hits[: len(rare)] == rare


def test_modes_or_and_phrase(index: LocalIndex) -> None:
    assert "apple3" in ids(index.search("cinnamon gravity", mode="or"))
    assert index.search("cinnamon gravity", mode="and") == []
    assert ids(index.search("pie cinnamon", mode="and")) == ["apple3"]
    assert ids(index.search("apple pie", mode="phrase")) == ["apple3"]
    assert index.search("pie apple", mode="phrase") == []


HOSTILE = [
    '"cat',
    'cat"',
    "cat AND",
    "AND cat",
    "cat OR OR dog",
    "NEAR(cat dog",
    "NEAR(cat, 2)",
    "cat*",
    "*",
    "((cat",
    "cat))",
    "title:cat",
    "-cat",
    "cat -dog",
    "^cat",
    "NOT cat",
    "cat's mat",
    "{cat}",
    "cat + mat = ?",
    "c:a:t",
    "_",
    "a_b",
    "\x00cat",
    "🐈 cat",
    "",
    "   ",
    "?!.,;",
    "cat " * 500,
]


@pytest.mark.parametrize("mode", ["or", "and", "phrase"])
@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_queries_never_raise(index: LocalIndex, query: str, mode: Any) -> None:
    results = index.search(query, mode=mode)
    if mode == "or" and "cat" in query.lower():
        assert "cats" in ids(results)
    if not any(ch.isalnum() for ch in query):
        assert results == []


def test_random_hostile_queries_never_raise(index: LocalIndex) -> None:
    rng = random.Random(0)
    alphabet = [*"\"'()*:-^+{}[],.;!?_ \t\n\\/", "AND", "OR", "NOT", "NEAR", "cat", "é", "中"]
    for _ in range(300):
        q = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        for mode in ("or", "and", "phrase"):
            index.search(q, mode=mode)  # type: ignore[arg-type]


def test_fts_query_is_only_quoted_terms() -> None:
    assert fts_query('cat AND "dog" NEAR(x*') == '"cat" OR "and" OR "dog" OR "near" OR "x"'
    assert fts_query("a b a", mode="and") == '"a" AND "b"'
    assert fts_query("New York-city", mode="phrase") == '"new york city"'
    assert fts_query(" ()*: ") is None
    assert fts_query("w " * 1000, mode="or") == '"w"'


def test_k_must_be_positive(index: LocalIndex) -> None:
    with pytest.raises(ValueError):
        index.search("cat", k=0)


# -- corpus loading ---------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_build_accepts_common_field_names(tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {
                "id": "a",
                "text": "alpha particles",
                "title": "A",
                "url": "http://a",
                "metadata": {"n": 1},
            },
            {"doc_id": 7, "contents": "beta decay"},
            "",
            {"_id": "c", "body": "gamma rays", "link": "http://c"},
        ],
    )
    with LocalIndex.build(src, tmp_path / "ix.db") as ix:
        assert ix.stats().documents == 3
        [a] = ix.search("alpha")
        assert (a.doc_id, a.title, a.url, a.metadata) == ("a", "A", "http://a", {"n": 1})
        assert ids(ix.search("beta")) == ["7"]
        assert ix.search("gamma")[0].url == "http://c"


def test_folder_build(tmp_path: Path) -> None:
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / "one.md").write_text("# Kepler's laws\n\nPlanets sweep equal areas in equal times.\n")
    (root / "sub" / "two.txt").write_text("\n\nNewton\nGravity follows an inverse square law.\n")
    (root / "fm.md").write_text(
        '---\ntitle: "Front Matter"\ntags: x\n---\n# Heading\nOrbit text.\n'
    )
    (root / ".hidden.md").write_text("secret orbit")
    (root / "data.csv").write_text("orbit,1")
    (root / "empty.txt").write_text("  \n")
    docs = {d.doc_id: d for d in load_corpus(root)}
    assert set(docs) == {"one.md", "sub/two.txt", "fm.md"}
    assert docs["one.md"].title == "Kepler's laws"
    assert docs["sub/two.txt"].title == "Newton"
    assert docs["fm.md"].title == "Front Matter"
    with LocalIndex.build(root, tmp_path / "ix.db") as ix:
        assert ids(ix.search("inverse square")) == ["sub/two.txt"]
        assert ids(ix.search("orbit")) == ["fm.md"]  # hidden file not indexed


def test_source_must_be_jsonl_or_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        LocalIndex.build(tmp_path / "nope.jsonl", tmp_path / "ix.db")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(UserError, match=r"expected a \.jsonl file or a folder"):
        LocalIndex.build(tmp_path / "x.csv", tmp_path / "ix.db")


BAD_LINES = [
    ('{"id": "b", "text": ', "c.jsonl:2: not valid JSON"),
    ('["b", "text"]', "c.jsonl:2: expected a JSON object, got list"),
    ('{"id": "b"}', "c.jsonl:2: field 'text' must be non-empty text"),
    ('{"id": "b", "body": "   "}', "c.jsonl:2: field 'body' must be non-empty text"),
    ('{"text": "no id"}', "c.jsonl:2: field 'id' is missing"),
    ('{"id": true, "text": "x"}', "c.jsonl:2: field 'id' is missing"),
    ('{"id": "b", "text": "x", "title": 5}', "c.jsonl:2: field 'title' must be a str"),
    ('{"id": "b", "text": "x", "metadata": []}', "c.jsonl:2: field 'metadata' must be a dict"),
    ('{"id": "a", "text": "again"}', "c.jsonl:2: duplicate id 'a' (first at "),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_bad_jsonl_line_names_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    src = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "fine"}, line])
    with pytest.raises(CorpusError) as info:
        LocalIndex.build(src, tmp_path / "ix.db")
    assert isinstance(info.value, UserError)
    text = str(info.value)
    assert message in text and "\n" not in text
    assert not (tmp_path / "ix.db").exists()  # a failed first build leaves nothing behind


def test_opening_a_missing_or_foreign_index_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no search index at .*loopwright search index"):
        LocalIndex(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="not a SQLite file"):
        LocalIndex.build(DOCS, junk)
    with pytest.raises(UserError, match="rebuild it"):
        LocalIndex(junk)


def test_missing_fts5_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import loopwright.tools.search.local as local

    class NoFts5:
        def execute(self, sql: str) -> None:
            raise sqlite3.OperationalError("no such module: fts5")

    monkeypatch.setattr(local.sqlite3, "connect", lambda *a, **kw: NoFts5())
    local.require_fts5.cache_clear()
    try:
        with pytest.raises(UserError, match=r"^this Python's SQLite .* lacks FTS5; use a Python"):
            LocalIndex.build(DOCS, "unused.db")
    finally:
        local.require_fts5.cache_clear()


# -- chunking ---------------------------------------------------------------------------------


def test_chunk_words_sizes_and_overlap() -> None:
    words = [f"w{i}" for i in range(25)]
    chunks = chunk_words(" ".join(words), size=10, overlap=3)
    assert [c.split()[0] for c in chunks] == ["w0", "w7", "w14", "w21"]
    assert all(len(c.split()) <= 10 for c in chunks)
    assert chunks[-1].split()[-1] == "w24"
    assert chunks[0].split()[-3:] == chunks[1].split()[:3]
    assert chunk_words("a b  c", 10, 2) == ["a b c"]
    assert chunk_words("   ", 10, 2) == []
    with pytest.raises(ValueError):
        chunk_words("a", 5, 5)


def test_long_documents_are_searched_by_passage(tmp_path: Path) -> None:
    filler = " ".join(f"filler{i}" for i in range(95))
    long = Document(doc_id="long", title="Long", text=f"{filler} needle haystack {filler}")
    config = IndexConfig(passage_words=40, overlap=10)
    with LocalIndex.build(
        [long, Document(doc_id="short", text="needle")], tmp_path / "ix.db", config
    ) as ix:
        assert ix.stats().passages == 1 + len(chunk_words(long.text, 40, 10))
        hits = [h for h in ix.search("haystack", k=10) if h.doc_id == "long"]
        assert hits and all(h.passage > 0 for h in hits)
        assert all("haystack" in h.text and len(h.text.split()) <= 40 for h in hits)
    with pytest.raises(ValueError, match="overlap"):
        IndexConfig(passage_words=20, overlap=20)


# -- incremental builds -----------------------------------------------------------------------


def test_unchanged_corpus_is_skipped_and_changes_are_incremental(tmp_path: Path) -> None:
    rows = [{"id": f"d{i}", "text": f"document number {i} about topic{i}"} for i in range(5)]
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    path = tmp_path / "ix.db"
    first = LocalIndex.build(src, path)
    assert first.last_build is not None
    assert (first.last_build.added, first.last_build.skipped) == (5, False)

    again = LocalIndex.build(src, path)
    assert again.last_build is not None and again.last_build.skipped
    assert again.last_build.documents == 5

    rows[1] = {"id": "d1", "text": "rewritten with zeppelin"}
    rows.pop(3)
    rows.append({"id": "d9", "text": "newcomer"})
    write_jsonl(src, rows)
    changed = LocalIndex.build(src, path)
    s = changed.last_build
    assert s is not None
    assert (s.added, s.updated, s.removed, s.documents, s.skipped) == (1, 1, 1, 5, False)
    assert ids(changed.search("zeppelin")) == ["d1"]
    assert changed.search("topic1") == [] and changed.search("topic3") == []
    assert ids(first.search("newcomer")) == ["d9"]  # an index opened earlier sees the update

    forced = LocalIndex.build(src, path, force=True)
    assert forced.last_build is not None and forced.last_build.added == 5
    rechunked = LocalIndex.build(src, path, IndexConfig(passage_words=50, overlap=5))
    assert rechunked.last_build is not None and rechunked.last_build.added == 5
    for ix in (first, again, changed, forced, rechunked):
        ix.close()


def test_add_then_rebuild_mirrors_the_source(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "original text"}])
    with LocalIndex.build(src, tmp_path / "ix.db") as ix:
        stats = ix.add(
            [{"doc_id": "b", "text": "extra quasar"}, Document(doc_id="a", text="replaced pulsar")]
        )
        assert (stats.added, stats.updated, stats.documents) == (1, 1, 2)
        assert ids(ix.search("quasar")) == ["b"] and ids(ix.search("pulsar")) == ["a"]
        assert ix.search("original") == []
    rebuilt = LocalIndex.build(src, tmp_path / "ix.db")
    assert rebuilt.last_build is not None and not rebuilt.last_build.skipped
    assert rebuilt.search("quasar") == [] and ids(rebuilt.search("original")) == ["a"]
    rebuilt.close()


def test_concurrent_reads_from_threads(index: LocalIndex) -> None:
    queries = ["apple zebra", "plants sunlight", "tides moon", "lava", "cat", "bm25 sqlite"]
    expected = {q: ids(index.search(q)) for q in queries}
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for i in range(60):
                q = queries[(seed + i) % len(queries)]
                assert ids(index.search(q)) == expected[q]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- evidence and registry --------------------------------------------------------------------


def test_evidence_block_cites_source_ids(index: LocalIndex) -> None:
    block = evidence(index, "lava magma", k=2)
    assert block.startswith("[volcano#0] Volcanoes\nMagma rises")
    assert index.evidence("zzzqqq") == "No evidence found."
    [hit] = index.search("cider", k=1)
    assert format_evidence([hit], max_chars=20) == "[apple4#0] Cider\nCider is pressed ap…"


def test_registry(tmp_path: Path) -> None:
    LocalIndex.build(DOCS, tmp_path / "ix.db").close()
    with get_searcher("local", index_path=tmp_path / "ix.db") as s:
        assert ids(s.search("lava", k=1)) == ["volcano"]
    with pytest.raises(
        UserError, match=r"unknown search provider 'tavilly' — did you mean 'tavily'"
    ):
        get_searcher("tavilly")
    assert set(SEARCHERS) == {"local", "tavily", "exa", "brave", "serpapi"}


# -- web providers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "variables"),
    [
        ("tavily", "TAVILY_API_KEY"),
        ("exa", "EXA_API_KEY"),
        ("brave", "BRAVE_API_KEY or BRAVE_SEARCH_API_KEY"),
        ("serpapi", "SERPAPI_API_KEY"),
    ],
)
def test_missing_key_is_one_line_naming_the_variable(name: str, variables: str) -> None:
    with pytest.raises(MissingAPIKey) as info:
        get_searcher(name)
    assert str(info.value) == f"{name} search needs an API key: set {variables}"
    assert isinstance(info.value, UserError)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: list[Reply] = []
        self.seen: list[Seen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def _reply(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.server.seen.append(
            Seen(
                self.command,
                parts.path,
                parse_qs(parts.query),
                {k.lower(): v for k, v in self.headers.items()},
                json.loads(raw) if raw else None,
            )
        )
        reply = (
            self.server.replies.pop(0) if len(self.server.replies) > 1 else self.server.replies[0]
        )
        time.sleep(reply.delay)
        payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            for k, v in {"Content-Type": "application/json", **reply.headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left

    do_GET = do_POST = _reply

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


TAVILY = {
    "query": "q",
    "answer": None,
    "images": [],
    "results": [
        {
            "title": "T1",
            "url": "https://a.example/1",
            "content": "first content",
            "score": 0.91,
            "raw_content": None,
        },
        {
            "title": "T2",
            "url": "https://a.example/2",
            "content": "second content",
            "score": 0.52,
            "raw_content": None,
        },
    ],
    "response_time": 0.4,
}
EXA = {
    "requestId": "r1",
    "resolvedSearchType": "neural",
    "results": [
        {
            "id": "https://b.example/1",
            "url": "https://b.example/1",
            "title": "E1",
            "score": 0.8,
            "publishedDate": None,
            "author": None,
            "text": "exa text one",
        },
        {
            "id": "https://b.example/2",
            "url": "https://b.example/2",
            "title": "E2",
            "highlights": ["exa", "highlight"],
        },
    ],
}
BRAVE = {
    "type": "search",
    "query": {"original": "q"},
    "web": {
        "type": "search",
        "results": [
            {
                "title": "B1 &amp; co",
                "url": "https://c.example/1",
                "description": "a <strong>bold</strong> claim",
                "age": "1 day ago",
            },
            {"title": "B2", "url": "https://c.example/2", "description": "plain"},
        ],
    },
}
SERPAPI = {
    "search_metadata": {"status": "Success"},
    "search_parameters": {"engine": "google", "q": "q"},
    "organic_results": [
        {
            "position": 1,
            "title": "S1",
            "link": "https://d.example/1",
            "snippet": "serp one",
            "displayed_link": "d.example",
        },
        {"position": 2, "title": "S2", "link": "https://d.example/2", "snippet": "serp two"},
    ],
}

PROVIDERS: list[tuple[type[WebSearcher], str, dict[str, Any]]] = [
    (TavilySearch, "TAVILY_API_KEY", TAVILY),
    (ExaSearch, "EXA_API_KEY", EXA),
    (BraveSearch, "BRAVE_SEARCH_API_KEY", BRAVE),
    (SerpAPISearch, "SERPAPI_API_KEY", SERPAPI),
]


PROVIDER_IDS = [cls.name for cls, _, _ in PROVIDERS]


def check_request(cls: type[WebSearcher], seen: Seen, k: int) -> None:
    """Each provider's documented request: endpoint, where the key goes, how k is sent."""
    if cls is TavilySearch:
        assert (seen.method, seen.path) == ("POST", "/search")
        assert seen.headers["authorization"] == f"Bearer {SECRET}"
        assert seen.body["query"] == "who discovered oxygen" and seen.body["max_results"] == k
    elif cls is ExaSearch:
        assert (seen.method, seen.path) == ("POST", "/search")
        assert seen.headers["x-api-key"] == SECRET
        assert seen.body["numResults"] == k and "text" in seen.body["contents"]
    elif cls is BraveSearch:
        assert (seen.method, seen.path) == ("GET", "/res/v1/web/search")
        assert seen.headers["x-subscription-token"] == SECRET
        assert seen.query == {"q": ["who discovered oxygen"], "count": [str(k)]}
    else:
        assert (seen.method, seen.path) == ("GET", "/search.json")
        assert seen.query["api_key"] == [SECRET] and seen.query["engine"] == ["google"]
        assert seen.query["num"] == [str(k)] and seen.query["q"] == ["who discovered oxygen"]


@pytest.mark.parametrize(("cls", "env", "body"), PROVIDERS, ids=PROVIDER_IDS)
def test_web_provider_against_fake_server(
    fake: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    cls: type[WebSearcher],
    env: str,
    body: dict[str, Any],
) -> None:
    monkeypatch.setenv(env, SECRET)
    fake.replies = [Reply(body=body)]
    with get_searcher(cls.name, base_url=fake.url) as s:
        results = s.search("who discovered oxygen", k=3)
        assert SECRET not in repr(s)
    check_request(cls, fake.seen[0], 3)
    assert [r.rank for r in results] == [1, 2]
    first = results[0]
    assert first.source == cls.name and first.url == first.doc_id == first.source_id
    expected = {
        TavilySearch: ("T1", "first content", 0.91),
        ExaSearch: ("E1", "exa text one", 0.8),
        BraveSearch: ("B1 & co", "a bold claim", None),
        SerpAPISearch: ("S1", "serp one", None),
    }[cls]
    assert (first.title, first.text, first.score) == expected
    if cls is ExaSearch:
        assert results[1].text == "exa highlight"
    assert format_evidence(results).startswith(f"[{first.url}] {first.title}\n")


@pytest.mark.parametrize(("cls", "env", "body"), PROVIDERS, ids=PROVIDER_IDS)
def test_web_provider_retries_429_honouring_retry_after(
    fake: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    cls: type[WebSearcher],
    env: str,
    body: dict[str, Any],
) -> None:
    monkeypatch.setenv(env, SECRET)
    fake.replies = [Reply(429, {"error": "rate limited"}, {"Retry-After": "7"}), Reply(body=body)]
    waits: list[float] = []
    with cls(base_url=fake.url, sleep=waits.append) as s:
        results = s.search("who discovered oxygen", k=2)
    assert len(fake.seen) == 2 and waits == [7.0]
    assert len(results) == 2


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (retry_after_seconds(future) or 0) <= 30
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_web_gives_up_after_max_attempts_without_leaking_the_key(fake: FakeServer) -> None:
    fake.replies = [Reply(503, {"detail": f"down, key={SECRET}"})]
    waits: list[float] = []
    s = TavilySearch(SECRET, base_url=fake.url, max_attempts=3, sleep=waits.append)
    with pytest.raises(
        SearchError, match="tavily search failed after 3 attempts: HTTP 503"
    ) as info:
        s.search("x")
    assert SECRET not in str(info.value)
    assert len(fake.seen) == 3 and len(waits) == 2 and all(0 < w <= 60 for w in waits)
    s.close()


def test_web_bad_key_and_client_errors(fake: FakeServer) -> None:
    fake.replies = [Reply(401, {"detail": "invalid key"})]
    with (
        ExaSearch(SECRET, base_url=fake.url, sleep=lambda _: None) as s,
        pytest.raises(UserError, match=r"exa rejected the API key \(HTTP 401\); check EXA_API_KEY"),
    ):
        s.search("x")
    assert len(fake.seen) == 1  # not retried
    fake.replies = [Reply(400, {"error": f"bad query from {SECRET}"})]
    with SerpAPISearch(SECRET, base_url=fake.url) as s, pytest.raises(SearchError) as info:
        s.search("x")
    assert "HTTP 400" in str(info.value) and SECRET not in str(info.value)
    fake.replies = [Reply(200, b"<html>not json</html>")]
    with BraveSearch(SECRET, base_url=fake.url) as s, pytest.raises(SearchError, match="non-JSON"):
        s.search("x")


def test_web_timeout_is_retried(fake: FakeServer) -> None:
    fake.replies = [Reply(body=TAVILY, delay=1.0), Reply(body=TAVILY)]
    waits: list[float] = []
    with TavilySearch(SECRET, base_url=fake.url, timeout=0.2, sleep=waits.append) as s:
        results = s.search("x", k=1)
    assert ids(results) == ["https://a.example/1"]
    assert len(fake.seen) == 2 and len(waits) == 1


def test_web_empty_query_sends_nothing(fake: FakeServer) -> None:
    fake.replies = [Reply(body=TAVILY)]
    with TavilySearch(SECRET, base_url=fake.url) as s:
        assert s.search("   ") == []
    assert fake.seen == []


def test_serpapi_key_is_masked_in_httpx_logs(
    fake: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    fake.replies = [Reply(body=SERPAPI)]
    with (
        caplog.at_level(logging.INFO, logger="httpx"),
        SerpAPISearch(SECRET, base_url=fake.url) as s,
    ):
        s.search("x")
    # ours masks it as api_key=***; litellm, when imported in the same process, installs its
    # own filter that may redact the whole query first -- either way the key must not show
    assert "HTTP Request: GET" in caplog.text
    assert SECRET not in caplog.text


# -- CLI --------------------------------------------------------------------------------------


def test_cli_index_and_query(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "c.jsonl", DOCS)
    ix = str(tmp_path / "ix.db")
    runner = CliRunner()
    out = runner.invoke(search_app, ["index", str(src), "--index", ix])
    assert out.exit_code == 0, out.output
    assert f"indexed {len(DOCS)} documents, {len(DOCS)} passages" in out.output
    out = runner.invoke(search_app, ["index", str(src), "--index", ix])
    assert out.exit_code == 0 and out.output.startswith("unchanged:")

    out = runner.invoke(search_app, ["query", "apple zebra", "--index", ix, "-k", "3", "--json"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert len(rows) == 3 and rows[0]["doc_id"] == "zebra" and rows[0]["rank"] == 1

    out = runner.invoke(search_app, ["query", "NEAR( lava *", "--index", ix])
    assert out.exit_code == 0, out.output
    assert "volcano#0" in out.output and "Volcanoes" in out.output

    out = runner.invoke(search_app, ["query", "zzzqqq", "--index", ix])
    assert out.exit_code == 0 and "no results" in out.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "x"], "--index PATH is required for the local provider"),
        (["query", "x", "--provider", "bing"], "unknown search provider 'bing'"),
        (["query", "x", "--provider", "exa"], "exa search needs an API key: set EXA_API_KEY"),
        (["query", "x", "--index", "nope.db"], "no search index at nope.db"),
        (
            ["query", "x", "--index", "nope.db", "--mode", "near"],
            "--mode must be or, and or phrase",
        ),
        (["index", "missing.jsonl", "--index", "ix.db"], "corpus missing.jsonl does not exist"),
        (["index", ".", "--index", "ix.db", "--overlap", "300"], "overlap must be smaller"),
    ],
)
def test_cli_user_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(search_app, args)
    assert isinstance(out.exception, UserError), out.output
    assert message in str(out.exception)
