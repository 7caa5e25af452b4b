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
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from connector.kafka.batches import BatchWriter
from connector.kafka.partitioner import partition_for
from connector.records import OutRecord

log = logging.getLogger(__name__)


class CheckpointError(Exception):
    """The transaction was aborted; nothing from this batch is visible or committed."""

    retriable = True


class Checkpoint:
    """Commits a batch's outputs and offsets atomically through a transactional producer.

    A fenced producer (the broker aborted a transaction that outlived
    ``transaction_timeout_ms``, e.g. during a long broker stall, or another instance took
    the same transactional id) cannot be used again: with ``renew`` the checkpoint replaces
    it before the next transaction (the new producer's ``init_transactions`` aborts whatever
    was left open) instead of failing the role for good.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        group_id: str,
        *,
        renew: Callable[[], AIOKafkaProducer] | None = None,
    ) -> None:
        self._producer = producer
        self._group_id = group_id
        self._renew_with = renew
        self._broken = False
        self.commits = 0
        self.aborts = 0
        self.renewals = 0

    async def close(self) -> None:
        await self._producer.stop()

    async def commit(
        self, records: Sequence[OutRecord], offsets: Mapping[TopicPartition, int]
    ) -> None:
        if not records and not offsets:
            return
        if self._broken:
            await self._renew()
        producer = self._producer
        await producer.begin_transaction()
        try:
            waits: list[Any] = await self._send_batches(records)
            if offsets:
                # In parallel with the produce requests: the offsets' two round trips
                # (AddOffsetsToTxn, TxnOffsetCommit) need not wait for the records' acks.
                # Brokers then answer some produce requests NOT_ENOUGH_REPLICAS (retried):
                # cheaper than serial offsets, see docs/operations.md (Kafka clusters).
                waits.append(producer.send_offsets_to_transaction(dict(offsets), self._group_id))
            # Every wait ends before the abort below, so no send is left running past it.
            for result in await asyncio.gather(*waits, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
            await producer.commit_transaction()
        except ProducerFenced as exc:
            self.aborts += 1
            self._broken = True  # no abort possible: the broker ended the transaction already
            log.error("checkpoint failed, transactional producer fenced: %s", exc)
            raise CheckpointError(str(exc)) from exc
        except (TimeoutError, KafkaError, OSError) as exc:
            self.aborts += 1
            log.warning("checkpoint aborted: %s", exc)
            try:
                await producer.abort_transaction()
            except Exception as abort_exc:  # noqa: BLE001 - fenced, closed or in a fatal state
                log.warning("abort after failed checkpoint also failed: %s", abort_exc)
                self._broken = True
            raise CheckpointError(str(exc)) from exc
        self.commits += 1

    async def _renew(self) -> None:
        """Replace the unusable producer; CheckpointError when that fails too (try again later)."""
        if self._renew_with is None:
            raise CheckpointError("the transactional producer is fenced and cannot be replaced")
        with contextlib.suppress(Exception):
            await self._producer.stop()
        producer = self._renew_with()
        try:
            await producer.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise CheckpointError(f"replacing the transactional producer failed: {exc}") from exc
        self._producer = producer
        self._broken = False
        self.renewals += 1
        log.warning("transactional producer replaced after it was fenced")

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
