"""Budgets for tokens, calls, dollars and wall time, checked before every model call."""

from __future__ import annotations

import threading
import time

from loopwright.loops.errors import BudgetExhausted
from pydantic import BaseModel, ConfigDict, Field


class BudgetLimits(BaseModel):
    """Limits; ``None`` means unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: int | None = Field(None, gt=0, description="Prompt + completion tokens.")
    calls: int | None = Field(None, gt=0, description="Model samples (n=4 counts four).")
    usd: float | None = Field(None, gt=0, description="Dollars, from litellm's cost map.")
    seconds: float | None = Field(None, gt=0, description="Wall-clock seconds since start.")


class Budget:
    """Spend counters with limits. A child budget also charges its parent (task -> run)."""

    def __init__(self, limits: BudgetLimits | None = None, parent: Budget | None = None) -> None:
        self.limits = limits or BudgetLimits()
        self.parent = parent
        self.tokens = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.calls = 0
        self.usd = 0.0
        self.pending = 0  # calls reserved by requests in flight, not yet charged
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def exhausted_reason(self, calls: int = 1) -> str | None:
        """Why the next request (of ``calls`` samples) would break a limit, or None."""
        return self._own_reason(calls) or (
            self.parent.exhausted_reason(calls) if self.parent else None
        )

    def _own_reason(self, calls: int) -> str | None:
        lim = self.limits
        if lim.tokens is not None and self.tokens >= lim.tokens:
            return f"token budget of {lim.tokens} spent"
        if lim.calls is not None and self.calls + self.pending + calls > lim.calls:
            return f"call budget of {lim.calls} spent"
        if lim.usd is not None and self.usd >= lim.usd:
            return f"dollar budget of {lim.usd} spent"
        if lim.seconds is not None and time.monotonic() - self.started >= lim.seconds:
            return f"time budget of {lim.seconds}s spent"
        return None

    def calls_left(self) -> int | None:
        """Samples the tightest call limit (this budget or a parent) still allows; None if none."""
        left: int | None = None
        budget: Budget | None = self
        while budget is not None:
            room = budget._calls_room()
            if room is not None:
                left = room if left is None else min(left, room)
            budget = budget.parent
        return left

    def _calls_room(self) -> int | None:
        """Samples this budget's own call limit still allows; None if it has none."""
        if self.limits.calls is None:
            return None
        return self.limits.calls - self.calls - self.pending

    def check(self, calls: int = 1) -> None:
        """Raise BudgetExhausted if the next request does not fit."""
        reason = self.exhausted_reason(calls)
        if reason:
            raise BudgetExhausted(reason)

    def reserve(self, calls: int) -> None:
        """Check that ``calls`` more fit here and in every parent, and hold them until
        :meth:`release`; raises BudgetExhausted (holding nothing) if they do not."""
        self._hold(calls)
        if self.parent is not None:
            try:
                self.parent.reserve(calls)
            except BudgetExhausted:
                self._hold(-calls)
                raise

    async def areserve(self, calls: int) -> None:
        """:meth:`reserve` for callers on an event loop: a parent may answer asynchronously
        (a run budget that Ray workers share lives in its own process)."""
        self._hold(calls)
        if self.parent is not None:
            try:
                await self.parent.areserve(calls)
            except BaseException:
                self._hold(-calls)
                raise

    def _hold(self, calls: int) -> None:
        """Hold ``calls`` more here if they fit (a negative count gives them back)."""
        with self._lock:
            reason = self._own_reason(calls) if calls > 0 else None
            if reason:
                raise BudgetExhausted(reason)
            self.pending += calls

    def release(self, calls: int) -> None:
        """Give back a reservation (after the calls were charged, or failed)."""
        self._hold(-calls)
        if self.parent is not None:
            self.parent.release(calls)

    def charge(self, prompt_tokens: int, completion_tokens: int, calls: int, usd: float) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.tokens += prompt_tokens + completion_tokens
            self.calls += calls
            self.usd += usd
        if self.parent:
            self.parent.charge(prompt_tokens, completion_tokens, calls, usd)
