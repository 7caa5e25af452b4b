"""Records produced as whole record batches, one per partition, sent without linger.

Both producers on hot paths (the checkpoint's and the gateway's) already hold every record of
a round when they produce, so they build the record batches themselves instead of a ``send()``
per record (metadata wait, partitioner, accumulator per record was a visible share of the CPU)
and close each builder before handing it over: a closed batch is drained at once, where an
open one would wait out the producer's ``linger_ms`` first (aiokafka's documented way to take
full control of a batch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError


class BatchWriter:
    """Collects records per (topic, partition); ``send`` hands the batches to the producer."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._open: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[tuple[str, int], Any]] = []  # in order, before the open ones

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        where = (topic, partition)
        builder = self._open.get(where)
        if builder is None:
            builder = self._open[where] = self._producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is not None:
            return
        # Full: it goes out first, and a new builder takes the record.
        self._full.append((where, builder))
        builder = self._open[where] = self._producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
            raise KafkaError("record larger than the producer's max batch size")

    async def send(self) -> list[asyncio.Future[Any]]:
        """Send every batch (per partition in the order added); their delivery futures."""
        producer = self._producer
        futures: list[asyncio.Future[Any]] = []
        for (topic, partition), builder in [*self._full, *self._open.items()]:
            builder.close()
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        self._full, self._open = [], {}
        return futures
