"""The submitter role: input topic → HITL requests, one Kafka transaction per micro-batch.

Owns the Kafka side of the submit path: the consumer group on the input topic, fetching,
pausing and seeking partitions, and handing each batch's outputs and offsets to the commit
pipeline. What happens to each record is decided in ``submitter.batch``.

Order of one iteration: resume partitions whose pause is over → fetch (plus linger) →
[lock] process → seek back and pause partitions with a gap → stage the batch [unlock]. The
pipeline commits staged batches (outputs + offsets in one transaction) while the next batch's
creates run, so the transaction's round trips add no latency to them. The rebalance listener
takes the same lock and waits for the pipeline to drain, so a partition is never revoked
between its creates and its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition

from connector.config import Settings
from connector.kafka.clients import make_consumer
from connector.kafka.pipeline import Failure, Staged
from connector.kafka.role import TransactionalRole
from connector.metrics import Metrics
from connector.submitter.batch import BatchProcessor, BatchStats, CreateClient
from connector.submitter.journal import Journal

log = logging.getLogger(__name__)

DEFAULT_PAUSE_SECONDS = 5.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: Submitter) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Waits for the batch in progress, and every staged one, to commit before the
        # partitions move. Anything that failed is read again by whoever gets the partition.
        async with self._owner.batch_lock:
            if await self._owner.settle():
                await self._owner.release(revoked)
            self._owner.forget(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("submitter assigned %s", sorted(f"{tp.topic}-{tp.partition}" for tp in assigned))


class Submitter(TransactionalRole):
    """Consumes the input topic and turns each micro-batch into one transaction."""

    def __init__(
        self,
        settings: Settings,
        client: CreateClient,
        *,
        blocked_until: Callable[[], float | None] | None = None,
        callback_url_for: Callable[[str], str | None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__("submitter", metrics)
        self._s = settings
        self.journal = Journal(settings)
        self._processor = BatchProcessor(
            settings,
            client,
            callback_url_for=callback_url_for,
            journal=self.journal if settings.batch.journal else None,
        )
        self.recovery = self._processor.recovery
        self._blocked_until = blocked_until or (lambda: None)
        self.batch_lock = asyncio.Lock()
        self.stats = BatchStats()
        self._paused_until: dict[TopicPartition, float] = {}
        self._failures = 0
        self._last_fetch = 0.0  # monotonic time the last fetch returned
        self.batches = 0

    @property
    def group_id(self) -> str:
        return self._s.kafka.group_id

    async def start(self) -> None:
        kafka = self._s.kafka
        await self.journal.start()
        await self._start_committing(kafka, self.group_id, self._committed)
        self._consumer = make_consumer(
            kafka,
            role="submitter",
            group_id=self.group_id,
            max_records=self._s.batch.max_records,
            fetch_max_bytes=self._s.batch.max_bytes,
        )
        self._consumer.subscribe([self._s.topics.input], listener=_Rebalance(self))
        await self._consumer.start()
        log.info("submitter started on %s (group %s)", self._s.topics.input, self.group_id)

    async def stop(self) -> None:
        """Close the consumer (leaving the group) and the producers; safe to call twice."""
        await self._close()
        await self.journal.stop()

    def forget(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            self._paused_until.pop(tp, None)
        self.recovery.forget((tp.topic, tp.partition) for tp in revoked)

    async def release(self, tps: set[TopicPartition]) -> None:
        """Everything of ``tps`` is committed: tell the journal nothing is in flight."""
        await self._processor.release({(tp.topic, tp.partition) for tp in tps})

    async def run(self) -> None:
        """Process batches until ``request_stop``; what was processed is committed at the end."""
        pipeline = self.pipeline
        while not self._stopping.is_set():
            self._resume_due()
            await pipeline.wait_room()
            await self._recover(pipeline.take_failure())
            pipeline.check()
            batch = await self._fetch()
            if batch:
                await self._handle(batch)
        await self.settle()

    async def settle(self) -> bool:
        """Wait until every staged batch is committed (or failed: then it is read again);
        True when everything was committed."""
        failure = await self.pipeline.flush()
        if failure is not None:
            self._count_abort()
            log.warning("checkpoint failed while settling: %s", failure.error)
        return failure is None

    async def _fetch(self) -> dict[TopicPartition, list[Any]]:
        consumer = self.consumer
        limit = self._s.batch.max_records
        batch: dict[TopicPartition, list[Any]] = await consumer.getmany(
            timeout_ms=200, max_records=limit
        )
        count = sum(len(v) for v in batch.values())
        linger = self._s.batch.linger_ms
        now = time.monotonic()
        # Linger only when records had less than linger_ms to gather since the last fetch:
        # after a batch that took longer (creates, transaction), what waited is the batch.
        waited = now - self._last_fetch
        self._last_fetch = now
        short_wait = waited * 1000 < linger
        if batch and count < limit and short_wait and not self._stopping.is_set():
            more = await consumer.getmany(timeout_ms=linger, max_records=limit - count)
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
        return batch

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        consumer = self.consumer
        async with self.batch_lock:
            assigned = consumer.assignment()
            batch = {tp: recs for tp, recs in batch.items() if tp in assigned and recs}
            if not batch:
                return
            if not await self._load_journal(batch):
                return
            started = time.perf_counter()
            stats = BatchStats()
            plans = await self._processor.process(batch, stats)
            rewind = {tp: records[0].offset for tp, records in batch.items()}
            failure = self.pipeline.take_failure()
            if failure is not None:  # an earlier batch failed to commit: this one goes too
                await self._recover(failure, rewind)
                return
            outputs = [r for plan in plans.values() for r in plan.outputs]
            offsets = {
                tp: plan.commit_offset
                for tp, plan in plans.items()
                if plan.commit_offset is not None
            }
            for tp, plan in plans.items():
                if plan.seek_to is not None:
                    consumer.seek(tp, plan.seek_to)
                    self._pause(tp, plan.retry_after)
            fetched = sum(len(r) for r in batch.values())
            self.pipeline.stage(Staged(outputs, offsets, rewind, (stats, fetched, started)))

    async def _load_journal(self, batch: dict[TopicPartition, list[Any]]) -> bool:
        """Read the journal for newly assigned partitions before their first creates."""
        consumer = self.consumer
        tps = {(tp.topic, tp.partition): tp for tp in consumer.assignment()}
        missing = set(tps) - self.recovery.loaded
        if not missing:
            return True
        try:
            entries = await self.journal.load(missing)
            committed = {c: await consumer.committed(tps[c]) for c in missing if c in entries}
            done = {c: o for c, o in committed.items() if o is not None}
            self.recovery.load(entries, missing, done)
        except Exception as exc:  # noqa: BLE001 - Kafka trouble: read the batch again later
            log.warning("submit journal not readable now (%s); retrying the batch", exc)
            for tp, records in batch.items():
                self.consumer.seek(tp, records[0].offset)
                self._pause(tp, 1.0)
            return False
        return True

    async def _recover(
        self, failure: Failure | None, extra: dict[TopicPartition, int] | None = None
    ) -> None:
        """After a failed transaction: read every uncommitted batch again, after a backoff."""
        if failure is None:
            return
        self._failed_transaction(failure)
        assigned = self.consumer.assignment()
        for tp, offset in failure.rewind_to(extra).items():
            if tp in assigned:
                self.consumer.seek(tp, offset)
        await self._back_off()

    def _committed(self, group: list[Staged]) -> None:
        self._failures = 0
        for staged in group:
            self.recovery.committed(
                {(tp.topic, tp.partition): o for tp, o in staged.offsets.items()}
            )
            stats, fetched, started = staged.meta
            self.batches += 1
            self._merge(stats)
            if self._m is not None:
                self._observe(stats, fetched, started)

    def _pause(self, tp: TopicPartition, retry_after: float | None) -> None:
        now = time.monotonic()
        until = now + (retry_after if retry_after is not None else DEFAULT_PAUSE_SECONDS)
        blocked = self._blocked_until()
        if blocked is not None:
            until = max(until, blocked)
        until = min(until, now + self._s.kafka.max_poll_interval_ms / 1000)
        self.consumer.pause(tp)
        self._paused_until[tp] = until
        log.info("paused %s-%d for %.1fs (HITL unavailable)", tp.topic, tp.partition, until - now)

    def _resume_due(self) -> None:
        if not self._paused_until:
            return
        now = time.monotonic()
        due = [tp for tp, until in self._paused_until.items() if until <= now]
        for tp in due:
            del self._paused_until[tp]
            if tp in self.consumer.assignment():
                self.consumer.resume(tp)

    def _observe(self, s: BatchStats, fetched: int, started: float) -> None:
        m = self._m
        assert m is not None
        m.transactions.labels("submitter", "commit").inc()
        m.events_consumed.inc(s.consumed)
        if s.created:
            m.events.labels("submitted", "").inc(s.created)
        if s.policy:
            m.events.labels("policy", "").inc(s.policy)
            for decision, n in s.policy_decisions.items():
                m.decisions.labels(m.decision_label(decision), "policy", "policy").inc(n)
        for reason, n in s.dlq.items():
            m.events.labels("dlq", reason).inc(n)
        if s.truncated:
            m.events_truncated.inc(s.truncated)
        m.batch_size.labels("submitter").observe(fetched)
        m.batch_duration.labels("submitter").observe(time.perf_counter() - started)

    @property
    def paused(self) -> set[TopicPartition]:
        return set(self._paused_until)

    def _merge(self, s: BatchStats) -> None:
        t = self.stats
        t.consumed += s.consumed
        t.created += s.created
        t.policy += s.policy
        t.deferred += s.deferred
        t.truncated += s.truncated
        for reason, n in s.dlq.items():
            t.dlq[reason] = t.dlq.get(reason, 0) + n
        if s.consumed:
            log.debug(
                "batch: consumed=%d created=%d policy=%d dlq=%s deferred=%d",
                s.consumed,
                s.created,
                s.policy,
                s.dlq,
                s.deferred,
            )


async def drain(submitter: Submitter, task: asyncio.Task[None], deadline: float) -> None:
    """Stop fetching, let the staged batches commit, then close — within ``deadline``."""
    submitter.request_stop()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), timeout=deadline)
    if not task.done():
        log.warning("submitter batch did not finish within %.1fs; abandoning it", deadline)
        task.cancel()
    await submitter.stop()
