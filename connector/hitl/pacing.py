"""When the connector may call HITL.sh: the API pacer and the circuit breaker.

Owns: the per-key call budget (``ApiPacer``), the shared "no call before T" barrier that
``Retry-After`` and ``X-RateLimit-Reset`` set, and the outage switch (``CircuitBreaker``) whose
listeners pause and resume Kafka partitions. Not here: HTTP, parsing (``retry``), and retry
decisions (``client``). All time comes from an injectable ``Clock`` so tests run in fake time.

``ApiPacer`` modes, chosen by what the server has told us so far:

* nothing heard yet, or the last known window has ended: one call in flight at a time (a
  probe) until a response tells us the window's ``remaining`` and ``reset``;
* headers known: grant while ``remaining − in_flight > 0``. ``remaining`` is the minimum seen
  for the window (responses arrive out of order), and every call still in flight is assumed
  not yet counted in it. Exhausted → wait for the window end, then probe again. A continuous
  refill is never assumed: against a fixed window it would spend the budget twice;
* the server sends no rate-limit headers: a sliding log of the configured ``calls`` per
  ``window_seconds``, each slot held from send until ``window_seconds`` after the response.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from connector.config import HitlSettings
from connector.errors import HitlUnavailableError
from connector.hitl.retry import RateLimitInfo

log = logging.getLogger(__name__)

CircuitState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class Clock:
    """Monotonic and wall clocks plus the matching sleep; tests pass fake ones."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


# Two reset stamps closer than this are the same window (servers round differently).
_SAME_WINDOW_SECONDS = 1.0
_MAX_RESET_MARGIN = 5.0


class _Waiter:
    __slots__ = ("woken",)

    def __init__(self) -> None:
        self.woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class ApiPacer:
    """Grants permits for API calls; see the module docstring for the algorithm.

    Every ``acquire()`` that returned True must be matched by exactly one ``release()``.
    """

    def __init__(
        self,
        calls: int,
        window_seconds: float,
        *,
        max_in_flight: int = 1024,
        reset_margin: float = 0.1,
        clock: Clock | None = None,
    ) -> None:
        if calls < 1 or window_seconds <= 0 or max_in_flight < 1:
            raise ValueError("calls, window_seconds and max_in_flight must be positive")
        self.clock = clock or Clock()
        self._calls = calls
        self._window = window_seconds
        self._max_in_flight = max_in_flight
        self._margin = reset_margin
        self._in_flight = 0
        self._barrier = float("-inf")
        self._degraded = False
        self._responded = False
        self._headers_seen = False
        self._probe_out = False
        self._remaining: int | None = None
        self._window_end: float | None = None  # monotonic
        self._reset_wall: float | None = None  # the window's id, as the server wrote it
        self._slots: deque[float] = deque()  # sliding-log expiry times (monotonic)
        self._queue: deque[_Waiter] = deque()

    @classmethod
    def from_settings(cls, settings: HitlSettings, *, clock: Clock | None = None) -> ApiPacer:
        return cls(
            settings.rate_limit_calls,
            settings.rate_limit_window_seconds,
            max_in_flight=settings.max_in_flight,
            clock=clock,
        )

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def remaining(self) -> int | None:
        """The server's last known ``remaining`` for the current window, if any."""
        return self._remaining

    def _decide(self, now: float) -> float | Literal[True] | None:
        """True: grant now. A float: not before that monotonic time. None: await a release."""
        if now < self._barrier:
            return self._barrier
        if self._in_flight >= self._max_in_flight:
            return None
        if self._degraded and self._in_flight > 0:
            return None  # after a failure, one call at a time until something succeeds
        if self._headers_seen:
            if self._window_end is not None and now >= self._window_end + self._margin:
                # The window is over; its remaining means nothing now. Probe the new one.
                self._remaining = None
                self._window_end = None
            if self._remaining is None:
                return True if self._in_flight == 0 else None
            if self._remaining - self._in_flight > 0:
                return True
            if self._window_end is None:
                return None
            return self._window_end + self._margin
        if not self._responded:
            return True if self._in_flight == 0 else None
        while self._slots and self._slots[0] <= now:
            self._slots.popleft()
        if self._in_flight + len(self._slots) < self._calls:
            return True
        return self._slots[0] if self._slots else None

    def blocked_until(self) -> float | None:
        """Monotonic time before which no permit can be granted, or None if not time-blocked."""
        decision = self._decide(self.clock.monotonic())
        return None if decision is True else decision

    async def acquire(self, deadline: float | None = None) -> bool:
        """Wait for a permit, first come first served; False as soon as one cannot be had
        before ``deadline`` (monotonic), without sleeping past it."""
        if not self._queue and self._decide(self.clock.monotonic()) is True:
            # Nobody waiting and a permit free: the common case takes no waiter and no future.
            self._grant()
            return True
        me = _Waiter()
        self._queue.append(me)
        try:
            while True:
                now = self.clock.monotonic()
                decision = self._decide(now)
                head = self._queue[0] is me
                if decision is True and head:
                    self._queue.popleft()
                    self._grant()
                    return True
                # Nobody behind the head gets a permit before the head does.
                at = None if decision is True else decision  # None: only a release helps
                if deadline is not None and (now >= deadline or (at is not None and at > deadline)):
                    return False
                wake = at if head else None
                if deadline is not None:
                    wake = deadline if wake is None else min(wake, deadline)
                me.woken = asyncio.get_running_loop().create_future()
                await self._sleep(me.woken, None if wake is None else wake - now)
        finally:
            if me in self._queue:
                was_head = self._queue[0] is me
                self._queue.remove(me)
                if was_head:
                    self._wake_head()

    def _grant(self) -> None:
        # A probe goes out alone, so its answer is recognisable in release().
        self._probe_out = not self._responded or (self._headers_seen and self._remaining is None)
        self._in_flight += 1
        self._wake_head()  # the next in line may get a permit too

    async def _sleep(self, woken: asyncio.Future[None], delay: float | None) -> None:
        """Until ``woken`` resolves or ``delay`` passes, whichever is first."""
        if delay is None:
            await woken
            return
        timer = asyncio.ensure_future(self.clock.sleep(max(0.0, delay)))
        try:
            await asyncio.wait((woken, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()

    def _wake_head(self) -> None:
        if self._queue and not self._queue[0].woken.done():
            self._queue[0].woken.set_result(None)

    def _notify(self) -> None:
        # Only the head re-checks; each grant wakes the next, so a change costs O(grants).
        self._wake_head()

    def hold_until(self, when: float) -> None:
        """Shared barrier: no permit before monotonic ``when`` (Retry-After, 429 reset)."""
        if when > self._barrier:
            self._barrier = float(when)
            self._notify()

    def release(
        self,
        info: RateLimitInfo | None = None,
        *,
        retry_at: float | None = None,
        responded: bool = True,
        failed: bool = False,
        sent: bool = True,
    ) -> None:
        """Return a permit and learn from its outcome.

        ``info``: the response's rate-limit headers. ``retry_at``: monotonic time before which
        nobody may call. ``responded``: an HTTP response arrived (not a transport error).
        ``failed``: a retriable failure (5xx, 408, transport). ``sent``: False when the call
        never left (then it used no budget).
        """
        now = self.clock.monotonic()
        was_probe, self._probe_out = self._probe_out, False
        self._in_flight = max(0, self._in_flight - 1)
        if sent:
            self._slots.append(now + self._window)
        if responded:
            self._responded = True
        if info is not None:
            self._learn(info, now, was_probe)
        elif responded and not failed and self._headers_seen:
            self._headers_seen = False  # the server stopped sending headers: use the config
        if failed:
            self._degraded = True
        elif responded:
            self._degraded = False
        if retry_at is not None and retry_at > self._barrier:
            self._barrier = float(retry_at)
        self._notify()

    def _learn(self, info: RateLimitInfo, now: float, was_probe: bool) -> None:
        if info.remaining is None:
            return
        self._headers_seen = True
        wall = self.clock.wall()
        if info.reset_at is None:
            # No reset stamp: a rising remaining means a new window of unknown end.
            if self._remaining is None or info.remaining > self._remaining:
                self._remaining = info.remaining
                self._window_end = now + self._window
            else:
                self._remaining = min(self._remaining, info.remaining)
            return
        end = now + (info.reset_at - wall)
        if self._reset_wall is None or info.reset_at > self._reset_wall + _SAME_WINDOW_SECONDS:
            self._reset_wall = info.reset_at
            self._remaining = info.remaining
            self._window_end = end
        elif info.reset_at >= self._reset_wall - _SAME_WINDOW_SECONDS:
            if self._remaining is None and was_probe:
                # Our rollover probe was counted in the old window: our clock is ahead of the
                # server's. Widen the margin so the next rollover waits for it. (A late answer
                # to a call sent before the rollover proves nothing and is ignored.)
                self._margin = min(_MAX_RESET_MARGIN, self._margin * 2 + 0.25)
                log.info("HITL rate-limit window still open past reset; margin %.2fs", self._margin)
                self._remaining = info.remaining
                self._window_end = end
            elif self._remaining is not None:
                self._remaining = min(self._remaining, info.remaining)
        # An older window's late response tells us nothing about the current one.


class CircuitBreaker:
    """closed → (``failure_threshold`` consecutive failures) → open → (``open_seconds``) →
    half_open: one probe call; success closes, failure re-opens.

    Only outage signals count as failures (5xx, 408, transport errors); a 429 or a 4xx proves
    the service is up. Listeners (``on_change``) run synchronously on every state change.
    """

    def __init__(
        self,
        failure_threshold: int,
        open_seconds: float,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self._threshold = failure_threshold
        self._open_seconds = open_seconds
        self._state: CircuitState = "closed"
        self._failures = 0
        self._open_until = 0.0
        self._probe_out = False
        self._listeners: list[Callable[[CircuitState], object]] = []

    @classmethod
    def from_settings(cls, settings: HitlSettings, *, clock: Clock | None = None) -> CircuitBreaker:
        return cls(settings.circuit_failure_threshold, settings.circuit_open_seconds, clock=clock)

    @property
    def state(self) -> CircuitState:
        if self._state == "open" and self.clock.monotonic() >= self._open_until:
            self._set("half_open")
        return self._state

    @property
    def open_until(self) -> float | None:
        """Monotonic time the open period ends, while open."""
        return self._open_until if self._state == "open" else None

    def on_change(self, listener: Callable[[CircuitState], object]) -> None:
        self._listeners.append(listener)

    def _set(self, state: CircuitState) -> None:
        if state == self._state:
            return
        self._state = state
        log.warning("HITL circuit %s", state)
        for listener in self._listeners:
            try:
                listener(state)
            except Exception:  # a listener's bug must not break the call path
                log.exception("HITL circuit listener failed")

    def _unavailable(self, retry_after: float) -> HitlUnavailableError:
        return HitlUnavailableError(
            "HITL.sh circuit is open after repeated failures; pause input and retry after "
            f"{retry_after:.1f}s",
            retry_after=retry_after,
        )

    def check(self) -> None:
        """Raise ``HitlUnavailableError`` if a call may not start now (no side effects)."""
        state = self.state
        if state == "open":
            raise self._unavailable(max(0.0, self._open_until - self.clock.monotonic()))
        if state == "half_open" and self._probe_out:
            raise self._unavailable(1.0)

    def before_call(self) -> bool:
        """Claim the right to call; True when this call is the half-open probe."""
        self.check()
        if self._state == "half_open":
            self._probe_out = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._probe_out = False
        self._set("closed")

    def record_failure(self, retry_after: float | None = None) -> None:
        self._failures += 1
        was_probe, self._probe_out = self._probe_out, False
        if was_probe or self._failures >= self._threshold:
            hold = max(self._open_seconds, retry_after or 0.0)
            self._open_until = self.clock.monotonic() + hold
            self._set("open")

    def abandon(self, probe: bool) -> None:
        """The call never got an answer (cancelled); let another caller probe."""
        if probe:
            self._probe_out = False
