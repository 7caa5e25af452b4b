"""The development broker against aiokafka: the Kafka features the connector relies on.

Proves early (design §9) that transactional read-process-write with one
``send_offsets_to_transaction`` per batch works on the pinned Kafka, and that the broker
process can be stopped, killed, paused and restarted without leaving a JVM behind.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from connector.devkafka import DevKafka
from tests.conftest import TopicFactory

pytestmark = pytest.mark.kafka


def _consumer(bootstrap: str, *topics: str, **overrides: object) -> AIOKafkaConsumer:
    settings: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
    }
    settings |= overrides
    return AIOKafkaConsumer(*topics, **settings)


async def _read(
    consumer: AIOKafkaConsumer, count: int, timeout: float = 30
) -> list[ConsumerRecord]:
    """Read until ``count`` records arrived (fails after ``timeout`` seconds)."""
    records: list[ConsumerRecord] = []
    async with asyncio.timeout(timeout):
        while len(records) < count:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                records.extend(messages)
    return records


async def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, f"v{i}".encode(), key=f"k{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()


def _java_processes_using(data_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(data_dir).encode() in cmdline and b"kafka.Kafka" in cmdline:
            pids.append(int(entry.name))
    return pids


async def test_produce_consume_round_trip(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory("roundtrip", partitions=3)
    await _produce(kafka_bootstrap, topic, 30)

    consumer = _consumer(kafka_bootstrap, topic)
    await consumer.start()
    try:
        records = await _read(consumer, 30)
    finally:
        await consumer.stop()

    assert sorted(r.value for r in records) == sorted(f"v{i}".encode() for i in range(30))
    assert {r.partition for r in records} == {0, 1, 2}


async def test_read_process_write_commits_offsets_and_output_in_one_transaction(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    source = await topic_factory("rpw-in", partitions=2)
    sink = await topic_factory("rpw-out", partitions=2)
    group = f"group-{source}"
    await _produce(kafka_bootstrap, source, 40)

    consumer = _consumer(kafka_bootstrap, source, group_id=group)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        enable_idempotence=True,
        transactional_id=f"tx-{source}",
    )
    await consumer.start()
    await producer.start()
    try:
        processed = 0
        async with asyncio.timeout(60):
            while processed < 40:
                batch = await consumer.getmany(timeout_ms=500, max_records=7)
                if not batch:
                    continue
                async with producer.transaction():
                    for messages in batch.values():
                        for record in messages:
                            await producer.send(sink, record.value.upper(), key=record.key)
                    # One call per batch, all partitions at once (aiokafka issue 1098).
                    offsets = {tp: messages[-1].offset + 1 for tp, messages in batch.items()}
                    await producer.send_offsets_to_transaction(offsets, group)
                processed += sum(len(messages) for messages in batch.values())

        partitions = [TopicPartition(source, p) for p in range(2)]
        end_offsets = await consumer.end_offsets(partitions)
        committed = {tp: await consumer.committed(tp) for tp in partitions}
        assert committed == end_offsets
        assert sum(end_offsets.values()) == 40
    finally:
        await producer.stop()
        await consumer.stop()

    reader = _consumer(kafka_bootstrap, sink)
    await reader.start()
    try:
        outputs = await _read(reader, 40)
    finally:
        await reader.stop()
    assert sorted(r.value for r in outputs) == sorted(f"V{i}".encode() for i in range(40))


async def test_aborted_transaction_is_invisible_to_read_committed(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = await topic_factory("abort", partitions=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, enable_idempotence=True, transactional_id=f"tx-{topic}"
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        for i in range(3):
            await producer.send(topic, f"aborted-{i}".encode())
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"committed")
    finally:
        await producer.stop()

    committed_reader = _consumer(kafka_bootstrap, topic)
    uncommitted_reader = _consumer(kafka_bootstrap, topic, isolation_level="read_uncommitted")
    await committed_reader.start()
    await uncommitted_reader.start()
    try:
        # The aborted records come first in the log: had they leaked, they would be read first.
        assert [r.value for r in await _read(committed_reader, 1)] == [b"committed"]
        everything = [r.value for r in await _read(uncommitted_reader, 4)]
        assert everything == [b"aborted-0", b"aborted-1", b"aborted-2", b"committed"]
    finally:
        await committed_reader.stop()
        await uncommitted_reader.stop()


async def test_restart_keeps_data_and_stop_leaves_no_java_process(tmp_path: Path) -> None:
    broker = DevKafka(tmp_path / "kafka", heap="384m")
    await broker.start()
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        await admin.start()
        await admin.create_topics([NewTopic("durable", 1, 1)])
        await admin.close()
        await _produce(broker.bootstrap_servers, "durable", 5)
        port = broker.port

        await broker.restart()  # clean stop, same data dir
        broker.kill()  # crash: no controlled shutdown
        await broker.start()
        assert broker.port == port

        consumer = _consumer(broker.bootstrap_servers, "durable")
        await consumer.start()
        try:
            assert len(await _read(consumer, 5)) == 5
        finally:
            await consumer.stop()
        pid = broker.pid
        assert pid is not None
    finally:
        await broker.stop()
    await broker.stop()  # idempotent

    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _java_processes_using(tmp_path / "kafka") == []


async def test_paused_broker_answers_nothing_until_resumed(tmp_path: Path) -> None:
    async with DevKafka(tmp_path / "kafka", heap="384m") as broker:
        broker.pause()
        admin = AIOKafkaAdminClient(
            bootstrap_servers=broker.bootstrap_servers, request_timeout_ms=1000
        )
        try:
            with pytest.raises((KafkaError, TimeoutError)):
                await asyncio.wait_for(admin.start(), 3)
        finally:
            await admin.close()
        broker.resume()
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        try:
            await admin.start()
            assert (await admin.describe_cluster())["brokers"]
        finally:
            await admin.close()
    assert not broker.running


async def test_broker_dies_with_a_killed_parent(tmp_path: Path) -> None:
    script = (
        "import asyncio, os, sys\n"
        "from connector.devkafka import DevKafka\n"
        "broker = DevKafka(sys.argv[1], heap='384m')\n"
        "asyncio.run(broker.start())\n"
        "os.kill(os.getpid(), 9)\n"  # no atexit, no teardown: as when CI times out
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(tmp_path / "kafka"), cwd=Path(__file__).parents[2]
    )
    assert await parent.wait() == -9

    async with asyncio.timeout(10):
        while _java_processes_using(tmp_path / "kafka"):
            await asyncio.sleep(0.1)
