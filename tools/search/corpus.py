"""Corpus loading: JSONL files, folders of ``.txt``/``.md``, or documents in memory; chunking."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from loopwright.tools.errors import UserError
from pydantic import BaseModel, ConfigDict, Field

ID_FIELDS = ("id", "doc_id", "docid", "_id")
TEXT_FIELDS = ("text", "contents", "content", "body", "passage")
URL_FIELDS = ("url", "link", "source")


class CorpusError(UserError):
    """A corpus the user supplied cannot be indexed; the message names file:line and field."""


class Document(BaseModel):
    """One corpus document before chunking."""

    model_config = ConfigDict(frozen=True)

    doc_id: str = Field(min_length=1, description="Unique id within the corpus.")
    text: str = Field(description="Full document text.")
    title: str = Field(default="", description="Title; indexed alongside every passage.")
    url: str | None = Field(default=None, description="Where the document lives, if known.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Returned with each hit.")

    def digest(self) -> str:
        """Content hash; a changed hash means the document is re-indexed."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


Source = str | Path | Iterable[Document | dict[str, Any]]
"""A JSONL path, a folder path, or documents (``Document`` or dicts of its fields)."""


def _pick(obj: dict[str, Any], names: tuple[str, ...]) -> tuple[str, Any]:
    """The first of ``names`` present in ``obj`` (name, value), else ``(names[0], None)``."""
    for n in names:
        if obj.get(n) is not None:
            return n, obj[n]
    return names[0], None


def _doc_from_dict(obj: Any, where: str) -> Document:
    if not isinstance(obj, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    id_key, doc_id = _pick(obj, ID_FIELDS)
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int) or doc_id == "":
        raise CorpusError(f"{where}: field {id_key!r} is missing (a string or integer id)")
    text_key, text = _pick(obj, TEXT_FIELDS)
    if not isinstance(text, str) or not text.strip():
        raise CorpusError(
            f"{where}: field {text_key!r} must be non-empty text "
            f"(also accepted: {', '.join(TEXT_FIELDS[1:])})"
        )
    _, url = _pick(obj, URL_FIELDS)
    title, meta = obj.get("title") or "", obj.get("metadata")
    for key, val, want in (("title", title, str), ("url", url, str), ("metadata", meta, dict)):
        if val is not None and not isinstance(val, want):
            raise CorpusError(f"{where}: field {key!r} must be a {want.__name__}")
    return Document(doc_id=str(doc_id), text=text, title=title, url=url, metadata=meta or {})


def _jsonl_docs(path: Path) -> Iterator[tuple[str, Document]]:
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            yield f"{path}:{n}", _doc_from_dict(obj, f"{path}:{n}")


def md_title(text: str) -> str:
    """Front-matter ``title:``, else the first non-empty line without leading ``#``."""
    lines = text.splitlines()
    if lines and lines[0].strip() == "---":
        for i, ln in enumerate(lines[1:], 1):
            if ln.strip() == "---":
                for fm in lines[1:i]:
                    if fm.lower().startswith("title:"):
                        return fm[6:].strip().strip("\"'")[:200]
                lines = lines[i + 1 :]
                break
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    return first.lstrip("#").strip()[:200]


def folder_files(root: Path) -> list[Path]:
    """``.txt``/``.md`` files under ``root``, sorted, skipping hidden files and folders."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in (".txt", ".md")
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _folder_docs(root: Path) -> Iterator[tuple[str, Document]]:
    for p in folder_files(root):
        try:
            text = p.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise CorpusError(f"{p}: not UTF-8 text") from None
        if text.strip():
            doc_id = p.relative_to(root).as_posix()
            yield str(p), Document(doc_id=doc_id, text=text, title=md_title(text))


def source_kind(source: Path) -> Literal["jsonl", "folder"]:
    """Whether ``source`` is a JSONL file or a folder; a UserError for anything else."""
    if source.is_dir():
        return "folder"
    if source.is_file() and source.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if not source.exists():
        raise UserError(f"corpus {source} does not exist")
    raise UserError(f"corpus {source}: expected a .jsonl file or a folder of .txt/.md files")


def located_docs(source: Source) -> Iterator[tuple[str, Document]]:
    """``(where, document)`` pairs; ``where`` is ``file:line``, a file path or ``docs[i]``."""
    if isinstance(source, str | Path):
        path = Path(source)
        yield from _jsonl_docs(path) if source_kind(path) == "jsonl" else _folder_docs(path)
        return
    for i, d in enumerate(source):
        yield f"docs[{i}]", d if isinstance(d, Document) else _doc_from_dict(d, f"docs[{i}]")


def load_corpus(source: Source) -> Iterator[Document]:
    """Documents from a JSONL path, a folder path, or an iterable of documents/dicts."""
    for _, doc in located_docs(source):
        yield doc


def source_digest(source: str | Path) -> bytes:
    """Hash of a JSONL file's bytes, or of a folder's file names and bytes."""
    path = Path(source)
    h = hashlib.sha256()
    files = [path] if source_kind(path) == "jsonl" else folder_files(path)
    for f in files:
        h.update(f"{f.relative_to(path).as_posix() if f != path else ''}\0".encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.digest()


def chunk_words(text: str, size: int, overlap: int) -> list[str]:
    """Passages of at most ``size`` words; consecutive passages share ``overlap`` words."""
    if not 0 <= overlap < size:
        raise ValueError("need 0 <= overlap < size")
    words = text.split()
    if len(words) <= size:
        return [" ".join(words)] if words else []
    out = []
    for start in range(0, len(words), size - overlap):
        out.append(" ".join(words[start : start + size]))
        if start + size >= len(words):
            break
    return out
