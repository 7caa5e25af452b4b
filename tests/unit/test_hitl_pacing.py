"""ApiPacer and CircuitBreaker, in virtual time (an event loop whose clock jumps to the next timer).

``run_virtual`` is also used by ``test_hitl_client``: hours of pacing run in milliseconds.
"""

from __future__ import annotations

import asyncio
import math
import random
import selectors
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import pytest

from connector.errors import HitlUnavailableError
from connector.hitl.pacing import ApiPacer, CircuitBreaker, Clock
from connector.hitl.retry import RateLimitInfo, parse_rate_limit

T = TypeVar("T")
WALL0 = 1_700_000_000.0
HORIZON = 100 * 86_400.0  # no scenario here needs more virtual time than this


class _VirtualSelector:
    """Instead of blocking for ``timeout``, advance the loop's clock by it."""

    def __init__(self, real: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._real = real
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            events = self._real.select(5.0)
            if not events:
                raise RuntimeError("virtual-time loop has nothing scheduled: deadlock")
            return events
        if timeout > 0:
            self._loop.now += timeout
            if self._loop.now > HORIZON:
                raise RuntimeError("virtual time passed a day·100: the code under test spins")
        return self._real.select(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        real = cast(selectors.BaseSelector, self._selector)  # type: ignore[has-type]
        self._selector = _VirtualSelector(real, self)

    def time(self) -> float:
        return self.now


def run_virtual(main: Callable[[Clock], Awaitable[T]], wall0: float = WALL0) -> T:
    """Run ``main(clock)`` on a fresh virtual-time loop; ``clock.wall()`` starts at ``wall0``."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        loop = runner.get_loop()
        clock = Clock(monotonic=loop.time, wall=lambda: wall0 + loop.time(), sleep=asyncio.sleep)

        async def wrapper() -> T:
            return await main(clock)

        return runner.run(wrapper())


def info(remaining: int, reset_at: float | None, limit: int = 20) -> RateLimitInfo:
    return RateLimitInfo(limit=limit, remaining=remaining, reset_at=reset_at)


def test_virtual_time_sleeps_without_waiting() -> None:
    async def main(clock: Clock) -> float:
        await clock.sleep(7200)
        return clock.monotonic()

    assert run_virtual(main) == 7200


def test_only_one_probe_before_the_first_response() -> None:
    async def main(clock: Clock) -> None:
        pacer = ApiPacer(20, 10, clock=clock)
        assert await pacer.acquire(deadline=clock.monotonic() + 1)
        assert not await pacer.acquire(deadline=clock.monotonic() + 1)
        pacer.release(info(19, clock.wall() + 10))
        for _ in range(19):
            assert await pacer.acquire(deadline=clock.monotonic())
        assert pacer.in_flight == 19
        assert not await pacer.acquire(deadline=clock.monotonic() + 1)

    run_virtual(main)


def test_in_flight_calls_count_against_remaining() -> None:
    async def main(clock: Clock) -> None:
        pacer = ApiPacer(20, 10, clock=clock)
        reset = clock.wall() + 10
        await pacer.acquire()
        pacer.release(info(3, reset))
        for _ in range(3):
            assert await pacer.acquire(deadline=0)
        assert not await pacer.acquire(deadline=0)
        # A late answer counted before the others: remaining 2 (not lower than what we assume).
        pacer.release(info(2, reset))
        assert not await pacer.acquire(deadline=0)  # 2 remaining − 2 in flight
        pacer.release(info(0, reset))
        pacer.release(info(1, reset))
        assert pacer.remaining == 0
        assert pacer.blocked_until() == pytest.approx(10 + 0.1)

    run_virtual(main)


def test_exhausted_window_waits_for_reset_then_probes_once() -> None:
    async def main(clock: Clock) -> None:
        pacer = ApiPacer(20, 10, clock=clock)
        await pacer.acquire()
        pacer.release(info(0, clock.wall() + 4))
        assert await pacer.acquire()
        assert clock.monotonic() >= 4
        # The new window's budget is unknown until this probe answers.
        assert not await pacer.acquire(deadline=clock.monotonic() + 5)
        pacer.release(info(19, clock.wall() + 10))
        assert await pacer.acquire(deadline=clock.monotonic())

    run_virtual(main)


def test_deadline_before_the_next_permit_returns_false_without_sleeping() -> None:
    async def main(clock: Clock) -> None:
        pacer = ApiPacer(20, 10, clock=clock)
        await pacer.acquire()
        pacer.release(info(0, clock.wall() + 30))
        assert not await pacer.acquire(deadline=clock.monotonic() + 10)
        assert clock.monotonic() == 0

    run_virtual(main)


def test_barrier_holds_every_caller_until_its_time() -> None:
    async def main(clock: Clock) -> None:
        pacer = ApiPacer(1000, 10, clock=clock)
        await pacer.acquire()
        pacer.release(None, retry_at=clock.monotonic() + 5)
        assert pacer.blocked_until() == 5
        assert await pacer.acquire()
        assert clock.monotonic() == 5

    run_virtual(main)


def test_waiters_wake_when_the_barrier_moves() -> None:
    async def main(clock: Clock) -> list[float]:
        pacer = ApiPacer(1000, 10, clock=clock)
        pacer.hold_until(3)
        granted: list[float] = []

        async def caller() -> None:
            await pacer.acquire()
            granted.append(clock.monotonic())

        task = asyncio.create_task(caller())
        await clock.sleep(1)
        pacer.hold_until(8)
        await task
        return granted

    assert run_virtual(main) == [8]


def test_without_rate_limit_headers_a_sliding_log_of_the_configured_limit() -> None:
    async def main(clock: Clock) -> None:
        pacer = ApiPacer(3, 10, clock=clock)
        await pacer.acquire()
        pacer.release(None)  # answered, no headers: the configured limit applies
        assert await pacer.acquire(deadline=0)
        assert await pacer.acquire(deadline=0)
        assert not await pacer.acquire(deadline=5)
        pacer.release(None)
        pacer.release(None)
        assert await pacer.acquire()
        assert clock.monotonic() == 10  # the first slot frees 10 s after its answer

    run_virtual(main)


def test_after_a_failure_one_call_at_a_time_until_a_success() -> None:
    async def main(clock: Clock) -> None:
        pacer = ApiPacer(1000, 10, clock=clock)
        await pacer.acquire()
        pacer.release(None)
        await pacer.acquire()
        pacer.release(None, failed=True, responded=False)
        assert await pacer.acquire(deadline=0)
        assert not await pacer.acquire(deadline=0)
        pacer.release(None)
        assert await pacer.acquire(deadline=0)
        assert await pacer.acquire(deadline=0)

    run_virtual(main)


def test_server_clock_behind_ours_widens_the_reset_margin() -> None:
    async def main(clock: Clock) -> None:
        pacer = ApiPacer(20, 10, clock=clock, reset_margin=0.1)
        reset = clock.wall() + 2
        await pacer.acquire()
        pacer.release(info(0, reset))
        assert await pacer.acquire()  # the rollover probe at 2.1
        pacer.release(info(0, reset))  # …but the server still counts in the old window
        assert await pacer.acquire()
        assert clock.monotonic() >= 2 + 0.45  # margin 0.1 → 0.45

    run_virtual(main)


def test_a_late_answer_from_the_old_window_does_not_widen_the_margin() -> None:
    async def main(clock: Clock) -> None:
        pacer = ApiPacer(20, 10, clock=clock, reset_margin=0.1)
        reset = clock.wall() + 2
        await pacer.acquire()
        pacer.release(info(5, reset))
        assert await pacer.acquire(deadline=0)  # sent in the old window…
        await clock.sleep(2.5)
        assert pacer.blocked_until() is None  # …the window rolled over meanwhile
        pacer.release(info(4, reset))  # …and its answer arrives late
        assert await pacer.acquire(deadline=clock.monotonic())  # the new window's probe
        pacer.release(info(0, reset + 10))
        assert pacer.blocked_until() == pytest.approx(12 + 0.1)

    run_virtual(main)


def test_unsent_release_uses_no_budget() -> None:
    async def main(clock: Clock) -> None:
        pacer = ApiPacer(1, 10, clock=clock)
        await pacer.acquire()
        pacer.release(None)
        assert pacer.blocked_until() == 10
        pacer = ApiPacer(1, 10, clock=clock)
        await pacer.acquire()
        pacer.release(None, sent=False)
        assert pacer.blocked_until() is None

    run_virtual(main)


def test_a_cancelled_head_waiter_passes_its_turn_on() -> None:
    async def main(clock: Clock) -> None:
        pacer = ApiPacer(1000, 10, max_in_flight=1, clock=clock)
        await pacer.acquire()
        first = asyncio.create_task(pacer.acquire())
        second = asyncio.create_task(pacer.acquire())
        await clock.sleep(1)
        first.cancel()
        await asyncio.sleep(0)
        pacer.release(None)
        assert await second
        assert first.cancelled()

    run_virtual(main)


def test_waiters_are_served_first_come_first_served() -> None:
    async def main(clock: Clock) -> list[int]:
        pacer = ApiPacer(1000, 10, max_in_flight=1, clock=clock)
        await pacer.acquire()
        order: list[int] = []

        async def caller(i: int) -> None:
            await pacer.acquire()
            order.append(i)
            await clock.sleep(0.1)
            pacer.release(None)

        tasks = [asyncio.create_task(caller(i)) for i in range(5)]
        await clock.sleep(1)
        pacer.release(None)
        await asyncio.gather(*tasks)
        return order

    assert run_virtual(main) == [0, 1, 2, 3, 4]


class FixedWindowServer:
    """``limit`` calls per ``window`` s, windows aligned to the epoch, reset = window end."""

    def __init__(self, limit: int, window: float, clock: Clock) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self.accepted: list[float] = []
        self.rejected = 0
        self._index = -1
        self._count = 0

    def hit(self) -> tuple[int, dict[str, str]]:
        now = self.clock.wall()
        index = math.floor(now / self.window)
        if index != self._index:
            self._index, self._count = index, 0
        end = (index + 1) * self.window
        if self._count >= self.limit:
            self.rejected += 1
            remaining = 0
            status = 429
        else:
            self._count += 1
            self.accepted.append(now)
            remaining = self.limit - self._count
            status = 200
        return status, {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(int(end)),
        }

    def per_window(self) -> list[int]:
        counts: dict[int, int] = {}
        for t in self.accepted:
            counts[math.floor(t / self.window)] = counts.get(math.floor(t / self.window), 0) + 1
        return [counts[k] for k in sorted(counts)]


SIM_CASES = [
    pytest.param(20, 10.0, 80, 3.7, id="20-per-10s-mid-window"),
    pytest.param(20, 10.0, 80, 9.95, id="20-per-10s-window-ending"),
    pytest.param(20, 10.0, 80, 0.0, id="20-per-10s-window-start"),
    pytest.param(100, 3600.0, 400, 1234.5, id="100-per-hour"),
]


@pytest.mark.parametrize(("limit", "window", "calls", "phase"), SIM_CASES)
def test_fixed_window_simulation_uses_the_budget_without_429(
    limit: int, window: float, calls: int, phase: float
) -> None:
    rng = random.Random(7)

    async def main(clock: Clock) -> tuple[FixedWindowServer, float]:
        server = FixedWindowServer(limit, window, clock)
        pacer = ApiPacer(limit, window, max_in_flight=32, clock=clock)
        todo = list(range(calls))

        async def worker() -> None:
            while todo:
                todo.pop()
                assert await pacer.acquire()
                await clock.sleep(rng.uniform(0.001, 0.15))  # request travels
                status, headers = server.hit()
                await clock.sleep(rng.uniform(0.001, 0.3))  # answer travels (reorders them)
                assert status == 200, f"429 at {clock.monotonic():.3f}"
                pacer.release(parse_rate_limit(headers, clock.wall()))

        await asyncio.gather(*(worker() for _ in range(32)))
        return server, clock.monotonic()

    wall0 = math.floor(WALL0 / window) * window + phase
    server, elapsed = run_virtual(main, wall0=wall0)
    assert server.rejected == 0
    assert len(server.accepted) == calls
    counts = server.per_window()
    assert all(c == limit for c in counts[1:-1]), counts  # every full window used fully
    assert calls / elapsed >= 0.9 * limit / window


def test_breaker_opens_after_threshold_and_fails_fast() -> None:
    async def main(clock: Clock) -> None:
        breaker = CircuitBreaker(3, 15, clock=clock)
        seen: list[str] = []
        breaker.on_change(seen.append)
        for _ in range(2):
            breaker.before_call()
            breaker.record_failure()
        assert seen == []
        breaker.before_call()
        breaker.record_failure(retry_after=5)
        assert seen == ["open"]
        with pytest.raises(HitlUnavailableError) as err:
            breaker.check()
        assert err.value.retry_after == pytest.approx(15)
        await clock.sleep(15)
        assert breaker.state == "half_open"
        assert breaker.before_call() is True  # the one probe
        with pytest.raises(HitlUnavailableError):
            breaker.before_call()
        breaker.record_success()
        assert seen == ["open", "half_open", "closed"]

    run_virtual(main)


def test_breaker_probe_failure_reopens_for_the_longer_of_open_and_retry_after() -> None:
    async def main(clock: Clock) -> None:
        breaker = CircuitBreaker(1, 10, clock=clock)
        breaker.before_call()
        breaker.record_failure()
        await clock.sleep(10)
        assert breaker.before_call() is True
        breaker.record_failure(retry_after=30)
        assert breaker.state == "open"
        assert breaker.open_until == pytest.approx(40)

    run_virtual(main)


def test_breaker_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(2, 10)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"


def test_breaker_abandoned_probe_lets_another_caller_probe() -> None:
    async def main(clock: Clock) -> None:
        breaker = CircuitBreaker(1, 10, clock=clock)
        breaker.record_failure()
        await clock.sleep(10)
        probe = breaker.before_call()
        breaker.abandon(probe)
        assert breaker.before_call() is True

    run_virtual(main)


def test_breaker_listener_errors_do_not_break_calls() -> None:
    breaker = CircuitBreaker(1, 10)

    def bad(state: str) -> None:
        raise ValueError(state)

    breaker.on_change(bad)
    breaker.record_failure()
    assert breaker.state == "open"
