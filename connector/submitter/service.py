"""The submitter role: input topic → HITL requests, one Kafka transaction per micro-batch.

The loop (fetch, pause/resume, settle on revoke, failures, drain) is ``TransactionalRole``'s.
This module supplies the submit path's two steps:

- ``_process``: a fetched batch → creates (``submitter.batch``) → staged outputs and offsets;
  partitions with a gap (HITL unavailable) are sought back to it and paused;
- ``_rewind``: after a failed transaction, seek every uncommitted batch back to its start;
- the submit journal (``submitter.journal``): read for newly assigned partitions before their
  first creates, told when a revoked partition has nothing in flight, closed last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import TopicPartition

from connector.config import BatchSettings, KafkaSettings
from connector.kafka.pipeline import Failure, Staged
from connector.kafka.role import DEFAULT_PAUSE_SECONDS, Batch, TransactionalRole, staged
from connector.metrics import Metrics
from connector.submitter.batch import BatchProcessor, BatchStats
from connector.submitter.journal import Journal

log = logging.getLogger(__name__)


class Submitter(TransactionalRole):
    """Consumes the input topic and turns each micro-batch into one transaction."""

    def __init__(
        self,
        kafka: KafkaSettings,
        input_topic: str,
        batch: BatchSettings,
        processor: BatchProcessor,
        journal: Journal,
        *,
        blocked_until: Callable[[], float | None] | None = None,
        metrics: Metrics | None = None,
        cooperative: bool = False,
    ) -> None:
        super().__init__(
            "submitter",
            kafka,
            group_id=kafka.group_id,
            topic=input_topic,
            metrics=metrics,
            max_records=batch.max_records,
            fetch_max_bytes=batch.max_bytes,
            linger_ms=batch.linger_ms,
            commit_interval_ms=batch.commit_interval_ms,
            cooperative=cooperative,
        )
        self._processor = processor
        self.journal = journal
        self.recovery = processor.recovery
        self._blocked_until = blocked_until or (lambda: None)

    async def _start_more(self) -> None:
        await self.journal.start()

    async def stop(self) -> None:
        """Close the consumer (leaving the group), the producer, then the journal; safe twice."""
        await self._close()
        await self.journal.stop()

    def _forget(self, tp: TopicPartition) -> None:
        self.recovery.forget([(tp.topic, tp.partition)])

    async def _release(self, revoked: set[TopicPartition]) -> None:
        """Everything of ``revoked`` is committed: tell the journal nothing is in flight."""
        await self._processor.release({(tp.topic, tp.partition) for tp in revoked})

    def _committed(self, group: list[Staged]) -> None:
        for one in group:
            self.recovery.committed({(tp.topic, tp.partition): o for tp, o in one.offsets.items()})
        super()._committed(group)

    async def _process(self, batch: Batch) -> Staged | None:
        if not await self._load_journal(batch):
            return None
        started = time.perf_counter()
        stats = BatchStats()
        plans = await self._processor.process(batch, stats)
        outputs = [r for plan in plans.values() for r in plan.outputs]
        offsets = {
            tp: plan.commit_offset for tp, plan in plans.items() if plan.commit_offset is not None
        }
        for tp, plan in plans.items():
            if plan.seek_to is not None:  # a gap: read it again once HITL is back
                self.consumer.seek(tp, plan.seek_to)
                self._pause(tp, self._resume_at(plan.retry_after))
        return staged(outputs, offsets, batch, stats, started)

    async def _load_journal(self, batch: Batch) -> bool:
        """Read the journal for newly assigned partitions before their first creates; on Kafka
        trouble seek the batch back, pause briefly and return False (it is read again)."""
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
                consumer.seek(tp, records[0].offset)
                self._pause(tp, time.monotonic() + 1.0)
            return False
        return True

    async def _rewind(self, failure: Failure, batch: Batch) -> None:
        self._seek(failure.rewind_to({tp: records[0].offset for tp, records in batch.items()}))

    def _resume_at(self, retry_after: float | None) -> float:
        until = time.monotonic() + (
            retry_after if retry_after is not None else DEFAULT_PAUSE_SECONDS
        )
        blocked = self._blocked_until()
        return until if blocked is None else max(until, blocked)

    def _count(self, meta: Any) -> None:
        m, s = self._m, meta
        assert m is not None and isinstance(s, BatchStats)
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
