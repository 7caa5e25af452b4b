"""The ``hitl.requests`` table, restored and tailed per partition (as Kafka Streams does).

For each ``hitl.callbacks`` partition the resolver owns, this holds the same partition of
``hitl.requests`` in memory: request_id → RequestEntry. A tombstone deletes a row and
remembers the id as resolved, so a late duplicate callback is recognised, and a stale row
re-written after a crash cannot bring a resolved request back. A partition is *ready* once it
has been read up to the end offset seen when it was assigned.

Owns the table consumer only (no group, manual assignment, read_committed); never commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from connector.config import Settings
from connector.kafka.clients import make_consumer
from connector.records import RequestEntry

log = logging.getLogger(__name__)

RESOLVED_MEMORY = 500_000


class RequestTable:
    """In-memory view of the assigned ``hitl.requests`` partitions."""

    def __init__(self, settings: Settings) -> None:
        self._s = settings
        self._topic = settings.topics.requests
        self._rows: dict[int, dict[str, RequestEntry]] = {}
        self._resolved: OrderedDict[str, None] = OrderedDict()
        self._targets: dict[int, int] = {}
        self._ready: set[int] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._assign_lock = asyncio.Lock()
        self.bad_rows = 0

    async def start(self) -> None:
        self._consumer = make_consumer(self._s.kafka, role="resolver-table", group_id=None)
        await self._consumer.start()
        # Let aiokafka's no-group coordinator task start: stopping it before it first ran
        # raises CancelledError from consumer.stop().
        await self._consumer.topics()
        self._task = asyncio.create_task(self._run(), name="request-table")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def assign(self, partitions: Iterable[int]) -> None:
        """Hold exactly these partitions; new ones are restored from the beginning."""
        assert self._consumer is not None, "start() first"
        wanted = set(partitions)
        async with self._assign_lock:
            for p in set(self._rows) - wanted:
                self._rows.pop(p, None)
                self._targets.pop(p, None)
                self._ready.discard(p)
            new = wanted - set(self._rows)
            tps = [TopicPartition(self._topic, p) for p in sorted(wanted)]
            self._consumer.assign(tps)
            if not new:
                return
            new_tps = [TopicPartition(self._topic, p) for p in sorted(new)]
            await self._consumer.seek_to_beginning(*new_tps)
            ends = await self._consumer.end_offsets(new_tps)
            for tp in new_tps:
                self._rows[tp.partition] = {}
                self._targets[tp.partition] = ends[tp]
                if ends[tp] == 0:
                    self._ready.add(tp.partition)
            log.info("restoring request table partitions %s", sorted(new))
            self._changed.set()

    def ready(self, partition: int) -> bool:
        return partition in self._ready

    async def wait_ready(self, partitions: Iterable[int], within: float) -> bool:
        wanted = set(partitions)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not wanted <= self._ready:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self._changed.wait()
            except TimeoutError:
                pass
        return True

    def get(self, partition: int, request_id: str) -> RequestEntry | None:
        return self._rows.get(partition, {}).get(request_id)

    def was_resolved(self, request_id: str) -> bool:
        return request_id in self._resolved

    def resolve(self, partition: int, request_id: str) -> None:
        """Forget the row now; its tombstone, written in the same transaction, follows."""
        self._rows.get(partition, {}).pop(request_id, None)
        self._remember(request_id)

    def rows(self, partition: int) -> Iterator[RequestEntry]:
        return iter(list(self._rows.get(partition, {}).values()))

    def oldest_submitted(self) -> float | None:
        """Epoch seconds of the oldest pending request's submission (None when empty)."""
        oldest: str | None = None
        for rows in self._rows.values():
            for entry in rows.values():
                if oldest is None or entry.submitted_at < oldest:
                    oldest = entry.submitted_at
        if oldest is None:
            return None
        try:
            return datetime.fromisoformat(oldest.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None

    def size(self) -> int:
        return sum(len(r) for r in self._rows.values())

    def partitions(self) -> set[int]:
        return set(self._rows)

    def _remember(self, request_id: str) -> None:
        self._resolved[request_id] = None
        self._resolved.move_to_end(request_id)
        while len(self._resolved) > RESOLVED_MEMORY:
            self._resolved.popitem(last=False)

    def _apply(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        rows = self._rows.get(partition)
        if rows is None or key is None:
            return
        request_id = key.decode("utf-8", "replace")
        if value is None:
            rows.pop(request_id, None)
            self._remember(request_id)
            return
        if request_id in self._resolved:
            return
        try:
            data: Any = orjson.loads(value)
            rows[request_id] = RequestEntry.from_json(data)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.bad_rows += 1
            log.warning("skipping unreadable hitl.requests row for %s", request_id)

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            if not consumer.assignment():
                await asyncio.sleep(0.1)
                continue
            try:
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            except KafkaError as exc:
                log.warning("request table fetch failed: %s", exc)
                await asyncio.sleep(1)
                continue
            async with self._assign_lock:
                for tp, records in batch.items():
                    for record in records:
                        self._apply(tp.partition, record.key, record.value)
                newly_ready = False
                for p, target in list(self._targets.items()):
                    if p in self._ready:
                        continue
                    tp = TopicPartition(self._topic, p)
                    if tp in consumer.assignment() and await consumer.position(tp) >= target:
                        self._ready.add(p)
                        newly_ready = True
                        log.info(
                            "request table partition %d restored (%d rows)", p, len(self._rows[p])
                        )
                if batch or newly_ready:
                    self._changed.set()
