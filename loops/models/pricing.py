"""Token prices from litellm's model price table, read as data: pricing a model reached
without litellm (the direct http transport) does not import litellm.

The table is the JSON file litellm ships (``model_prices_and_context_window_backup.json``),
read once, on the first price asked for. A model missing from it, or no litellm installed,
costs "unknown", recorded as 0.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

TABLE_FILE = "model_prices_and_context_window_backup.json"


@functools.cache
def _table() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return {}
    for folder in spec.submodule_search_locations:
        path = Path(folder) / TABLE_FILE
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
    return {}


@functools.cache
def price_per_token(model: str) -> tuple[float, float]:
    """USD per prompt token and per completion token of ``model`` (a litellm model string
    such as ``openai/gpt-4o-mini``); (0, 0) when the table does not price it."""
    table = _table()
    provider, _, bare = model.partition("/")
    for key in (model, bare):
        entry = table.get(key) if key else None
        if not isinstance(entry, dict):
            continue
        if key == bare and entry.get("litellm_provider") not in (provider, None):
            continue
        try:
            return (
                float(entry.get("input_cost_per_token") or 0.0),
                float(entry.get("output_cost_per_token") or 0.0),
            )
        except (TypeError, ValueError):
            return (0.0, 0.0)
    return (0.0, 0.0)


def token_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """What ``prompt_tokens`` in and ``completion_tokens`` out cost on ``model``, in USD."""
    prompt, completion = price_per_token(model)
    return prompt_tokens * prompt + completion_tokens * completion
