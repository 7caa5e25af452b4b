"""Crash-safe creates without an idempotency key: journal records and lookups (HTTP faked)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from connector.config import Settings
from connector.errors import HitlAmbiguousError
from connector.metrics import Metrics
from connector.submitter.batch import BatchStats
from connector.submitter.journal import (
    MAX_ADOPTED,
    UNBOUNDED,
    JournalEntry,
    JournalError,
    Span,
    decode,
    encode,
)
from connector.submitter.recovery import Adopted, Recovery, Sought, source_identity
from tests.support import make_processor

GROUP = "g1"
T0 = 1_800_000_000.0
TS = 1_700_000_000_000  # the records' timestamp (ms)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class FakeHitl:
    """A loop's requests, newest last in ``requests``; pages newest first like the sandbox."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    list_calls: int = 0
    creates: list[str] = field(default_factory=list)
    ambiguous_for: set[str] = field(default_factory=set)
    now: float = T0

    def add(self, offset: int | None, *, context: Any = "auto", group: str = GROUP) -> str:
        request_id = f"r{len(self.requests)}"
        if context == "auto":
            context = {
                "connector": {
                    "group": group,
                    "topic": "in",
                    "partition": 0,
                    "offset": offset,
                    "timestamp": TS,
                    "ident": source_identity(group, "in", 0, offset or 0, TS),
                }
            }
        self.now += 0.01
        self.requests.append({"id": request_id, "created_at": iso(self.now), "context": context})
        return request_id

    async def list_loop_requests(
        self, loop_id: str, *, limit: int = 100, offset: int = 0, deadline: float | None = None
    ) -> list[dict[str, Any]]:
        self.list_calls += 1
        return self.requests[::-1][offset : offset + limit]

    async def create_request(
        self,
        loop_id: str,
        body: dict[str, Any],
        *,
        idempotency_key: str,
        deadline: float | None = None,
    ) -> Any:
        await asyncio.sleep(0)
        conn = body["context"]["connector"]
        request_id = self.add(conn["offset"], context=body["context"])
        self.creates.append(idempotency_key)
        if idempotency_key in self.ambiguous_for:
            self.ambiguous_for.discard(idempotency_key)
            raise HitlAmbiguousError("reset after send", retry_after=0.5)
        return Made(request_id)


@dataclass
class Made:
    request_id: str
    timeout_at: str | None = None


def sought(offset: int, loop: str = "L1") -> Sought:
    return Sought(("in", 0), offset, loop, source_identity(GROUP, "in", 0, offset, TS))


def crashed(
    hitl: FakeHitl,
    first: int,
    end: int,
    since: float,
    fence: str | None,
    metrics: Metrics | None = None,
) -> Recovery:
    """A new process that read a journal entry left by a dead one."""
    recovery = Recovery(hitl, GROUP, skew_seconds=1.0, clock=lambda: hitl.now, metrics=metrics)
    fences = {"L1": fence} if fence else {}
    entry = JournalEntry("in", 0, [Span(first, end, since, fences)])
    recovery.load({("in", 0): entry}, [("in", 0)])
    return recovery


def recovered(metrics: Metrics, outcome: str) -> float:
    """``recovered_requests_total{outcome}`` from the registry."""
    labels = {"outcome": outcome}
    value = metrics.registry.get_sample_value("hitl_connector_recovered_requests_total", labels)
    return value or 0.0


def test_identity_is_scoped_to_group_and_record_and_header_safe() -> None:
    a = source_identity("g1", "in", 0, 5, TS)
    assert a == source_identity("g1", "in", 0, 5, TS)
    others = {
        source_identity("g2", "in", 0, 5, TS),  # another pipeline
        source_identity("g1", "in", 1, 5, TS),  # another partition
        source_identity("g1", "in", 0, 5, TS + 1),  # a re-created topic, same offset
    }
    assert len({a} | others) == 4
    assert a.isascii() and all(c.isalnum() or c == "-" for c in a)


def test_journal_records_round_trip_and_bad_ones_say_why() -> None:
    entry = JournalEntry(
        "in",
        3,
        [Span(10, 20, T0, {"L1": "r9"}, {"L2"})],
        {11: ("r10", None, "i11"), 12: ("r11", "t", "i12")},
    )
    group, back = decode(encode(GROUP, entry))
    assert group == GROUP
    assert (back.spans[0].first, back.spans[0].end, back.spans[0].resolved) == (10, 20, {"L2"})
    assert back.adopted == entry.adopted
    good = orjson.loads(encode(GROUP, entry))
    bad = [
        (b"{nope", "not JSON"),
        (b"[]", "not a JSON object"),
        (orjson.dumps({**good, "v": 9}), "unknown version"),
        (orjson.dumps({**good, "spans": [{"first": 5, "end": 1}]}), "since"),
        (orjson.dumps({**good, "spans": [{**good["spans"][0], "end": 1}]}), "end is before"),
        (orjson.dumps({**good, "adopted": {"x": ["r", None, "i"]}}), "offset is not a number"),
        (orjson.dumps({**good, "adopted": {"1": ["r", None]}}), "[id, timeout_at, ident]"),
        (orjson.dumps({**good, "partition": -1}), "partition"),
    ]
    for raw, why in bad:
        with pytest.raises(JournalError, match=why.replace("[", r"\[")):
            decode(raw)


async def test_a_crash_is_looked_up_once_and_stops_at_the_fence() -> None:
    hitl = FakeHitl()
    for i in range(450):  # older requests of the loop, committed long ago
        hitl.add(1000 + i)
    fence = hitl.requests[-1]["id"]
    since = hitl.now
    made = {o: hitl.add(o) for o in range(100, 180)}  # created before the crash, not committed
    recovery = crashed(hitl, 100, 200, since, fence)
    found = await recovery.resolve([sought(o) for o in range(100, 150)])
    assert {o: found[sought(o).ident].request_id for o in range(100, 150)} == {
        o: made[o] for o in range(100, 150)
    }
    assert hitl.list_calls == 1  # 80 since the fence: one page of 100 reaches it
    # The rest of the span: found ones from memory, the others are known not created.
    later = await recovery.resolve([sought(o) for o in range(150, 200)])
    assert len(later) == 30 and hitl.list_calls == 1


async def test_without_a_fence_the_time_window_bounds_the_lookup() -> None:
    hitl = FakeHitl()
    for i in range(1000):
        hitl.add(5000 + i)
    since = hitl.now + 0.5 + 1.0  # skew is 1 s: requests older than since - 1 s end it
    hitl.now += 0.5
    hitl.add(100)
    recovery = crashed(hitl, 100, 200, since, None)
    found = await recovery.resolve([sought(100), sought(101)])
    assert list(found) == [sought(100).ident]
    assert hitl.list_calls <= 2


async def test_contexts_that_cannot_be_read_are_counted_and_skipped() -> None:
    hitl = FakeHitl()
    hitl.add(None, context="not an object")
    hitl.add(None, context={"connector": ["x"]})
    hitl.add(None, context={"connector": {"group": GROUP, "topic": "in", "partition": 0}})
    forged = {
        "group": GROUP,
        "topic": "in",
        "partition": 0,
        "offset": 7,
        "timestamp": TS,
        "ident": "hkc1-x",
    }
    hitl.add(None, context={"connector": forged})
    hitl.add(7, group="other-deployment")  # another pipeline's request for the same record
    hitl.add(None, context=None)  # not created by a connector at all
    metrics = Metrics()
    recovery = crashed(hitl, 0, 10, T0 - 100, None, metrics)
    found = await recovery.resolve([sought(7)])
    assert found == {} and recovered(metrics, "unreadable") == 4


async def test_ambiguous_create_is_looked_up_not_repeated() -> None:
    hitl = FakeHitl()
    settings = Settings(loops={"default": "L1"}, kafka={"group_id": GROUP})  # type: ignore[arg-type]
    metrics = Metrics()
    recovery = Recovery(hitl, GROUP, clock=lambda: hitl.now, default_loop="L1", metrics=metrics)
    processor = make_processor(settings, hitl, clock=lambda: hitl.now, recovery=recovery)
    hitl.ambiguous_for.add(source_identity(GROUP, "in", 0, 1, TS))
    records = [Rec(o, orjson.dumps({"id": f"e{o}", "content": "x"})) for o in range(3)]
    plan = (await processor.process({"tp": records}, BatchStats()))["tp"]
    assert plan.commit_offset == 1 and plan.seek_to == 1
    assert len(hitl.creates) == 3  # 0 and 2 created, 1 sent and its answer lost
    again = (await processor.process({"tp": records[1:]}, BatchStats()))["tp"]
    assert again.commit_offset == 3
    assert len(hitl.creates) == 3 and hitl.list_calls == 1  # 1 found, 2 reused from memory
    rows = [orjson.loads(r.value or b"") for r in again.outputs]
    assert [r["request_id"] for r in rows] == ["r1", "r2"]
    assert recovered(metrics, "reused") == 1 and recovered(metrics, "adopted") == 1


async def test_journal_failure_sends_nothing() -> None:
    class Broken:
        async def record(self, entries: Any) -> None:
            raise RuntimeError("broker gone")

    hitl = FakeHitl()
    settings = Settings(loops={"default": "L1"})  # type: ignore[arg-type]
    processor = make_processor(settings, hitl, journal=Broken())
    records = [Rec(o, orjson.dumps({"id": f"e{o}", "content": "x"})) for o in range(3)]
    plan = (await processor.process({"tp": records}, BatchStats()))["tp"]
    assert plan.commit_offset is None and plan.seek_to == 0 and hitl.creates == []


def test_settled_and_committed_spans_leave_the_journal() -> None:
    recovery = Recovery(None, GROUP, clock=lambda: T0)
    (entry,) = recovery.journal_entries({("in", 0): (0, 100)})
    assert [(s.first, s.end) for s in entry.spans] == [(0, 100)]
    recovery.created(sought(5), Adopted("r5", None))
    recovery.settle([("in", 0)])
    (entry,) = recovery.journal_entries({})  # dirty: written at the next batch
    _, written = decode(encode(GROUP, entry))
    assert written.spans == [] and written.adopted == {5: ("r5", None, sought(5).ident)}
    recovery.committed({("in", 0): 6})
    assert recovery.known(sought(5).ident) is None


def test_too_many_uncommitted_requests_keep_the_span_instead_of_listing_them() -> None:
    recovery = Recovery(None, GROUP, clock=lambda: T0)
    recovery.journal_entries({("in", 0): (0, MAX_ADOPTED + 1)})
    for o in range(MAX_ADOPTED + 1):
        recovery.created(sought(o), Adopted(f"r{o}", None))
    recovery.settle([("in", 0)])
    (entry,) = recovery.journal_entries({})
    raw = encode(GROUP, entry)
    _, written = decode(raw)
    assert [(s.first, s.end) for s in written.spans] == [(0, MAX_ADOPTED + 1)]
    assert written.adopted == {} and len(raw) < 10_000


def test_an_unreadable_journal_record_makes_every_offset_suspect() -> None:
    entry = JournalEntry("in", 0, [Span(0, UNBOUNDED, T0)], readable=False)
    recovery = Recovery(None, GROUP)
    recovery.load({("in", 0): entry}, [("in", 0)])
    assert recovery._suspect(sought(10**9))


@dataclass
class Rec:
    offset: int
    value: bytes
    topic: str = "in"
    partition: int = 0
    key: bytes | None = None
    timestamp: int = 1_700_000_000_000
    headers: list[tuple[str, bytes]] = field(default_factory=list)


async def test_a_lookup_in_one_loop_leaves_ambiguous_creates_of_another_loop_in_doubt() -> None:
    hitl = FakeHitl()
    recovery = Recovery(hitl, GROUP, clock=lambda: hitl.now)
    recovery.journal_entries({("in", 0): (0, 2)})
    recovery.ambiguous(sought(0, "L1"))
    recovery.ambiguous(sought(1, "L2"))
    assert await recovery.resolve([sought(0, "L1")]) == {}
    assert hitl.list_calls == 1
    await recovery.resolve([sought(1, "L2")])  # still in doubt: looked up in its own loop
    assert hitl.list_calls == 2


class RecordingJournal:
    def __init__(self, hitl: FakeHitl) -> None:
        self.hitl = hitl
        self.writes: list[tuple[int, list[JournalEntry]]] = []  # (creates so far, entries)

    async def record(self, entries: Any) -> None:
        await asyncio.sleep(0.01)
        self.writes.append((len(self.hitl.creates), [decode(encode(GROUP, e))[1] for e in entries]))


async def test_the_next_batch_is_journaled_ahead_so_its_creates_wait_for_nothing() -> None:
    hitl = FakeHitl()
    journal = RecordingJournal(hitl)
    settings = Settings(loops={"default": "L1"}, kafka={"group_id": GROUP})  # type: ignore[arg-type]
    processor = make_processor(settings, hitl, journal=journal)
    first = [Rec(o, orjson.dumps({"id": f"e{o}", "content": "x"})) for o in range(3)]
    await processor.process({"tp": first}, BatchStats())
    assert [n for n, _ in journal.writes] == [0]  # written before any create; ahead pending
    second = [Rec(o, orjson.dumps({"id": f"e{o}", "content": "x"})) for o in range(3, 6)]
    await processor.process({"tp": second}, BatchStats())
    # The write ahead (started when the first batch ended) covered the second batch: it was
    # acknowledged before the second batch's creates, and no other write was needed.
    assert [n for n, _ in journal.writes] == [0, 3]
    (ahead,) = journal.writes[1][1]
    assert [(s.first, s.end) for s in ahead.spans] == [(3, 3 + settings.batch.max_records)]
    assert sorted(ahead.adopted) == [0, 1, 2]  # made by the first batch, not committed yet
    await asyncio.sleep(0.05)
    assert len(journal.writes) == 3 and len(hitl.creates) == 6


async def test_spans_of_a_dead_process_are_searched_in_the_default_loop_first() -> None:
    hitl = FakeHitl()
    recovery = Recovery(hitl, GROUP, clock=lambda: hitl.now, default_loop="L1")
    other = JournalEntry("in", 1, [Span(50, 60, T0 - 10)])
    recovery.load({("in", 1): other}, [("in", 0), ("in", 1)])
    # A record of another partition, no span of its own: the late partition's span is
    # searched now, before anything is created, and not again.
    assert await recovery.resolve([sought(7)]) == {}
    assert hitl.list_calls == 1
    await recovery.resolve([Sought(("in", 1), 55, "L1", source_identity(GROUP, "in", 1, 55, TS))])
    assert hitl.list_calls == 1
