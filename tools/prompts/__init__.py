"""Prompt templates live in TOML files beside the module that owns them, not in code.

``Templates(package)`` reads ``<name>.toml`` files of a package; tools' own prompts (the
judge's) are here, the loops' beside ``loopwright.loops.prompts``.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib.resources import files
from typing import Any


@cache
def _load(package: str, name: str) -> dict[str, Any]:
    return tomllib.loads(files(package).joinpath(f"{name}.toml").read_text(encoding="utf-8"))


class Templates:
    """The prompt files of one package: ``load(name)`` and ``render(name, key, **fields)``."""

    def __init__(self, package: str) -> None:
        self.package = package

    def load(self, name: str) -> dict[str, Any]:
        """The templates of ``<name>.toml`` as a dict of strings."""
        return _load(self.package, name)

    def render(self, name: str, key: str, **fields: Any) -> str:
        return str(self.load(name)[key]).format(**fields).strip()


_TOOLS = Templates(__name__)
load = _TOOLS.load
render = _TOOLS.render
