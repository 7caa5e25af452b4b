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
import math
import struct
from binascii import a2b_base64
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from connector.config import KafkaSettings, ResolverSettings
from connector.kafka.clients import make_consumer
from connector.records import RequestEntry, SourceRef, epoch

log = logging.getLogger(__name__)


# A row is one packed ``bytes`` object, not a RequestEntry (with its SourceRef, options list,
# a dozen str/int objects and per-row copies of the loop id, topic and response type): about
# a third of the memory. Layout: a fixed head (due time, source offset/timestamp/partition,
# indexes into the table's list of shared values for loop id, topic, response type, options
# and default response, flags, and the lengths of the variable fields) followed by event id,
# key, timeout_at, submitted_at and traceparent as UTF-8. The request id is the dict key.
# ``get`` unpacks a RequestEntry on demand; the due time is read straight from the head.
_HEAD: Final = struct.Struct("<dqqiHHHHHBIIIII")
_DUE_AT: Final = struct.Struct("<d").unpack_from
_F_TOKEN, _F_NO_TS, _F_NO_KEY, _F_NO_TIMEOUT, _F_NO_TRACE = 1, 2, 4, 8, 16
_MAX_SHARED: Final = 65_535
_INF: Final = math.inf
_UTF8: Final = "utf-8"
_SP: Final = "surrogatepass"
Row = bytes


class RequestTable:
    """In-memory view of the assigned ``hitl.requests`` partitions."""

    def __init__(self, kafka: KafkaSettings, topic: str, resolver: ResolverSettings) -> None:
        self._kafka = kafka
        self._r = resolver
        self._topic = topic  # topics.requests
        # partition → request_id → Row (RequestEntry values are accepted too: a test seam)
        self._rows: dict[int, dict[str, Row | RequestEntry]] = {}
        self._values: list[Any] = []  # shared values, referenced by index from rows
        self._value_index: dict[Any, int] = {}
        self._static_index: dict[Any, tuple[int, int, int, int, int]] = {}
        # No row is due before this (rows read since the last scan lower it); -inf: unknown.
        self._next_due = -_INF
        self._resolved: OrderedDict[str, None] = OrderedDict()
        self._targets: dict[int, int] = {}
        self._ready: set[int] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._assign_lock = asyncio.Lock()
        # Set by the resolver: partitions whose callbacks are not all joined yet.
        self.lag_probe: Callable[[], Awaitable[set[int]]] | None = None

    async def start(self) -> None:
        self._consumer = make_consumer(self._kafka, role="resolver-table", group_id=None)
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

    async def restore_again(self, partitions: Iterable[int]) -> None:
        """Forget every row and every resolved id, then restore ``partitions`` from the log.

        After an aborted transaction: requests it resolved (in memory only) must come back,
        and the ids it remembered as resolved must not make their callbacks look like late
        duplicates. The committed tombstones, re-read while restoring, rebuild that memory.
        """
        await self.assign([])
        self._resolved.clear()
        await self.assign(partitions)

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
        row = self._rows.get(partition, {}).get(request_id)
        return None if row is None else self._entry(request_id, row)

    def was_resolved(self, request_id: str) -> bool:
        return request_id in self._resolved

    def resolve(self, partition: int, request_id: str) -> None:
        """Forget the row now; its tombstone, written in the same transaction, follows."""
        self._rows.get(partition, {}).pop(request_id, None)
        self._remember(request_id)

    def rows(self, partition: int) -> Iterator[RequestEntry]:
        items = list(self._rows.get(partition, {}).items())
        return iter([self._entry(rid, row) for rid, row in items])

    def due(self, now: float, skip: Collection[int] = ()) -> list[RequestEntry]:
        """Rows overdue at ``now``: still here at ``timeout_at + reconcile_grace_seconds`` or
        (when set) ``reconcile_max_wait_seconds`` after submission.

        Each row's due time is computed once, when it is read, and kept in its head; the
        earliest due time of the table is tracked, so a pass before it costs nothing, and
        otherwise this is one scan of floats (no timestamps parsed)."""
        if now < self._next_due:
            return []
        hits: list[tuple[str, Row | RequestEntry]] = []
        next_due = now if skip else _INF  # skipped rows may be due: look again next time
        for partition, rows in list(self._rows.items()):
            if partition in skip:
                continue
            for rid, row in rows.items():
                due = _DUE_AT(row)[0] if isinstance(row, bytes) else self._due_of(row)
                if due <= now:
                    hits.append((rid, row))
                elif due < next_due:
                    next_due = due
        self._next_due = min(next_due, _INF if not hits else now)
        return [self._entry(rid, row) for rid, row in hits]

    def oldest_submitted(self) -> float | None:
        """Epoch seconds of the oldest pending request's submission (None when empty).

        Rows are kept in the order they were written (per partition), which is the order of
        submission, so the oldest is the first row of some partition: O(partitions), not
        O(rows). (Deleting rows leaves holes at the front of a dict that iteration skips;
        they are reclaimed when the dict grows again, so the cost stays amortised.)
        """
        oldest: float | None = None
        for rows in self._rows.values():
            first = next(iter(rows.values()), None)
            if first is None:
                continue
            ts = epoch(self._entry("", first).submitted_at)
            if ts is not None and (oldest is None or ts < oldest):
                oldest = ts
        return oldest

    def request_ids(self, partition: int) -> list[str]:
        """The request ids pending in ``partition`` (no rows decoded)."""
        return list(self._rows.get(partition, {}))

    def size(self) -> int:
        return sum(len(r) for r in self._rows.values())

    def partitions(self) -> set[int]:
        return set(self._rows)

    def _remember(self, request_id: str) -> None:
        self._resolved[request_id] = None
        self._resolved.move_to_end(request_id)
        while len(self._resolved) > self._r.resolved_memory:
            self._resolved.popitem(last=False)

    def _due_of(self, entry: RequestEntry) -> float:
        r = self._r
        due = _INF
        timeout_at = epoch(entry.timeout_at)
        if timeout_at is not None:
            due = timeout_at + r.reconcile_grace_seconds
        submitted = epoch(entry.submitted_at)
        if r.reconcile_max_wait_seconds is not None and submitted is not None:
            due = min(due, submitted + r.reconcile_max_wait_seconds)
        return due

    def _share(self, field: str, value: Any) -> int:
        """The index of ``value`` in the shared values (added when new). Keyed by type as
        well (``1``, ``1.0`` and ``True`` are equal in Python, not in JSON); unhashable values
        (options, a structured default) by their JSON."""
        try:
            lookup: Any = (field, type(value), value)
            index = self._value_index.get(lookup)
        except TypeError:
            lookup = (field, orjson.dumps(value))
            index = self._value_index.get(lookup)
        if index is None:
            index = self._add_value(value)
            self._value_index[lookup] = index
        return index

    def _statics(self, data: Any, src: Any) -> tuple[int, int, int, int, int]:
        """Shared-value indexes of loop id, topic, response type, options and default
        response — the same for nearly every row, so looked up once per distinct set."""
        loop_id, topic = str(data["loop_id"]), str(src["topic"])
        response_type = str(data["response_type"])
        options = list(data.get("options") or [])
        default = data.get("default_response")
        lookup = (loop_id, topic, response_type, orjson.dumps(options), orjson.dumps(default))
        found = self._static_index.get(lookup)
        if found is None:
            share = self._share
            found = (
                share("loop", loop_id),
                share("topic", topic),
                share("type", response_type),
                share("options", options),
                share("default", default),
            )
            if len(self._static_index) < _MAX_SHARED:
                self._static_index[lookup] = found
        return found

    def _add_value(self, value: Any) -> int:
        if len(self._values) >= _MAX_SHARED:
            raise OverflowError("too many distinct shared values")
        self._values.append(value)
        return len(self._values) - 1

    def _decode(self, request_id: str, value: bytes) -> Row | RequestEntry:
        """A row from a ``hitl.requests`` value, validated as ``RequestEntry.from_json``."""
        data: Any = orjson.loads(value)
        if str(data["request_id"]) != request_id:  # never written so; keep it exact anyway
            return RequestEntry.from_json(data)
        src = data["source"]
        ts = src.get("timestamp_ms")
        key_text = data.get("key")
        key = None if key_text is None else a2b_base64(key_text)  # = key_from_text
        timeout_at = data.get("timeout_at")
        submitted_at = str(data["submitted_at"])
        traceparent = data.get("traceparent")
        event_id = str(data["event_id"]).encode(_UTF8, _SP)
        r = self._r
        due = _INF
        timeout_epoch = epoch(timeout_at)
        if timeout_epoch is not None:
            due = timeout_epoch + r.reconcile_grace_seconds
        if r.reconcile_max_wait_seconds is not None:
            submitted = epoch(submitted_at)
            if submitted is not None:
                due = min(due, submitted + r.reconcile_max_wait_seconds)
        flags = (
            (_F_TOKEN if data.get("callback_token", False) else 0)
            | (_F_NO_TS if ts is None else 0)
            | (_F_NO_KEY if key is None else 0)
            | (_F_NO_TIMEOUT if timeout_at is None else 0)
            | (_F_NO_TRACE if traceparent is None else 0)
        )
        timeout_b = b"" if timeout_at is None else str(timeout_at).encode(_UTF8, _SP)
        submitted_b = submitted_at.encode(_UTF8, _SP)
        trace_b = b"" if traceparent is None else str(traceparent).encode(_UTF8, _SP)
        key_b = key or b""
        try:
            head = _HEAD.pack(
                due,
                int(src["offset"]),
                0 if ts is None else int(ts),
                int(src["partition"]),
                *self._statics(data, src),
                flags,
                len(event_id),
                len(key_b),
                len(timeout_b),
                len(submitted_b),
                len(trace_b),
            )
        except (struct.error, OverflowError):  # out-of-range numbers, too many loops: rare
            return RequestEntry.from_json(data)
        if due < self._next_due:
            self._next_due = due
        return b"".join((head, event_id, key_b, timeout_b, submitted_b, trace_b))

    def _entry(self, request_id: str, row: Row | RequestEntry) -> RequestEntry:
        if not isinstance(row, bytes):
            return row
        (_, offset, ts, partition, loop, topic, rtype, options, default, flags, *lengths) = (
            _HEAD.unpack_from(row)
        )
        fields: list[bytes] = []
        pos = _HEAD.size
        for n in lengths:
            fields.append(row[pos : pos + n])
            pos += n
        event_id, key, timeout_at, submitted_at, traceparent = fields
        values = self._values
        return RequestEntry(
            request_id=request_id,
            event_id=event_id.decode(_UTF8, _SP),
            key=None if flags & _F_NO_KEY else key,
            loop_id=values[loop],
            source=SourceRef(values[topic], partition, offset, None if flags & _F_NO_TS else ts),
            response_type=values[rtype],
            options=values[options],
            default_response=values[default],
            timeout_at=None if flags & _F_NO_TIMEOUT else timeout_at.decode(_UTF8, _SP),
            submitted_at=submitted_at.decode(_UTF8, _SP),
            traceparent=None if flags & _F_NO_TRACE else traceparent.decode(_UTF8, _SP),
            callback_token=bool(flags & _F_TOKEN),
        )

    def _apply_batch(self, partition: int, records: Iterable[Any]) -> None:
        """Apply fetched records of one partition in order (no awaits, no per-record calls
        beyond decoding)."""
        rows = self._rows.get(partition)
        if rows is None:
            return
        resolved = self._resolved
        for record in records:
            key = record.key
            if key is None:
                continue
            request_id = key.decode("utf-8", "replace")
            value = record.value
            if value is None:
                rows.pop(request_id, None)
                self._remember(request_id)
                continue
            if request_id in resolved:
                continue
            try:
                rows[request_id] = self._decode(request_id, value)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
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
                    self._apply_batch(tp.partition, records)
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
