"""The lifecycle shared by the consume→produce roles (submitter, resolver).

Each role owns one consumer in its group and a checkpoint with its transactional producer.
Closing order: the consumer first (it leaves the group, so its partitions move on), then
whatever the role adds, the checkpoint's producer last. ``close`` is safe to call twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer

from connector.config import KafkaSettings
from connector.kafka.checkpoint import Checkpoint
from connector.kafka.clients import make_transactional_producer
from connector.kafka.pipeline import CommitPipeline, Failure, Staged
from connector.metrics import Metrics

log = logging.getLogger(__name__)


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


MAX_CONSECUTIVE_CHECKPOINT_FAILURES = 5


class TransactionalRole:
    """Holds a role's consumer and stop flag."""

    def __init__(self, role: str, metrics: Metrics | None) -> None:
        self._role = role
        self._m = metrics
        self._failures = 0  # failed transactions in a row
        self._consumer: AIOKafkaConsumer | None = None
        self._checkpoint: Checkpoint | None = None
        self._pipeline: CommitPipeline | None = None
        self._stopping = asyncio.Event()

    @property
    def checkpoint(self) -> Checkpoint:
        assert self._checkpoint is not None, "start() first"
        return self._checkpoint

    @property
    def pipeline(self) -> CommitPipeline:
        assert self._pipeline is not None, "start() first"
        return self._pipeline

    def _count_abort(self) -> None:
        if self._m is not None:
            self._m.transactions.labels(self._role, "abort").inc()

    def _failed_transaction(self, failure: Failure) -> None:
        """Count it; after too many in a row give up (the role fails, the app exits)."""
        self._count_abort()
        self._failures += 1
        if self._failures >= MAX_CONSECUTIVE_CHECKPOINT_FAILURES:
            raise failure.error

    async def _back_off(self) -> None:
        await asyncio.sleep(min(5.0, 0.2 * 2**self._failures))

    async def _start_committing(
        self,
        kafka: KafkaSettings,
        group_id: str,
        on_committed: Callable[[list[Staged]], None],
    ) -> None:
        """The transactional producer, the checkpoint that owns it from here (and replaces
        it when fenced), and the commit pipeline."""
        role = self._role
        producer = make_transactional_producer(kafka, role=role)
        await producer.start()
        self._checkpoint = Checkpoint(
            producer, group_id, renew=lambda: make_transactional_producer(kafka, role=role)
        )
        self._pipeline = CommitPipeline(self._checkpoint, on_committed=on_committed)
        self._pipeline.start()

    @property
    def consumer(self) -> AIOKafkaConsumer:
        assert self._consumer is not None, "start() first"
        return self._consumer

    @property
    def consumer_or_none(self) -> AIOKafkaConsumer | None:
        return self._consumer

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
