"""The only code that commits consumer offsets.

A checkpoint is one Kafka transaction, in this order:
1. begin the transaction;
2. send every output record of the batch (decisions, request-table rows, DLQ records,
   tombstones) as whole record batches, one per partition (partitioned exactly like the
   default partitioner, ``connector.kafka.partitioner``; ``connector.kafka.batches``), all in
   flight at once;
3. send the consumer offsets with one ``send_offsets_to_transaction`` call (one call per
   batch: aiokafka issue 1098 races when offsets go one by one), while the records of step 2
   are still in flight, and wait for both;
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

from connector.kafka.batches import BatchWriter
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
            waits: list[Any] = await self._send_batches(records)
            if offsets:
                # In parallel with the produce requests: the offsets' two round trips
                # (AddOffsetsToTxn, TxnOffsetCommit) need not wait for the records' acks.
                waits.append(producer.send_offsets_to_transaction(dict(offsets), self._group_id))
            # Every wait ends before the abort below, so no send is left running past it.
            for result in await asyncio.gather(*waits, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
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
        producer = self._producer
        partitions: dict[str, list[int]] = {}
        writer = BatchWriter(producer)
        for r in records:
            ids = partitions.get(r.topic)
            if ids is None:
                ids = partitions[r.topic] = sorted(await producer.partitions_for(r.topic))
            writer.add(r.topic, partition_for(r.key, ids), r.key, r.value, r.headers)
        return await writer.send()
