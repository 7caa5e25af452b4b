"""A replaced instance fences its predecessor: the Kubernetes StatefulSet scheme, end to end.

deploy/k8s runs the transactional roles as StatefulSets, so a replacement pod has its
predecessor's name, hence ``kafka.instance_id`` and transactional ids
(``connector.kafka.clients.transactional_id``). Here a predecessor process holds an open
submitter transaction (decision records written, not committed, on a real broker) when a
real connector with the same identity starts: its first InitProducerId must abort that
transaction at once (not after ``transaction_timeout_ms``), the predecessor's commit must be
refused (ProducerFenced), and the ledger must show nothing lost or duplicated.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from connector.app import ConnectorApp
from connector.config import Settings
from connector.kafka.admin import ensure_topics
from connector.kafka.clients import transactional_id
from hitl_sandbox import SandboxServer
from tests.integration.harness import decision_settings, produce, read_all, wait_until
from tests.integration.ledger import ledger
from tests.integration.test_decision_path import events, reviewer

pytestmark = pytest.mark.kafka

# The predecessor: the connector's own transactional producer for the submitter role, a
# transaction with records on the output topic, left open until stdin says "commit".
PREDECESSOR = """
import asyncio, sys
from connector.config import Settings
from connector.kafka.clients import make_transactional_producer

async def main():
    settings = Settings.model_validate_json(sys.argv[1])
    producer = make_transactional_producer(settings.kafka, role="submitter")
    await producer.start()
    await producer.begin_transaction()
    for i in range(20):
        await producer.send_and_wait(settings.topics.output, b'{"zombie": %d}' % i, key=b"z")
    print("open", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    try:
        await producer.commit_transaction()
        print("committed", flush=True)
    except Exception as exc:
        print("refused", type(exc).__name__, flush=True)
    await producer.stop()

asyncio.run(main())
"""


async def open_transaction_blocks(settings: Settings) -> bool:
    """True while the output topic's last stable offset trails its high watermark (an open
    transaction holds read_committed readers back)."""
    bootstrap = settings.kafka.bootstrap_servers
    tps = [TopicPartition(settings.topics.output, p) for p in range(settings.topics.partitions)]
    committed = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    uncommitted = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await committed.start()
    await uncommitted.start()
    try:
        stable = await committed.end_offsets(tps)
        high = await uncommitted.end_offsets(tps)
    finally:
        await committed.stop()
        await uncommitted.stop()
    return any(stable[tp] < high[tp] for tp in tps)


async def test_replacement_with_the_same_identity_fences_an_open_transaction(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    with SandboxServer(reviewer()) as sandbox:
        # A long transaction timeout: only fencing can end the open transaction quickly.
        settings = decision_settings(
            kafka_bootstrap,
            sandbox.url,
            kafka={"instance_id": "hitl-submitter-0", "transaction_timeout_ms": 120_000},
        )
        await ensure_topics(settings, create=True)
        n = 60
        await produce(kafka_bootstrap, settings.topics.input, events(n, "fence"))
        with (tmp_path / "predecessor.log").open("wb") as log:  # the child keeps its own fd
            predecessor = subprocess.Popen(
                [sys.executable, "-c", PREDECESSOR, settings.model_dump_json()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        app = ConnectorApp(settings, "all")
        try:
            assert predecessor.stdout is not None and predecessor.stdin is not None
            line = await asyncio.wait_for(asyncio.to_thread(predecessor.stdout.readline), 60)
            assert line.strip() == b"open", (tmp_path / "predecessor.log").read_text()
            assert await open_transaction_blocks(settings)
            started = time.monotonic()
            await app.start()  # the replacement: same instance id, same transactional ids
            fenced_after = await wait_until(
                lambda: _released(settings), timeout=60, interval=0.1, what="open txn aborted"
            )
            fenced_after = time.monotonic() - started
            predecessor.stdin.write(b"commit\n")
            predecessor.stdin.flush()
            verdict = await asyncio.wait_for(asyncio.to_thread(predecessor.stdout.readline), 60)

            async def all_decided() -> bool:
                return len(await read_all(kafka_bootstrap, settings.topics.output)) >= n

            took = await wait_until(all_decided, timeout=120, interval=0.5, what="all decided")
        finally:
            await app.stop()
            if predecessor.poll() is None:
                predecessor.kill()
            predecessor.wait(timeout=10)
            for pipe in (predecessor.stdin, predecessor.stdout):
                if pipe is not None:
                    pipe.close()
        figures = await ledger(settings, sandbox.url, recovery_s=took)
        print(
            f"\nfencing: transactional_id={transactional_id(settings.kafka, 'submitter')} "
            f"open_transaction_aborted_after_s={fenced_after:.1f} "
            f"(transaction_timeout_s=120) predecessor_commit={verdict.decode().strip()}"
        )
        print(f"fencing ledger: {figures.line()}")
        assert verdict.startswith(b"refused ProducerFenced"), verdict
        assert fenced_after < 15, "the open transaction outlived the replacement's start"
        assert figures.events_in == n and figures.lost == 0, figures.lost_events[:5]
        assert figures.duplicate_requests == 0 and figures.duplicate_decisions == 0
        assert figures.decisions_out == n, "the predecessor's aborted records are visible"


async def _released(settings: Settings) -> bool:
    return not await open_transaction_blocks(settings)
