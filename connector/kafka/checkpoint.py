"""The only code that commits consumer offsets.

A checkpoint is one Kafka transaction, in this order:
1. begin the transaction;
2. send every output record of the batch (decisions, request-table rows, DLQ records,
   tombstones) as whole record batches, one per partition (partitioned exactly like the
   default partitioner, ``connector.kafka.partitioner``), all in flight at once;
3. send the consumer offsets with one ``send_offsets_to_transaction`` call (one call per
   batch: aiokafka issue 1098 races when offsets go one by one);
4. commit. The broker then makes outputs and offsets visible together, or neither.

Any failure aborts the transaction and re-raises; the caller seeks back to the last
committed offsets so the batch is processed again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from connector.kafka.partitioner import partition_for
from connector.records import OutRecord

log = logging.getLogger(__name__)


class CheckpointError(Exception):
    """The transaction was aborted; nothing from this batch is visible or committed."""

    retriable = True


class Checkpoint:
    """Commits a batch's outputs and offsets atomically through a transactional producer."""

    def __init__(self, producer: AIOKafkaProducer, group_id: str) -> None:
        self._producer = producer
        self._group_id = group_id
        self.commits = 0
        self.aborts = 0

    async def commit(
        self, records: Sequence[OutRecord], offsets: Mapping[TopicPartition, int]
    ) -> None:
        if not records and not offsets:
            return
        producer = self._producer
        await producer.begin_transaction()
        try:
            futures = await self._send_batches(records)
            if futures:
                await asyncio.gather(*futures)
            if offsets:
                await producer.send_offsets_to_transaction(dict(offsets), self._group_id)
            await producer.commit_transaction()
        except (TimeoutError, KafkaError, OSError) as exc:
            self.aborts += 1
            log.warning("checkpoint aborted: %s", exc)
            try:
                await producer.abort_transaction()
            except (KafkaError, OSError) as abort_exc:  # the producer may be fenced or closed
                log.warning("abort after failed checkpoint also failed: %s", abort_exc)
            raise CheckpointError(str(exc)) from exc
        self.commits += 1

    async def _send_batches(self, records: Sequence[OutRecord]) -> list[asyncio.Future[Any]]:
        """One ``BatchBuilder`` per partition instead of a ``send()`` per record: the
        per-record path (metadata wait, partitioner, accumulator) was a visible share of the
        submit path's CPU. A full builder is sent and a new one started; the first record of
        an empty builder always fits, whatever its size."""
        producer = self._producer
        partitions: dict[str, list[int]] = {}
        builders: dict[tuple[str, int], Any] = {}
        futures: list[asyncio.Future[Any]] = []
        for r in records:
            ids = partitions.get(r.topic)
            if ids is None:
                ids = partitions[r.topic] = sorted(await producer.partitions_for(r.topic))
            where = (r.topic, partition_for(r.key, ids))
            builder = builders.get(where)
            if builder is None:
                builder = builders[where] = producer.create_batch()
            if builder.append(key=r.key, value=r.value, timestamp=None, headers=r.headers) is None:
                futures.append(await producer.send_batch(builder, where[0], partition=where[1]))
                builder = builders[where] = producer.create_batch()
                builder.append(key=r.key, value=r.value, timestamp=None, headers=r.headers)
        for (topic, partition), builder in builders.items():
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        return futures
