"""The submit journal: a compacted Kafka topic saying which source records may have been created.

HITL.sh documents no idempotency key, so after a crash the only way to know whether an
uncommitted record was already sent to HITL.sh is to look; and looking costs API calls. The
journal keeps the looking small: before a batch's creates leave, the submitter writes one
record per partition (key = consumer group, topic, partition) saying "offsets
``[first, end)`` of this partition may have been created since ``since``, and ``fences``
(per loop, a request created before any of them) bounds where to stop looking". The write
is acknowledged by all in-sync replicas before the first create is sent. A restarted (or
newly assigned) submitter reads the entries of its partitions and looks up only those
offsets, only in that time window (``connector.submitter.recovery``).

Compaction keeps the newest record per key; an entry older than the committed offset is
harmless (its offsets are never read again). Records that cannot be read are reported and
replaced by a conservative window (every offset of the partition, from the record's
timestamp), never a crash. This module owns the topic's record format and its I/O; what to
look up and when is ``recovery``'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from connector.config import Settings
from connector.kafka.admin import partition_ids
from connector.kafka.clients import connection_kwargs, make_producer

log = logging.getLogger(__name__)

VERSION = 1
UNBOUNDED = 2**63 - 1
Coord = tuple[str, int]  # (topic, partition) of the input


@dataclass(slots=True)
class JournalEntry:
    """Offsets ``[first, end)`` of one input partition may have been created since ``since``."""

    topic: str
    partition: int
    first: int
    end: int
    since: float  # wall-clock seconds, taken before the first of these creates was sent
    fences: dict[str, str] = field(default_factory=dict)  # loop id → an older request id
    readable: bool = True

    def covers(self, offset: int) -> bool:
        return self.first <= offset < self.end


def journal_key(group: str, topic: str, partition: int) -> bytes:
    return orjson.dumps([group, topic, partition])


def encode(group: str, entry: JournalEntry) -> bytes:
    return orjson.dumps(
        {
            "v": VERSION,
            "group": group,
            "topic": entry.topic,
            "partition": entry.partition,
            "first": entry.first,
            "end": entry.end,
            "since": entry.since,
            "fences": entry.fences,
        }
    )


class JournalError(ValueError):
    """A journal record that cannot be read; the message says what is wrong with it."""


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise JournalError(f"{name} is not a non-negative integer")
    return value


def decode(value: bytes) -> tuple[str, JournalEntry]:
    """``(group, entry)`` of one journal record; raises ``JournalError`` with the reason."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise JournalError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise JournalError("not a JSON object")
    if doc.get("v") != VERSION:
        raise JournalError(f"unknown version {doc.get('v')!r}")
    group, topic = doc.get("group"), doc.get("topic")
    if not isinstance(group, str) or not isinstance(topic, str):
        raise JournalError("group or topic is not a string")
    first, end = _int(doc.get("first"), "first"), _int(doc.get("end"), "end")
    since = doc.get("since")
    if not isinstance(since, int | float) or isinstance(since, bool) or since < 0:
        raise JournalError("since is not a timestamp")
    fences = doc.get("fences")
    if not isinstance(fences, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in fences.items()
    ):
        raise JournalError("fences is not an object of strings")
    if end < first:
        raise JournalError("end is before first")
    entry = JournalEntry(topic, _int(doc.get("partition"), "partition"), first, end, since, fences)
    return group, entry


class Journal:
    """Writes and reads the journal topic. ``start()`` before use; ``stop()`` twice is fine."""

    def __init__(self, settings: Settings) -> None:
        self._s = settings
        self._topic = settings.topics.journal
        self._group = settings.kafka.group_id
        self._producer: Any = None
        self.unreadable = 0  # records reported as unreadable since start

    async def start(self) -> None:
        self._producer = make_producer(self._s.kafka, role="submitter-journal")
        await self._producer.start()

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def record(self, entries: Iterable[JournalEntry]) -> None:
        """Write ``entries`` and wait until every one is acknowledged (acks=all)."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("Journal.start() has not been called")
        futures = [
            await producer.send(
                self._topic,
                encode(self._group, e),
                key=journal_key(self._group, e.topic, e.partition),
            )
            for e in entries
        ]
        if futures:
            await asyncio.gather(*futures)

    async def load(self, wanted: set[Coord], wait: float = 30.0) -> dict[Coord, JournalEntry]:
        """The newest entry of each ``wanted`` input partition (read to the current end)."""
        if not wanted:
            return {}
        keys = {journal_key(self._group, t, p): (t, p) for t, p in wanted}
        consumer = AIOKafkaConsumer(
            **connection_kwargs(self._s.kafka, role="submitter-journal"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        tps = [TopicPartition(self._topic, p) for p in await partition_ids(self._s, self._topic)]
        if not tps:
            return {}
        await consumer.start()
        found: dict[Coord, JournalEntry] = {}
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            todo = {tp for tp in tps if ends[tp] > 0}
            deadline = time.monotonic() + wait
            while todo and time.monotonic() < deadline:
                batch = await consumer.getmany(*todo, timeout_ms=500)
                for tp, records in batch.items():
                    for r in records:
                        coord = keys.get(r.key) if r.key is not None else None
                        if coord is not None:
                            found[coord] = self._read(r, coord)
                        if r.offset + 1 >= ends[tp]:
                            todo.discard(tp)
            if todo:
                raise TimeoutError(f"journal {self._topic} not read to its end in {wait:.0f}s")
        finally:
            await consumer.stop()
        return found

    def _read(self, record: Any, coord: Coord) -> JournalEntry:
        topic, partition = coord
        if record.value is None:  # a tombstone: nothing in flight
            return JournalEntry(topic, partition, 0, 0, 0.0)
        try:
            group, entry = decode(record.value)
            if (group, entry.topic, entry.partition) != (self._group, topic, partition):
                raise JournalError("its value does not match its key")
            return entry
        except JournalError as exc:
            self.unreadable += 1
            since = max(0.0, record.timestamp / 1000) if record.timestamp else 0.0
            log.warning(
                "unreadable submit journal record %s-%d@%d (%s): every uncommitted record of "
                "%s-%d is looked up on HITL.sh before it is created",
                self._topic,
                record.partition,
                record.offset,
                exc,
                topic,
                partition,
            )
            return JournalEntry(topic, partition, 0, UNBOUNDED, since, readable=False)
