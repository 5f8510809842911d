"""A verifier's judgement of one response: what every check, judge and reward model returns."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Verdict(BaseModel):
    """A verifier's judgement of one response."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    score: float = Field(description="1.0 pass, 0.0 fail; partial credit where a verifier has it.")
    answer: str | None = Field(None, description="The answer the verifier extracted.")
    feedback: str = ""
    verifier: str
    version: str
    latency_s: float = 0.0
    details: dict[str, Any] = Field(
        default_factory=dict, description="Verifier-specific facts, stored in verdicts.details."
    )
