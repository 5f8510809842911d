"""Rows of a dataset wherever it lives: a Hugging Face hub id, a ``save_to_disk`` folder, a
folder of parquet files, or a ``.parquet`` / ``.jsonl`` / ``.json`` / ``.csv`` file.

``read_rows(location, config=, split=, revision=)`` returns the rows as plain dicts and their
``SourceInfo``. The hub goes through ``datasets.load_dataset`` (imported only then), which
reads its cache when ``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1`` or, by itself, when the
network is down; files are read with pyarrow or the standard library. What cannot be read is
one ``UserError`` line saying what to do.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopwright.loops.errors import UserError
from loopwright.loops.tasks.sources import read_jsonl
from loopwright.loops.tasks.taskset import SourceInfo, rows_sha256

FILE_KINDS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "json", ".csv": "csv"}
"""File suffix -> SourceInfo.kind (``.jsonl.gz`` reads as jsonl too)."""

DEFAULT_SPLIT = "test"
"""The split read when none is named and a dataset has several."""


@dataclass(frozen=True)
class Table:
    """Rows read, their provenance, and how an error names each row."""

    rows: list[dict[str, Any]]
    info: SourceInfo
    labels: list[str]
    """Per row: ``PATH:LINE`` for JSONL, else ``LOCATION row I`` (I from 0, as
    ``dataset[I]``)."""
    columns: list[str]


def read_rows(
    location: str,
    *,
    config: str | None = None,
    split: str | None = None,
    revision: str | None = None,
) -> tuple[list[dict[str, Any]], SourceInfo]:
    """The rows at ``location`` and their SourceInfo (``rows_sha256`` over the raw rows):
    ``hf:ID`` (or a bare ``ORG/NAME`` that is no local path) from the hub, else a file or
    folder. ``split`` picks one of several (default: ``test``, else the only one)."""
    table = read_table(location, config=config, split=split, revision=revision)
    return table.rows, table.info


def file_kind(path: str) -> str | None:
    """The SourceInfo kind a file's suffix says (``parquet``, ``jsonl``, ...), or None."""
    name = path.lower()
    if name.endswith(".jsonl.gz"):
        return "jsonl"
    return FILE_KINDS.get(os.path.splitext(name)[1])


def is_hub(location: str) -> bool:
    """Whether ``location`` names a hub dataset: ``hf:ID``, or an ``ORG/NAME`` that is not a
    local path and has no data file suffix."""
    if location.startswith("hf:"):
        return True
    return (
        not os.path.exists(location)
        and file_kind(location) is None
        and re.fullmatch(r"[\w.-]+/[\w.-]+", location) is not None
    )


def dataset_folder(path: Path) -> str | None:
    """``disk`` for a ``save_to_disk`` folder, ``parquet`` for a folder holding parquet files,
    None for any other folder."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "disk"
    try:
        next(path.rglob("*.parquet"))
    except (StopIteration, OSError):
        return None
    return "parquet"


def read_table(
    location: str,
    *,
    config: str | None = None,
    split: str | None = None,
    revision: str | None = None,
) -> Table:
    """``read_rows`` with the columns and each row's label for error messages."""
    if is_hub(location):
        return _hub(location.removeprefix("hf:"), config, split, revision)
    path = Path(location)
    if path.is_dir():
        kind = dataset_folder(path)
        if kind == "disk":
            return _disk(path, split)
        if kind == "parquet":
            return _parquet_folder(path, config, split)
        raise UserError(
            f"{path} holds no dataset: give a save_to_disk folder (with dataset_info.json), a "
            "folder of .parquet files, or one .parquet/.jsonl/.json/.csv file"
        )
    kind = file_kind(location)
    if kind is None:
        raise UserError(
            f"cannot read {location}: give a .parquet, .jsonl, .json or .csv file, a folder, "
            "or hf:ORG/NAME for a hub dataset"
        )
    if not path.exists():
        raise UserError(f"data file {path} does not exist")
    if kind == "jsonl":
        pairs = list(read_jsonl(path, "data file"))
        rows = [obj for _, obj in pairs]
        return _table(rows, [f"{path}:{n}" for n, _ in pairs], kind, path)
    rows = {"parquet": _parquet_file, "json": _json_file, "csv": _csv_file}[kind](path)
    return _table(rows, None, kind, path)  # one file is one split: ``split`` names none


def _table(
    rows: list[dict[str, Any]],
    labels: list[str] | None,
    kind: str,
    path: Path,
    *,
    split: str | None = None,
    revision: str | None = None,
    columns: list[str] | None = None,
) -> Table:
    location = str(path)
    info = SourceInfo(
        kind=kind,
        location=str(path.resolve()),
        split=split,
        revision=revision,
        rows_sha256=rows_sha256(rows),
    )
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    return Table(rows, info, labels or [f"{location} row {i}" for i in range(len(rows))], columns)


def _cannot(path: Path, what: str, exc: Exception) -> UserError:
    why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"cannot read {path}: {what} ({why})")


# -- files -----------------------------------------------------------------------------------
def _parquet_file(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.read_table(path).to_pylist())
    except (pa.ArrowException, OSError) as exc:
        raise _cannot(path, "not a readable parquet file", exc) from None


def _json_file(path: Path) -> list[dict[str, Any]]:
    """A JSON array of objects, an object holding one such array (``{"data": [...]}``), or
    JSON lines under a ``.json`` name."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"cannot read {path}: not UTF-8 text: save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object a line: JSON lines under a .json name
            return [obj for _, obj in read_jsonl(path, "data file")]
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserError(
            f"{path}: expected a JSON array of objects (one per row), or an object holding one"
        )
    return data


def _csv_file(path: Path) -> list[dict[str, Any]]:
    """Every value as its text (a reference keeps the form written: ``0.50`` stays so)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a test program is longer than 128 KiB
    rows: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            for i, row in enumerate(reader):
                if None in row:
                    raise UserError(f"{path} row {i}: more values than the header has columns")
                rows.append(dict(row))
    except UnicodeDecodeError:
        raise UserError(f"cannot read {path}: not UTF-8 text: save it as UTF-8") from None
    except csv.Error as exc:
        raise _cannot(path, "not valid CSV", exc) from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    return rows


# -- folders ---------------------------------------------------------------------------------
_SHARD = re.compile(r"^(?P<split>[A-Za-z][\w.]*?)(?:-\d+-of-\d+|-\d+)?$")


def _split_of(file: Path, root: Path) -> str:
    """The split a parquet file holds, by the hub's naming: ``test-00000-of-00001.parquet``,
    ``test.parquet``, or ``test/0000.parquet``."""
    m = _SHARD.match(file.stem)
    if m:
        return m["split"]
    return file.parent.name if file.parent != root else file.stem


def pick_split(splits: list[str], split: str | None, where: str) -> str:
    """The split to read: the one named, else ``test``, else the only one; else one line
    naming the splits."""
    if split is not None:
        if split not in splits:
            raise UserError(f"{where} has no split {split!r}; its splits are: {', '.join(splits)}")
        return split
    if DEFAULT_SPLIT in splits:
        return DEFAULT_SPLIT
    if len(splits) == 1:
        return splits[0]
    raise UserError(f"{where} holds splits {', '.join(splits)}: name one (split=NAME)")


def _parquet_folder(root: Path, config: str | None, split: str | None) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(root.rglob("*.parquet"))
    if config is not None:
        files = [f for f in files if config in f.relative_to(root).parts[:-1]]
        if not files:
            raise UserError(f"{root} has no folder named {config!r} (config) holding parquet files")
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(_split_of(f, root), []).append(f)
    chosen = pick_split(sorted(groups), split, str(root))
    rows: list[dict[str, Any]] = []
    for f in groups[chosen]:
        try:
            rows.extend(pq.read_table(f).to_pylist())
        except (pa.ArrowException, OSError) as exc:
            raise _cannot(f, "not a readable parquet file", exc) from None
    table = _table(rows, None, "parquet", root, split=chosen)
    return _with(table, config=config)


def _with(table: Table, **info: Any) -> Table:
    return Table(table.rows, table.info.model_copy(update=info), table.labels, table.columns)


def _need_datasets(what: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{what} needs the datasets package: pip install 'loopwright[data]'"
        ) from None
    return datasets


def _disk(path: Path, split: str | None) -> Table:
    datasets = _need_datasets(f"the save_to_disk folder {path}")
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise _cannot(path, "not a save_to_disk folder", exc) from None
    ds, chosen = _one_split(ds, split, str(path))
    table = _table(ds.to_list(), None, "disk", path, split=chosen, columns=list(ds.column_names))
    return _with(table, revision=getattr(ds, "_fingerprint", None))


def _one_split(ds: Any, split: str | None, where: str) -> tuple[Any, str | None]:
    """A Dataset from a Dataset or DatasetDict, and the split's name."""
    if hasattr(ds, "column_names") and not isinstance(ds.column_names, dict):
        return ds, split or (str(ds.split) if getattr(ds, "split", None) else None)
    chosen = pick_split(sorted(ds), split, where)
    return ds[chosen], chosen


# -- the hub ---------------------------------------------------------------------------------
def offline() -> bool:
    """Whether the hub is off (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` set true)."""
    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub(name: str, config: str | None, split: str | None, revision: str | None) -> Table:
    datasets = _need_datasets(f"the hub dataset {name}")
    where = f"hf:{name}" + (f" ({config})" if config else "")
    try:
        ds = datasets.load_dataset(name, config, split=split, revision=revision)
    except Exception as exc:  # network, not found, no such config or split, a script dataset
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = (
            "offline (HF_HUB_OFFLINE): load it once online to fill the cache, or give a local "
            "copy (a save_to_disk folder, parquet or JSONL)"
            if offline()
            else "no network? set HF_HUB_OFFLINE=1 to read the cache, or give a local copy "
            "(a save_to_disk folder, parquet or JSONL)"
        )
        raise UserError(f"cannot load {where}: {why[:300]}; {hint}") from None
    ds, chosen = _one_split(ds, split, where)
    rows = ds.to_list()
    info = SourceInfo(
        kind="hub",
        location=name,
        config=config,
        split=chosen,
        revision=revision or _resolved_revision(ds),
        rows_sha256=rows_sha256(rows),
    )
    labels = [f"{where} row {i}" for i in range(len(rows))]
    return Table(rows, info, labels, list(ds.column_names))


def _resolved_revision(ds: Any) -> str | None:
    """The hub commit a loaded dataset came from (a 40-hex folder of its cache path), else
    its fingerprint."""
    for f in getattr(ds, "cache_files", None) or []:
        for part in Path(str(f.get("filename", ""))).parts:
            if re.fullmatch(r"[0-9a-f]{40}", part):
                return part
    fingerprint = getattr(ds, "_fingerprint", None)
    return str(fingerprint) if fingerprint else None
