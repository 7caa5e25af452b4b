"""A heap of due callbacks run by one background task on the sandbox's event loop.

The reviewer uses one for claims, escalations, answers and timeouts; the webhook dispatcher
one for retries, injected delays and reorder hold-backs. Callbacks are plain synchronous
functions (they change state and enqueue work; they never block). Wall-clock due times, so
they line up with ``timeout_at``. Not thread-safe: call it from the owning loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

Callback = Callable[[], None]
_YIELD_EVERY = 512  # run at most this many due callbacks before letting other tasks in


class Scheduler:
    """``at(when, fn)`` runs ``fn`` at wall time ``when``; ``clear()`` forgets everything."""

    def __init__(self, clock: Callable[[], float], name: str) -> None:
        self._clock = clock
        self._name = name
        self._heap: list[tuple[float, int, Callback]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.errors = 0  # callbacks that raised (logged, then skipped)

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, when: float, fn: Callback) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), fn))
        if self._heap[0][2] is fn:  # new earliest entry: the runner must re-arm its sleep
            self._wake.set()

    def clear(self) -> None:
        self._heap.clear()
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)
            self._task.add_done_callback(self._died)

    async def stop(self) -> None:
        """Cancel the runner and forget pending entries; safe to call twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._heap.clear()
        self._wake = asyncio.Event()  # a fresh one for the next loop, if started again

    def _died(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox scheduler %s died", self._name, exc_info=task.exception())

    async def _run(self) -> None:
        heap = self._heap
        while True:
            ran = 0
            now = self._clock()
            while heap and heap[0][0] <= now:
                fn = heapq.heappop(heap)[2]
                try:
                    fn()
                except Exception:  # one bad entry must not stop the others
                    self.errors += 1
                    log.exception("sandbox scheduler %s: callback failed", self._name)
                ran += 1
                if ran % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                    now = self._clock()
            self._wake.clear()
            delay = heap[0][0] - self._clock() if heap else None
            if delay is not None and delay <= 0:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
