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
    verifier: str = Field(
        "", description="Who judged; a function verifier's or grader's name is filled in."
    )
    version: str = Field("", description="Its version; filled in like ``verifier``.")
    latency_s: float = 0.0
    details: dict[str, Any] = Field(
        default_factory=dict, description="Verifier-specific facts, stored in verdicts.details."
    )
