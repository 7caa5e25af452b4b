"""Commit pipelining: a role prepares its next batch while the previous one commits.

A role (submitter, resolver) stages each processed batch here; one background task commits
what is staged, back to back, each time everything staged since its last commit as one
transaction (``Checkpoint``: outputs + offsets, atomically). So a transaction's broker round
trips overlap the next batch's HTTP calls or joins instead of delaying them, and under load
transactions grow instead of queueing.

With a ``commit_interval`` (the submitter's ``batch.commit_interval_ms``), a transaction starts
at most that often, like Kafka Streams' ``commit.interval.ms`` under exactly-once: batches
processed meanwhile join the next one. Each transaction costs the broker fixed work (markers
on every partition it touched, the transaction log) and the role a few round trips, so fewer,
larger transactions cut CPU per event on both sides; the interval is cut short when
``max_staged`` batches wait or someone flushes (a rebalance, a stop).

Order is kept: batches commit in the order staged, and a later batch's offsets replace an
earlier one's for the same partition. When a transaction fails, the pipeline stops committing
and holds the failure until the role takes it (``take_failure``): the role then rewinds every
batch not committed (the failed ones, those staged after them, and the one in its hands),
exactly as it would after a failed commit without pipelining.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from connector.kafka.checkpoint import Checkpoint, CheckpointError
from connector.records import OutRecord

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Staged:
    """One processed batch waiting for its transaction."""

    outputs: Sequence[OutRecord]
    offsets: Mapping[TopicPartition, int]
    rewind: Mapping[TopicPartition, int]  # the batch's first offset per partition
    meta: Any = None  # the role's own bookkeeping, handed back when committed
    size: int = 0  # bytes of input the batch holds (bounds what waits for a commit)


@dataclass(slots=True)
class Failure:
    """Batches that will not commit, and why."""

    batches: list[Staged]
    error: CheckpointError

    def rewind_to(
        self, extra: Mapping[TopicPartition, int] | None = None
    ) -> dict[TopicPartition, int]:
        """The earliest first offset per partition over these batches (and ``extra``)."""
        out: dict[TopicPartition, int] = dict(extra or {})
        for staged in self.batches:
            for tp, offset in staged.rewind.items():
                if tp not in out or offset < out[tp]:
                    out[tp] = offset
        return out


class CommitPipeline:
    """Commits staged batches in order in one background task; at most ``max_staged`` batches
    and ``max_staged_bytes`` of input wait (back-pressure beyond)."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        *,
        on_committed: Callable[[list[Staged]], None],
        max_staged: int = 4,
        max_staged_bytes: int = 1 << 62,
        commit_interval: float = 0.0,
    ) -> None:
        self._checkpoint = checkpoint
        self._on_committed = on_committed
        self._max_staged = max_staged
        self._max_bytes = max_staged_bytes
        self._staged_bytes = 0
        self._interval = commit_interval
        self._last_start = float("-inf")  # loop time the last transaction started
        self._now = asyncio.Event()  # cut the interval short: staged is full, or a flush
        self._flushing = 0
        self._staged: list[Staged] = []
        self._in_flight: list[Staged] = []
        self._failure: Failure | None = None
        self._wakeup = asyncio.Event()
        self._changed = asyncio.Event()  # set when a transaction starts (room) and ends
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="commit-pipeline")

    async def stop(self) -> None:
        """Cancel the committer; what was staged and not committed is simply not committed."""
        task, self._task = self._task, None
        if task is None:
            return
        if task.done():
            if not task.cancelled():
                task.exception()  # an error of the committer was raised to the role already
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @property
    def idle(self) -> bool:
        return not self._staged and not self._in_flight

    def stage(self, staged: Staged) -> None:
        """Queue a batch for the next transaction (the role takes any failure first)."""
        assert self._failure is None, "take_failure() before staging more"
        self._staged.append(staged)
        self._staged_bytes += staged.size
        if self._full:
            self._now.set()
        self._wakeup.set()

    def take_failure(self) -> Failure | None:
        """The failed batches plus everything staged after them; committing resumes."""
        failure, self._failure = self._failure, None
        if failure is not None:
            failure.batches.extend(self._staged)
            self._staged, self._staged_bytes = [], 0
        return failure

    async def wait_room(self) -> None:
        """Back-pressure: return once fewer than ``max_staged`` batches (and bytes) wait."""
        while self._full and self._failure is None:
            await self._wait_change()

    async def flush(self) -> Failure | None:
        """Wait until everything staged is committed; the failure, if one happened."""
        self._flushing += 1
        self._now.set()
        try:
            while not self.idle and self._failure is None:
                await self._wait_change()
        finally:
            self._flushing -= 1
        return self.take_failure()

    async def _wait_change(self) -> None:
        self._changed.clear()
        task = self._task
        if task is None or task.done():
            if task is not None:
                task.result()  # the committer died of an unexpected error: surface it
            raise RuntimeError("commit pipeline is not running")
        waiter = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done():
            task.result()

    def check(self) -> None:
        """Raise the committer's unexpected error, if it died of one."""
        task = self._task
        if task is not None and task.done() and not task.cancelled():
            task.result()

    @property
    def _full(self) -> bool:
        return len(self._staged) >= self._max_staged or self._staged_bytes >= self._max_bytes

    async def _hold(self) -> None:
        """Wait out the rest of the commit interval (unless cut short)."""
        loop = asyncio.get_running_loop()
        delay = self._last_start + self._interval - loop.time()
        if delay > 0 and not self._flushing and not self._full:
            self._now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), delay)
        self._last_start = loop.time()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._staged and self._failure is None:
                if self._interval > 0:
                    await self._hold()
                group, self._staged, self._staged_bytes = self._staged, [], 0
                self._in_flight = group
                self._changed.set()  # room again: a role held back by wait_room goes on now
                try:
                    await self._commit(group)
                except CheckpointError as exc:
                    self._failure = Failure(group, exc)
                else:
                    self._on_committed(group)
                finally:
                    self._in_flight = []
                    self._changed.set()

    async def _commit(self, group: list[Staged]) -> None:
        outputs: list[OutRecord] = []
        offsets: dict[TopicPartition, int] = {}
        for staged in group:
            outputs.extend(staged.outputs)
            offsets.update(staged.offsets)  # later batches go further on the same partition
        await self._checkpoint.commit(outputs, offsets)
