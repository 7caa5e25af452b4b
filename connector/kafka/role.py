"""The loop shared by the consume→produce roles (submitter, resolver), written once.

Each role owns one consumer in its group and a checkpoint with its transactional producer.
One iteration of ``run``: resume partitions whose pause is over → wait for room in the commit
pipeline → take a failed transaction, if any, and rewind → fetch (plus linger) → [batch lock]
the role's ``_process`` turns the batch into one ``Staged`` (outputs + offsets) → stage it
[unlock]. The pipeline commits staged batches while the next one is processed. The revoke
listener takes the same lock and settles the pipeline, so a partition never moves between
its processing and its commit.

A batch the policy decides whole suspends nowhere (the fetch returns buffered records), so a
role runs batch after batch until ``wait_room`` holds it, while the transaction in flight
waits for its turn: that keeps transactions large (8-9 µs CPU per event instead of 11-12 when
yielding per batch). A ``cooperative`` role yields after each batch instead, for when other
roles (the gateway's HTTP server, the resolver) share its event loop (``--role all``).

A role supplies only: ``_process`` (a batch → staged outputs), ``_rewind`` (how a failed
batch is read again), ``_count`` (metrics of a committed batch), and optionally
``_on_assigned``, ``_forget``, ``_release``, ``_after_failed_settle``, ``_start_more`` and
``_has_work``.
Closing order: the consumer first (it leaves the group, so its partitions move on), then
whatever the role adds, the checkpoint's producer last. ``close`` is safe to call twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from connector.config import KafkaSettings
from connector.kafka.checkpoint import Checkpoint
from connector.kafka.clients import make_consumer, make_transactional_producer
from connector.kafka.pipeline import CommitPipeline, Failure, Staged
from connector.metrics import Metrics

log = logging.getLogger(__name__)

Batch = dict[TopicPartition, list[Any]]
MAX_CONSECUTIVE_CHECKPOINT_FAILURES = 5
DEFAULT_PAUSE_SECONDS = 5.0
# What may wait for the commit (back-pressure beyond): room for a commit interval at the
# policy path's full rate (60k events/s x 100 ms = 12 batches of 500), memory bounded by bytes.
MAX_STAGED_BATCHES = 32
MAX_STAGED_BYTES = 64 * 1024 * 1024


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()``, surviving aiokafka's stray ``CancelledError`` (aiokafka #647).

    With the broker unreachable, a fetch task sleeps in its retry backoff; ``Fetcher.close``
    cancels it and re-raises that task's ``CancelledError`` out of ``stop()``, which then
    skips closing the client. That is not a cancellation of ours: close the client and go
    on (so the producer still gets stopped). A real cancellation of this task propagates.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("Kafka consumer stop was interrupted by aiokafka; closing its client")
        await consumer._client.close()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: TransactionalRole) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Waits for the batch in progress, and every staged one, to commit before the
        # partitions move. Anything that failed is read again by whoever gets the partition.
        owner = self._owner
        async with owner.batch_lock:
            if await owner.settle():
                await owner._release(revoked)
            for tp in revoked:
                owner._paused_until.pop(tp, None)
                owner._forget(tp)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner._on_assigned(assigned)


class TransactionalRole:
    """A consumer group member that commits each batch's outputs and offsets atomically."""

    def __init__(
        self,
        role: str,
        kafka: KafkaSettings,
        *,
        group_id: str,
        topic: str,
        metrics: Metrics | None,
        max_records: int,
        fetch_max_bytes: int | None = None,
        linger_ms: int = 0,
        commit_interval_ms: int = 0,
        cooperative: bool = False,
    ) -> None:
        self._role = role
        self._kafka = kafka
        self.group_id = group_id
        self._topic = topic
        self._m = metrics
        self._max_records = max_records
        self._fetch_max_bytes = fetch_max_bytes
        self._linger_ms = linger_ms
        self._commit_interval = commit_interval_ms / 1000
        self._cooperative = cooperative
        self._failures = 0  # failed transactions in a row
        self._consumer: AIOKafkaConsumer | None = None
        self._checkpoint: Checkpoint | None = None
        self._pipeline: CommitPipeline | None = None
        self._stopping = asyncio.Event()
        self._paused_until: dict[TopicPartition, float] = {}
        self._last_fetch = 0.0  # monotonic time the last fetch returned
        self.batch_lock = asyncio.Lock()
        self.batches = 0

    # --- what a role supplies -----------------------------------------------------------

    async def _process(self, batch: Batch) -> Staged | None:
        """The batch (assigned partitions only, non-empty) as staged outputs and offsets;
        None when there is nothing to commit. Called under ``batch_lock``."""
        raise NotImplementedError

    async def _rewind(self, failure: Failure, batch: Batch) -> None:
        """A transaction failed: make every uncommitted batch (``failure``'s, and ``batch``,
        the one in hand) be read again."""
        raise NotImplementedError

    def _count(self, meta: Any) -> None:
        """Metrics of a committed batch, from the ``meta`` it was staged with."""

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("%s assigned %s", self._role, sorted(f"{t.topic}-{t.partition}" for t in assigned))

    def _forget(self, tp: TopicPartition) -> None:
        """``tp`` was revoked (after settling): drop what the role holds for it."""

    async def _release(self, revoked: set[TopicPartition]) -> None:
        """Everything of ``revoked`` was committed before it moves (settled cleanly)."""

    async def _after_failed_settle(self) -> None:
        """Settling found a failed transaction (it is read again after the next assignment)."""

    async def _start_more(self) -> None:
        """Start what the role adds, after the producer and before the consumer."""

    def _has_work(self) -> bool:
        """Process even an empty fetch (e.g. callbacks waiting for their request)."""
        return False

    def _check_alive(self) -> None:
        """Raise when a helper task of the role died, instead of stalling."""

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """The transactional producer, the checkpoint that owns it from here (and replaces
        it when fenced), the commit pipeline, the role's extras, then the consumer."""
        kafka, role = self._kafka, self._role
        producer = make_transactional_producer(kafka, role=role)
        await producer.start()
        self._checkpoint = Checkpoint(
            producer, self.group_id, renew=lambda: make_transactional_producer(kafka, role=role)
        )
        self._pipeline = CommitPipeline(
            self._checkpoint,
            on_committed=self._committed,
            max_staged=MAX_STAGED_BATCHES,
            max_staged_bytes=MAX_STAGED_BYTES,
            commit_interval=self._commit_interval,
        )
        self._pipeline.start()
        await self._start_more()
        extra = {} if self._fetch_max_bytes is None else {"fetch_max_bytes": self._fetch_max_bytes}
        self._consumer = make_consumer(
            kafka, role=role, group_id=self.group_id, max_records=self._max_records, **extra
        )
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))
        await self._consumer.start()
        log.info("%s started on %s (group %s)", role, self._topic, self.group_id)

    @property
    def checkpoint(self) -> Checkpoint:
        assert self._checkpoint is not None, "start() first"
        return self._checkpoint

    @property
    def pipeline(self) -> CommitPipeline:
        assert self._pipeline is not None, "start() first"
        return self._pipeline

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "start() first"
        return self._consumer

    @property
    def consumer_or_none(self) -> AIOKafkaConsumer | None:
        return self._consumer

    @property
    def paused(self) -> set[TopicPartition]:
        return set(self._paused_until)

    def request_stop(self) -> None:
        """Finish the batch in progress, then leave ``run``."""
        self._stopping.set()

    async def _close(self, *between: Callable[[], Awaitable[None]]) -> None:
        self._stopping.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_consumer(consumer)
        for step in between:
            await step()
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            await pipeline.stop()
        checkpoint, self._checkpoint = self._checkpoint, None
        if checkpoint is not None:
            await checkpoint.close()  # its producer, after the last transaction
            log.info("%s stopped after %d committed batches", self._role, self.batches)

    async def stop(self) -> None:
        """Close the consumer (leaving the group) and the producer; safe to call twice."""
        await self._close()

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Process batches until ``request_stop``; what was processed is committed at the end."""
        pipeline = self.pipeline
        while not self._stopping.is_set():
            self._check_alive()
            self._resume_due()
            await pipeline.wait_room()
            await self._recover(pipeline.take_failure(), {})
            pipeline.check()
            batch = await self._fetch()
            if batch or self._has_work():
                await self._handle(batch)
                if self._cooperative:
                    await asyncio.sleep(0)
        await self.settle()

    async def settle(self) -> bool:
        """Wait until every staged batch is committed (or failed: then it is read again);
        True when everything was committed."""
        failure = await self.pipeline.flush()
        if failure is not None:
            self._count_abort()
            log.warning("checkpoint failed while settling: %s", failure.error)
            await self._after_failed_settle()
        return failure is None

    async def _fetch(self) -> Batch:
        consumer, limit = self.consumer, self._max_records
        batch: Batch = await consumer.getmany(timeout_ms=200, max_records=limit)
        count = sum(len(v) for v in batch.values())
        now = time.monotonic()
        # Linger only when records had less than linger_ms to gather since the last fetch:
        # after a batch that took longer (creates, transaction), what waited is the batch.
        short_wait = (now - self._last_fetch) * 1000 < self._linger_ms
        self._last_fetch = now
        if batch and count < limit and short_wait and not self._stopping.is_set():
            more = await consumer.getmany(timeout_ms=self._linger_ms, max_records=limit - count)
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
        return batch

    async def _handle(self, batch: Batch) -> None:
        async with self.batch_lock:
            assigned = self.consumer.assignment()
            batch = {tp: recs for tp, recs in batch.items() if tp in assigned and recs}
            if not batch and not self._has_work():
                return
            staged = await self._process(batch)
            failure = self.pipeline.take_failure()
            if failure is not None:  # an earlier batch failed to commit: this one goes too
                await self._recover(failure, batch)
                return
            if staged is not None:
                self.pipeline.stage(staged)

    async def _recover(self, failure: Failure | None, batch: Batch) -> None:
        """After a failed transaction: read every uncommitted batch again, after a backoff;
        after too many in a row give up (the role fails, the app exits)."""
        if failure is None:
            return
        self._count_abort()
        self._failures += 1
        if self._failures >= MAX_CONSECUTIVE_CHECKPOINT_FAILURES:
            raise failure.error
        await self._rewind(failure, batch)
        await asyncio.sleep(min(5.0, 0.2 * 2**self._failures))

    def _committed(self, group: list[Staged]) -> None:
        self._failures = 0
        m = self._m
        for staged in group:
            self.batches += 1
            if m is not None:
                meta, fetched, started = staged.meta
                m.transactions.labels(self._role, "commit").inc()
                m.batch_size.labels(self._role).observe(fetched)
                m.batch_duration.labels(self._role).observe(time.perf_counter() - started)
                self._count(meta)

    def _count_abort(self) -> None:
        if self._m is not None:
            self._m.transactions.labels(self._role, "abort").inc()

    def _seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        assigned = self.consumer.assignment()
        for tp, offset in offsets.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)

    # --- pausing --------------------------------------------------------------------------

    def _pause(self, tp: TopicPartition, until: float) -> None:
        """Fetch nothing from ``tp`` before monotonic ``until`` (capped by max.poll.interval)."""
        now = time.monotonic()
        until = min(until, now + self._kafka.max_poll_interval_ms / 1000)
        self.consumer.pause(tp)
        self._paused_until[tp] = until
        log.info("paused %s-%d for %.1fs", tp.topic, tp.partition, until - now)

    def _resume_due(self) -> None:
        if not self._paused_until:
            return
        now = time.monotonic()
        for tp in [tp for tp, until in self._paused_until.items() if until <= now]:
            del self._paused_until[tp]
            if tp in self.consumer.assignment():
                self.consumer.resume(tp)


def staged(
    outputs: list[Any],
    offsets: Mapping[TopicPartition, int],
    batch: Batch,
    meta: Any,
    started: float,
) -> Staged:
    """A processed batch for the pipeline: ``meta`` is handed to ``_count`` once committed."""
    rewind = {tp: records[0].offset for tp, records in batch.items()}
    fetched = sum(len(r) for r in batch.values())
    size = sum(len(r.value) for records in batch.values() for r in records if r.value)
    return Staged(outputs, offsets, rewind, (meta, fetched, started), size)


async def drain(role: TransactionalRole, task: asyncio.Task[None], deadline: float) -> None:
    """Stop fetching, let the staged batches commit, then close — within ``deadline``."""
    role.request_stop()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), timeout=deadline)
    if not task.done():
        log.warning("%s did not finish within %.1fs; abandoning it", role._role, deadline)
        task.cancel()
    await role.stop()
