"""The resolver role: ``hitl.callbacks`` ⋈ ``hitl.requests`` → decisions, one transaction a batch.

Order of one iteration: fetch callbacks → [lock] make sure the table partitions are restored
→ join each callback (decision + tombstone, escalation, unmatched, or wait) → re-try callbacks
that were waiting; expire those older than the TTL to the unmatched topic → stage outputs and
offsets for the commit pipeline [unlock]. The pipeline commits while the next batch is joined;
joins see the table as the earlier, still committing, batches left it.

Offsets: a partition commits up to its oldest waiting callback, never past it, so a crash
cannot lose a callback that had no request yet. Callbacks after it that were resolved are
read again after a restart and recognised as resolved (tombstones), producing nothing.
A failed transaction rewinds everything not committed: positions go back to the committed
offsets and the table is restored again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from connector.config import Settings
from connector.kafka.clients import make_consumer
from connector.kafka.pipeline import Failure, Staged
from connector.kafka.role import TransactionalRole
from connector.metrics import Metrics
from connector.records import OutRecord
from connector.resolver.join import Joiner, Wait
from connector.resolver.table import RequestTable

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Waiting:
    key: bytes | None
    value: bytes | None
    since: float


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: Resolver) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._owner.batch_lock:
            await self._owner.settle()
            for tp in revoked:
                self._owner.forget(tp)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner.table.assign(tp.partition for tp in self._owner.consumer.assignment())
        self._owner.joined = True


class Resolver(TransactionalRole):
    """Consumes callbacks in a group and joins them with the co-partitioned request table."""

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        super().__init__("resolver", metrics)
        self._s = settings
        self.table = RequestTable(settings)
        self.joiner = Joiner(settings, self.table)
        self.batch_lock = asyncio.Lock()
        self.waiting: dict[TopicPartition, OrderedDict[int, _Waiting]] = {}
        self.processed: dict[TopicPartition, int] = {}
        self._failures = 0
        self._staged_offsets: dict[TopicPartition, int] = {}  # the last offsets handed over
        self.batches = 0
        self.joined = False  # the group assigned partitions at least once
        self.table.lag_probe = self.lagging_partitions

    @property
    def group_id(self) -> str:
        return f"{self._s.kafka.group_id}-resolver"

    def ready(self) -> bool:
        consumer = self._consumer
        if consumer is None or not self.joined:
            return False  # before the first assignment the table is not known to be restored
        return all(self.table.ready(tp.partition) for tp in consumer.assignment())

    async def start(self) -> None:
        kafka = self._s.kafka
        await self._start_committing(kafka, self.group_id, self._committed)
        await self.table.start()
        self._consumer = make_consumer(
            self._s.kafka,
            role="resolver",
            group_id=self.group_id,
            max_records=self._s.resolver.max_records,
        )
        self._consumer.subscribe([self._s.topics.callbacks], listener=_Rebalance(self))
        await self._consumer.start()
        log.info("resolver started on %s (group %s)", self._s.topics.callbacks, self.group_id)

    async def stop(self) -> None:
        """Consumer, then the table, then the producer; safe to call twice."""
        await self._close(self.table.stop)

    async def settle(self) -> None:
        """Wait until every staged batch is committed; after a failure, restore the table
        again (its in-memory resolutions were not committed)."""
        failure = await self.pipeline.flush()
        if failure is not None:
            self._count_abort()
            log.warning("checkpoint failed while settling: %s", failure.error)
            self.waiting.clear()
            self.processed.clear()
            self._staged_offsets.clear()
            await self.table.restore_again([])  # the next assignment restores it

    async def lagging_partitions(self) -> set[int]:
        """Partitions with callbacks fetched position < end: records not joined yet, among
        them perhaps the webhook of a request the reconciler is about to poll."""
        consumer = self._consumer
        if consumer is None:
            return set()
        out: set[int] = set()
        for tp in consumer.assignment():
            end = consumer.last_stable_offset(tp)
            if end is None:
                end = consumer.highwater(tp)
            if end is None:
                continue
            try:
                position = await consumer.position(tp)
            except (KafkaError, IllegalStateError):
                continue
            if position < end:
                out.add(tp.partition)
        return out

    def forget(self, tp: TopicPartition) -> None:
        self.waiting.pop(tp, None)
        self.processed.pop(tp, None)
        self._staged_offsets.pop(tp, None)

    def waiting_count(self) -> int:
        return sum(len(w) for w in self.waiting.values())

    async def run(self) -> None:
        pipeline = self.pipeline
        while not self._stopping.is_set():
            table_task = self.table.task
            if table_task is not None and table_task.done():
                table_task.result()  # surface a dead table loop instead of stalling
            await pipeline.wait_room()
            await self._recover(pipeline.take_failure())
            pipeline.check()
            batch = await self.consumer.getmany(timeout_ms=200)
            if batch or self.waiting_count():
                await self._handle(batch)
        await self.settle()

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        consumer = self.consumer
        async with self.batch_lock:
            assigned = consumer.assignment()
            batch = {tp: recs for tp, recs in batch.items() if tp in assigned and recs}
            parts = {tp.partition for tp in batch}
            if parts and not await self.table.wait_ready(
                parts, self._s.resolver.restore_timeout_seconds
            ):
                log.warning("request table not restored in time; will read the batch again")
                for tp, recs in batch.items():
                    consumer.seek(tp, recs[0].offset)
                return
            started = time.perf_counter()
            now = time.time()
            outputs: list[OutRecord] = []
            for tp, records in batch.items():
                queue = self.waiting.setdefault(tp, OrderedDict())
                for rec in records:
                    result = self.joiner.join(tp.partition, rec.key, rec.value, now)
                    if isinstance(result, Wait):
                        queue[rec.offset] = _Waiting(rec.key, rec.value, time.monotonic())
                    else:
                        outputs.extend(result)
                self.processed[tp] = records[-1].offset + 1
            outputs.extend(self._retry_waiting(now))
            offsets = {
                tp: off
                for tp, off in self._committable().items()
                if self._staged_offsets.get(tp) != off
            }
            failure = self.pipeline.take_failure()
            if failure is not None:  # an earlier batch failed: this one is joined again too
                await self._recover(failure)
                return
            if not outputs and not offsets:
                self.joiner.commit_stats(self._m)  # nothing to write, e.g. only duplicates
                return
            self._staged_offsets.update(offsets)
            fetched = sum(len(r) for r in batch.values())
            meta = (self.joiner.take_batch(), fetched, started)
            self.pipeline.stage(Staged(outputs, offsets, {}, meta))

    async def _recover(self, failure: Failure | None) -> None:
        """After a failed transaction: forget what was not committed, read it again."""
        if failure is None:
            return
        self.joiner.discard_stats()
        self._failed_transaction(failure)
        await self._rewind()
        await self._back_off()

    def _committed(self, group: list[Staged]) -> None:
        self._failures = 0
        for staged in group:
            stats, fetched, started = staged.meta
            self.batches += 1
            self.joiner.count(stats, self._m)
            if self._m is not None:
                self._m.transactions.labels("resolver", "commit").inc()
                self._m.batch_size.labels("resolver").observe(fetched)
                self._m.batch_duration.labels("resolver").observe(time.perf_counter() - started)

    def _retry_waiting(self, now: float) -> list[OutRecord]:
        outputs: list[OutRecord] = []
        ttl = self._s.resolver.unmatched_ttl_seconds
        mono = time.monotonic()
        for tp, queue in self.waiting.items():
            for offset, item in list(queue.items()):
                result = self.joiner.join(tp.partition, item.key, item.value, now)
                if isinstance(result, Wait):
                    if mono - item.since < ttl:
                        continue
                    result = [self.joiner.unmatched(item.key, item.value, "no_request")]
                outputs.extend(result)
                del queue[offset]
        return outputs

    def _committable(self) -> dict[TopicPartition, int]:
        offsets: dict[TopicPartition, int] = {}
        for tp, upto in self.processed.items():
            queue = self.waiting.get(tp)
            offsets[tp] = min(next(iter(queue)), upto) if queue else upto
        return offsets

    async def _rewind(self) -> None:
        """After an aborted transaction: forget local state and read again from the commits."""
        consumer = self.consumer
        tps = list(consumer.assignment())
        self.waiting.clear()
        self.processed.clear()
        self._staged_offsets.clear()
        for tp in tps:
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        # Rows resolved in the aborted transaction must come back: reload the table.
        await self.table.restore_again(tp.partition for tp in tps)


async def drain_resolver(resolver: Resolver, task: asyncio.Task[None], deadline: float) -> None:
    resolver.request_stop()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), timeout=deadline)
    if not task.done():
        task.cancel()
    await resolver.stop()
