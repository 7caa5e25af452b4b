"""The resolver role: ``hitl.callbacks`` ⋈ ``hitl.requests`` → decisions, one transaction a batch.

The loop (fetch, settle on revoke, failures, drain) is ``TransactionalRole``'s. This module
supplies ``_process``: make sure the table partitions are restored → join each callback
(decision + tombstone, escalation, unmatched, or wait) → re-try callbacks that were waiting;
expire those older than the TTL to the unmatched topic → staged outputs and offsets. The
pipeline commits while the next batch is joined; joins see the table as the earlier, still
committing, batches left it.

Offsets: a partition commits up to its oldest waiting callback, never past it, so a crash
cannot lose a callback that had no request yet. Callbacks after it that were resolved are
read again after a restart and recognised as resolved (tombstones), producing nothing.
A failed transaction rewinds everything not committed: positions go back to the committed
offsets and the table is restored again.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from connector.config import KafkaSettings, ResolverSettings, TopicSettings
from connector.kafka.pipeline import Failure, Staged
from connector.kafka.role import Batch, TransactionalRole, staged
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


class Resolver(TransactionalRole):
    """Consumes callbacks in a group and joins them with the co-partitioned request table."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicSettings,
        resolver: ResolverSettings,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(
            "resolver",
            kafka,
            group_id=f"{kafka.group_id}-resolver",
            topic=topics.callbacks,
            metrics=metrics,
            max_records=resolver.max_records,
        )
        self._r = resolver
        self.table = RequestTable(kafka, topics.requests, resolver)
        self.joiner = Joiner(topics, self.table)
        self.waiting: dict[TopicPartition, OrderedDict[int, _Waiting]] = {}
        self.processed: dict[TopicPartition, int] = {}
        self._staged_offsets: dict[TopicPartition, int] = {}  # the last offsets handed over
        self.joined = False  # the group assigned partitions at least once
        self.table.lag_probe = self.lagging_partitions

    def ready(self) -> bool:
        consumer = self._consumer
        if consumer is None or not self.joined:
            return False  # before the first assignment the table is not known to be restored
        return all(self.table.ready(tp.partition) for tp in consumer.assignment())

    async def _start_more(self) -> None:
        await self.table.start()

    async def stop(self) -> None:
        """Consumer, then the table, then the producer; safe to call twice."""
        await self._close(self.table.stop)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.table.assign(tp.partition for tp in self.consumer.assignment())
        self.joined = True

    async def _after_failed_settle(self) -> None:
        # Its in-memory resolutions were not committed: the next assignment restores it.
        self._clear()
        await self.table.restore_again([])

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

    def _forget(self, tp: TopicPartition) -> None:
        self.waiting.pop(tp, None)
        self.processed.pop(tp, None)
        self._staged_offsets.pop(tp, None)

    def _clear(self) -> None:
        self.waiting.clear()
        self.processed.clear()
        self._staged_offsets.clear()

    def waiting_count(self) -> int:
        return sum(len(w) for w in self.waiting.values())

    def _has_work(self) -> bool:
        return bool(self.waiting_count())

    def _check_alive(self) -> None:
        table_task = self.table.task
        if table_task is not None and table_task.done():
            table_task.result()  # surface a dead table loop instead of stalling

    async def _process(self, batch: Batch) -> Staged | None:
        parts = {tp.partition for tp in batch}
        if parts and not await self.table.wait_ready(parts, self._r.restore_timeout_seconds):
            log.warning("request table not restored in time; will read the batch again")
            self._seek({tp: recs[0].offset for tp, recs in batch.items()})
            return None
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
        if not outputs and not offsets:
            self.joiner.commit_stats(self._m)  # nothing to write, e.g. only duplicates
            return None
        self._staged_offsets.update(offsets)
        return staged(outputs, offsets, batch, self.joiner.take_batch(), started)

    def _count(self, meta: Any) -> None:
        self.joiner.count(meta, self._m)

    def _retry_waiting(self, now: float) -> list[OutRecord]:
        outputs: list[OutRecord] = []
        ttl = self._r.unmatched_ttl_seconds
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

    async def _rewind(self, failure: Failure, batch: Batch) -> None:
        """Forget local state and read again from the committed offsets."""
        self.joiner.discard_stats()
        consumer = self.consumer
        tps = list(consumer.assignment())
        self._clear()
        for tp in tps:
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        # Rows resolved in the aborted transaction must come back: reload the table.
        await self.table.restore_again(tp.partition for tp in tps)
