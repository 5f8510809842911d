"""Prompt templates live in TOML files beside this module, not in code."""

from __future__ import annotations

import tomllib
from functools import cache
from importlib.resources import files
from typing import Any


@cache
def load(name: str) -> dict[str, Any]:
    """The templates of ``<name>.toml`` as a dict of strings."""
    return tomllib.loads(files(__name__).joinpath(f"{name}.toml").read_text(encoding="utf-8"))


def render(name: str, key: str, **fields: Any) -> str:
    return str(load(name)[key]).format(**fields).strip()
