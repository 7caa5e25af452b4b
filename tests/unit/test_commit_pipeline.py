"""The commit pipeline: order, grouping, back-pressure and failure hand-over (fake checkpoint)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka import TopicPartition

from connector.kafka.checkpoint import Checkpoint, CheckpointError
from connector.kafka.pipeline import CommitPipeline, Staged
from connector.records import OutRecord

TP0 = TopicPartition("in", 0)
TP1 = TopicPartition("in", 1)


class FakeCheckpoint:
    """Records each transaction; each waits for the test to release it."""

    def __init__(self) -> None:
        self.transactions: list[tuple[list[bytes], dict[TopicPartition, int]]] = []
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.fail_next: Exception | None = None

    async def commit(self, records: Any, offsets: Any) -> None:
        self.started.set()
        await self.gate.wait()
        self.gate.clear()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.transactions.append(([r.value for r in records], dict(offsets)))


def staged(
    name: str, offsets: dict[TopicPartition, int], first: dict[TopicPartition, int]
) -> Staged:
    return Staged([OutRecord("out", None, name.encode(), [])], offsets, first, meta=name)


def make(
    max_staged: int = 4, interval: float = 0.0
) -> tuple[CommitPipeline, FakeCheckpoint, list[str]]:
    fake = FakeCheckpoint()
    committed: list[str] = []
    pipeline = CommitPipeline(
        cast(Checkpoint, fake),
        on_committed=lambda group: committed.extend(s.meta for s in group),
        max_staged=max_staged,
        commit_interval=interval,
    )
    pipeline.start()
    return pipeline, fake, committed


async def test_batches_staged_during_a_commit_go_together_in_order() -> None:
    pipeline, fake, committed = make()
    pipeline.stage(staged("a", {TP0: 10}, {TP0: 0}))
    await fake.started.wait()  # "a" is in flight; "b" and "c" wait for it
    pipeline.stage(staged("b", {TP0: 20, TP1: 5}, {TP0: 10, TP1: 0}))
    pipeline.stage(staged("c", {TP0: 30}, {TP0: 20}))
    fake.gate.set()
    await asyncio.sleep(0)
    fake.gate.set()
    assert await pipeline.flush() is None
    assert fake.transactions == [
        ([b"a"], {TP0: 10}),
        ([b"b", b"c"], {TP0: 30, TP1: 5}),  # the later batch's offset wins
    ]
    assert committed == ["a", "b", "c"]
    assert pipeline.idle
    await pipeline.stop()


async def test_a_failed_commit_hands_back_every_uncommitted_batch() -> None:
    pipeline, fake, committed = make()
    fake.fail_next = CheckpointError("broker gone")
    pipeline.stage(staged("a", {TP0: 10}, {TP0: 4}))
    await fake.started.wait()
    pipeline.stage(staged("b", {TP0: 20, TP1: 7}, {TP0: 10, TP1: 3}))
    fake.gate.set()
    failure = await pipeline.flush()
    assert failure is not None and str(failure.error) == "broker gone"
    assert [s.meta for s in failure.batches] == ["a", "b"]
    # The earliest first offset per partition, merged with the batch the role holds.
    assert failure.rewind_to({TP0: 25, TP1: 1}) == {TP0: 4, TP1: 1}
    assert committed == [] and fake.transactions == []
    assert pipeline.take_failure() is None  # handed over once
    # Committing resumes after the failure was taken.
    pipeline.stage(staged("c", {TP0: 10}, {TP0: 4}))
    fake.gate.set()
    assert await pipeline.flush() is None
    assert committed == ["c"]
    await pipeline.stop()


async def test_wait_room_holds_the_role_back_while_too_many_batches_wait() -> None:
    pipeline, fake, committed = make(max_staged=2)
    pipeline.stage(staged("a", {TP0: 1}, {TP0: 0}))
    await fake.started.wait()
    pipeline.stage(staged("b", {TP0: 2}, {TP0: 1}))
    pipeline.stage(staged("c", {TP0: 3}, {TP0: 2}))
    room = asyncio.ensure_future(pipeline.wait_room())
    await asyncio.sleep(0.01)
    assert not room.done()
    fake.gate.set()  # "a" commits; "b" and "c" leave the queue for the next transaction
    await asyncio.wait_for(room, 1)
    fake.gate.set()
    assert await pipeline.flush() is None
    assert committed == ["a", "b", "c"]
    await pipeline.stop()


async def test_an_unexpected_error_in_the_committer_is_raised_to_the_role() -> None:
    pipeline, fake, _ = make()
    fake.fail_next = RuntimeError("bug")
    pipeline.stage(staged("a", {TP0: 1}, {TP0: 0}))
    fake.gate.set()
    with pytest.raises(RuntimeError, match="bug"):
        await pipeline.flush()
    with pytest.raises(RuntimeError, match="bug"):
        pipeline.check()
    await pipeline.stop()


async def test_commit_interval_groups_batches_until_it_is_over() -> None:
    pipeline, fake, committed = make(max_staged=8, interval=0.3)
    fake.gate.set()
    pipeline.stage(staged("a", {TP0: 1}, {TP0: 0}))  # the first transaction starts at once
    await asyncio.wait_for(fake.started.wait(), 1)
    fake.started.clear()
    await asyncio.sleep(0.01)
    assert committed == ["a"]
    pipeline.stage(staged("b", {TP0: 2}, {TP0: 1}))
    await asyncio.sleep(0.05)
    pipeline.stage(staged("c", {TP0: 3}, {TP0: 2}))
    await asyncio.sleep(0.05)
    assert not fake.started.is_set() and committed == ["a"]  # held: the interval runs
    fake.gate.set()
    await asyncio.wait_for(fake.started.wait(), 1)  # within the 0.3 s interval
    await asyncio.sleep(0.01)
    assert fake.transactions == [([b"a"], {TP0: 1}), ([b"b", b"c"], {TP0: 3})]
    await pipeline.stop()


async def test_a_flush_or_a_full_queue_cuts_the_commit_interval_short() -> None:
    pipeline, fake, committed = make(max_staged=2, interval=30.0)
    fake.gate.set()
    pipeline.stage(staged("a", {TP0: 1}, {TP0: 0}))
    await asyncio.wait_for(fake.started.wait(), 1)
    pipeline.stage(staged("b", {TP0: 2}, {TP0: 1}))
    fake.gate.set()
    assert await asyncio.wait_for(pipeline.flush(), 1) is None  # not 30 s
    assert committed == ["a", "b"]
    pipeline.stage(staged("c", {TP0: 3}, {TP0: 2}))
    pipeline.stage(staged("d", {TP0: 4}, {TP0: 3}))  # max_staged reached
    fake.gate.set()
    await asyncio.wait_for(pipeline.wait_room(), 1)
    await asyncio.sleep(0.01)
    assert committed == ["a", "b", "c", "d"]
    await pipeline.stop()


async def test_wait_room_also_bounds_the_bytes_waiting() -> None:
    fake = FakeCheckpoint()
    pipeline = CommitPipeline(
        cast(Checkpoint, fake), on_committed=lambda group: None, max_staged_bytes=100
    )
    pipeline.start()
    first = staged("a", {TP0: 1}, {TP0: 0})
    pipeline.stage(first)
    await fake.started.wait()
    pipeline.stage(Staged(first.outputs, {TP0: 2}, {TP0: 1}, meta="b", size=60))
    await asyncio.wait_for(pipeline.wait_room(), 1)  # 60 of 100 bytes wait
    pipeline.stage(Staged(first.outputs, {TP0: 3}, {TP0: 2}, meta="c", size=60))
    room = asyncio.ensure_future(pipeline.wait_room())
    await asyncio.sleep(0.01)
    assert not room.done()  # 120 bytes wait: the role is held back
    fake.gate.set()
    await asyncio.wait_for(room, 1)
    fake.gate.set()
    assert await pipeline.flush() is None
    await pipeline.stop()


async def test_room_opens_when_a_transaction_takes_the_staged_batches() -> None:
    pipeline, fake, committed = make(max_staged=2, interval=30.0)
    fake.gate.set()
    pipeline.stage(staged("a", {TP0: 1}, {TP0: 0}))  # the first transaction starts at once
    await asyncio.wait_for(fake.started.wait(), 1)
    await asyncio.sleep(0.01)
    fake.started.clear()
    pipeline.stage(staged("b", {TP0: 2}, {TP0: 1}))  # held: the interval runs

    async def role() -> None:  # as the role loop does: stage, then wait for room at once
        pipeline.stage(staged("c", {TP0: 3}, {TP0: 2}))  # full: the interval is cut short
        await pipeline.wait_room()

    room = asyncio.ensure_future(role())
    await asyncio.wait_for(fake.started.wait(), 1)  # "b" and "c" are in flight, not done
    # The role goes on while they commit (it used to wait for the transaction's end).
    await asyncio.wait_for(room, 1)
    assert committed == ["a"] and not pipeline.idle
    fake.gate.set()
    assert await pipeline.flush() is None
    assert committed == ["a", "b", "c"]
    await pipeline.stop()
