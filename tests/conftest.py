"""Shared fixtures. Keep this small: module-specific helpers belong in the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from loopwright.traces.store import TraceStore
from loopwright.traces.writer import TraceWriter

_PAID_KEYS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
)


@pytest.fixture(autouse=True)
def _no_paid_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a paid provider: unset the keys that would let litellm try."""
    for key in _PAID_KEYS:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TraceStore]:
    """A fresh trace store in a temporary DuckDB file."""
    s = TraceStore(tmp_path / "t.duckdb")
    yield s
    s.close()


@pytest.fixture
def writer(store: TraceStore) -> Iterator[TraceWriter]:
    """A writer on ``store``; closed (and any writer failure surfaced) at teardown."""
    w = TraceWriter(store)
    yield w
    w.close()
