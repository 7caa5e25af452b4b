"""Fixed-window rate limiter, one counter per API key, with an injectable wall clock.

Windows are aligned to the Unix epoch (``[k*W, (k+1)*W)``, the "top of the hour" variant of
the docs when W = 3600), so the reset time reported in ``X-RateLimit-Reset`` — whole epoch
seconds — is exact: a call made at or after that second always lands in a fresh window.

Every call counts, including calls answered 429 (the counter keeps growing past the limit,
``remaining`` stays 0). Pure logic: no I/O, no asyncio.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Outcome of one call: whether it may proceed and what the headers say."""

    allowed: bool
    limit: int
    used: int
    remaining: int
    reset: int  # epoch seconds when the current window ends

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


class FixedWindowLimiter:
    """``calls`` per ``window_seconds`` per key; ``calls=None`` means unlimited."""

    def __init__(
        self,
        calls: int | None,
        window_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_seconds < 1:
            raise ValueError("window_seconds must be >= 1")
        self.calls = calls
        self.window_seconds = window_seconds
        self._clock = clock
        self._windows: dict[str, tuple[int, int]] = {}  # key -> (window index, used)

    def hit(self, key: str, now: float | None = None) -> RateDecision | None:
        """Count one call for ``key`` at ``now`` (default: the clock); None when unlimited."""
        if self.calls is None:
            return None
        index = math.floor((self._clock() if now is None else now) / self.window_seconds)
        current, used = self._windows.get(key, (index, 0))
        if current != index:
            used = 0
        used += 1
        self._windows[key] = (index, used)
        return RateDecision(
            allowed=used <= self.calls,
            limit=self.calls,
            used=used,
            remaining=max(self.calls - used, 0),
            reset=(index + 1) * self.window_seconds,
        )

    def peek(self, key: str) -> RateDecision | None:
        """The current state for ``key`` without counting a call."""
        if self.calls is None:
            return None
        index = math.floor(self._clock() / self.window_seconds)
        current, used = self._windows.get(key, (index, 0))
        if current != index:
            used = 0
        return RateDecision(
            allowed=used < self.calls,
            limit=self.calls,
            used=used,
            remaining=max(self.calls - used, 0),
            reset=(index + 1) * self.window_seconds,
        )

    def refund(self, key: str) -> None:
        """Give one call back to ``key``'s current window (never below zero)."""
        if key in self._windows:
            index, used = self._windows[key]
            self._windows[key] = (index, max(used - 1, 0))

    def reset(self) -> None:
        self._windows.clear()
