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

Compaction keeps the newest record per key; spans below the committed offset are dropped
when the entry is read. Records that cannot be read are reported and
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

from connector.config import KafkaSettings
from connector.kafka.admin import partition_ids
from connector.kafka.clients import connection_kwargs, make_producer

log = logging.getLogger(__name__)

VERSION = 1
UNBOUNDED = 2**63 - 1
Coord = tuple[str, int]  # (topic, partition) of the input


@dataclass(slots=True)
class Span:
    """Offsets ``[first, end)`` may have been created since ``since``.

    ``fences``: per loop, a request created before any of them (a lookup newest first can
    stop there). ``resolved``: loops already searched for this span after a crash; what was
    found is in ``JournalEntry.adopted``, the rest was not created before the search.
    ``mine``: written by this process (never read back from the topic).
    """

    first: int
    end: int
    since: float
    fences: dict[str, str] = field(default_factory=dict)
    resolved: set[str] = field(default_factory=set)
    mine: bool = False
    settled: bool = False  # its creates are over: each made one is in ``adopted``

    def covers(self, offset: int) -> bool:
        return self.first <= offset < self.end


@dataclass(slots=True)
class JournalEntry:
    """What one input partition may have on HITL.sh that its committed offset does not show."""

    topic: str
    partition: int
    spans: list[Span] = field(default_factory=list)
    # offset → (request id, timeout_at, ident): requests created (or found) not committed yet
    adopted: dict[int, tuple[str, str | None, str]] = field(default_factory=dict)
    readable: bool = True


def journal_key(group: str, topic: str, partition: int) -> bytes:
    return orjson.dumps([group, topic, partition])


# Past this many uncommitted requests, a record lists none and keeps its settled spans
# instead (a crash then looks them up): the record stays far below Kafka's 1 MiB limit.
MAX_ADOPTED = 5_000


def encode(group: str, entry: JournalEntry) -> bytes:
    listed = len(entry.adopted) <= MAX_ADOPTED
    spans = [s for s in entry.spans if not (listed and s.settled)]
    return orjson.dumps(
        {
            "v": VERSION,
            "group": group,
            "topic": entry.topic,
            "partition": entry.partition,
            "spans": [
                {
                    "first": s.first,
                    "end": s.end,
                    "since": s.since,
                    "fences": s.fences,
                    "resolved": sorted(s.resolved),
                }
                for s in spans
            ],
            "adopted": {str(o): list(a) for o, a in entry.adopted.items()} if listed else {},
        }
    )


class JournalError(ValueError):
    """A journal record that cannot be read; the message says what is wrong with it."""


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise JournalError(f"{name} is not a non-negative integer")
    return value


def _strings(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise JournalError(f"{name} is not an object of strings")
    return value


def _span(doc: Any) -> Span:
    if not isinstance(doc, dict):
        raise JournalError("a span is not an object")
    first, end = _int(doc.get("first"), "first"), _int(doc.get("end"), "end")
    since = doc.get("since")
    if not isinstance(since, int | float) or isinstance(since, bool) or since < 0:
        raise JournalError("since is not a timestamp")
    resolved = doc.get("resolved")
    if not isinstance(resolved, list) or not all(isinstance(x, str) for x in resolved):
        raise JournalError("resolved is not a list of strings")
    if end < first:
        raise JournalError("end is before first")
    return Span(first, end, float(since), _strings(doc.get("fences"), "fences"), set(resolved))


def _adopted(doc: Any) -> dict[int, tuple[str, str | None, str]]:
    if not isinstance(doc, dict):
        raise JournalError("adopted is not an object")
    out: dict[int, tuple[str, str | None, str]] = {}
    for offset, value in doc.items():
        if not (isinstance(offset, str) and offset.isdigit()):
            raise JournalError("an adopted offset is not a number")
        if not (
            isinstance(value, list)
            and len(value) == 3
            and isinstance(value[0], str)
            and (value[1] is None or isinstance(value[1], str))
            and isinstance(value[2], str)
        ):
            raise JournalError("an adopted request is not [id, timeout_at, ident]")
        out[int(offset)] = (value[0], value[1], value[2])
    return out


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
    spans = doc.get("spans")
    if not isinstance(spans, list):
        raise JournalError("spans is not a list")
    entry = JournalEntry(
        topic,
        _int(doc.get("partition"), "partition"),
        [_span(s) for s in spans],
        _adopted(doc.get("adopted")),
    )
    return group, entry


class Journal:
    """Writes and reads the journal topic. ``start()`` before use; ``stop()`` twice is fine."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self._kafka = kafka
        self._topic = topic
        self._group = kafka.group_id
        self._producer: Any = None
        self._wait = 2 * kafka.request_timeout_ms / 1000

    async def start(self) -> None:
        # No linger: every write is awaited (or raced) by the creates behind it.
        kafka = self._kafka.model_copy(update={"producer_linger_ms": 0})
        self._producer = make_producer(kafka, role="submitter-journal")
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
        records = [
            (journal_key(self._group, e.topic, e.partition), encode(self._group, e))
            for e in entries
        ]
        # Bounded: a write that hangs (broker unreachable) fails, and the creates wait.
        async with asyncio.timeout(self._wait):
            futures = [await producer.send(self._topic, v, key=k) for k, v in records]
            if futures:
                await asyncio.gather(*futures)

    async def load(self, wanted: set[Coord], wait: float = 30.0) -> dict[Coord, JournalEntry]:
        """The newest entry of each ``wanted`` input partition (read to the current end)."""
        if not wanted:
            return {}
        async with asyncio.timeout(wait + self._wait):
            return await self._load(wanted, wait)

    async def _load(self, wanted: set[Coord], wait: float) -> dict[Coord, JournalEntry]:
        keys = {journal_key(self._group, t, p): (t, p) for t, p in wanted}
        consumer = AIOKafkaConsumer(
            **connection_kwargs(self._kafka, role="submitter-journal"),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        tps = [
            TopicPartition(self._topic, p) for p in await partition_ids(self._kafka, self._topic)
        ]
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
            return JournalEntry(topic, partition)
        try:
            group, entry = decode(record.value)
            if (group, entry.topic, entry.partition) != (self._group, topic, partition):
                raise JournalError("its value does not match its key")
            return entry
        except JournalError as exc:
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
            # Conservative: anything from here on may exist, created since the record's time.
            return JournalEntry(topic, partition, [Span(0, UNBOUNDED, since)], readable=False)
