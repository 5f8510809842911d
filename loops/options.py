"""Options shared by every pluggable part (loops, verifiers, graders).

A part with options declares them as a frozen pydantic model; a part without any uses
``NoOptions``, which refuses every key (``-o KEY=VALUE`` / ``--verifier-option`` on one is an
error naming the key, not a silent no-op).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class NoOptions(BaseModel):
    """The options of a part that takes none: any key given is refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


__all__ = ["NoOptions"]
