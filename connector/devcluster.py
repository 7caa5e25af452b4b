"""A real N-broker KRaft cluster on loopback for development and fault tests
(`hitl-connector dev-kafka --brokers 3`).

Owns: N ``DevKafka`` nodes, each a combined broker/controller with its own data dir
(``data_dir/node-<id>``), sharing one cluster id and a static controller quorum; replication
settings of a production cluster (``default.replication.factor`` = N capped at 3,
``min.insync.replicas`` = RF - 1, the internal topics likewise); starting them together
(a controller quorum forms only when a majority runs), and finding a partition's leader or a
transactional id's coordinator so tests can fault exactly that broker.

Not owned here: one broker's process (``connector.devkafka``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from connector.devkafka import DevKafka, DevKafkaError, free_port, new_cluster_id

# Three 384 MiB brokers fit a 2-core CI machine beside the tests.
CLUSTER_HEAP = "384m"


def cluster_properties(brokers: int) -> dict[str, str]:
    """What a production cluster of ``brokers`` nodes sets: every record on up to 3 brokers,
    acknowledged once on RF - 1 of them (at least 1)."""
    rf = min(brokers, 3)
    min_isr = max(1, rf - 1)
    return {
        "default.replication.factor": str(rf),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(rf),
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(rf),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        # A dead broker leaves ISR and leadership within ~6 s (defaults: 9 s session, 30 s
        # replica lag); production clusters keep the defaults, tests want quick failover.
        "replica.lag.time.max.ms": "10000",
    }


class DevCluster:
    """``brokers`` combined KRaft nodes on ``host``; ``nodes[i]`` has node id ``i + 1``."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        brokers: int = 3,
        host: str = "127.0.0.1",
        base_port: int = 0,
        heap: str = CLUSTER_HEAP,
        extra_properties: Mapping[str, str] | None = None,
    ) -> None:
        if brokers < 1:
            raise DevKafkaError("a cluster needs at least one broker")
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        ports = [base_port + i if base_port else free_port(host) for i in range(brokers)]
        controllers = [free_port(host) for _ in range(brokers)]
        voters = ",".join(f"{i + 1}@{host}:{port}" for i, port in enumerate(controllers))
        cluster_id = new_cluster_id()
        props = cluster_properties(brokers) | dict(extra_properties or {})
        self.nodes = [
            DevKafka(
                self.data_dir / f"node-{i + 1}",
                port=ports[i],
                controller_port=controllers[i],
                host=host,
                heap=heap,
                extra_properties=props,
                node_id=i + 1,
                quorum_voters=voters,
                cluster_id=cluster_id,
            )
            for i in range(brokers)
        ]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> DevKafka:
        return self.nodes[node_id - 1]

    async def __aenter__(self) -> DevCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start every node that is not running, together; return when all serve metadata
        and the cluster lists every broker."""
        try:
            await asyncio.gather(*(n.start() for n in self.nodes if not n.running))
            await self.wait_brokers(len(self.nodes))
        except BaseException:
            for node in self.nodes:
                node.kill()
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))

    async def _admin(self) -> AIOKafkaAdminClient:
        running = [n.bootstrap_servers for n in self.nodes if n.running]
        admin = AIOKafkaAdminClient(bootstrap_servers=running, request_timeout_ms=5000)
        await admin.start()
        return admin

    async def wait_brokers(self, count: int, within: float = 60.0) -> None:
        """Until the cluster's metadata lists ``count`` brokers."""
        deadline = asyncio.get_running_loop().time() + within
        seen = 0
        while asyncio.get_running_loop().time() < deadline:
            try:
                admin = await self._admin()
                try:
                    seen = len((await admin.describe_cluster()).get("brokers") or [])
                finally:
                    await admin.close()
            except (KafkaError, OSError, TimeoutError):
                seen = 0
            if seen >= count:
                return
            await asyncio.sleep(0.5)
        raise DevKafkaError(f"the cluster lists {seen} of {count} brokers after {within:.0f}s")

    async def leader(self, topic: str, partition: int = 0) -> int:
        """Node id leading ``topic``/``partition`` now."""
        admin = await self._admin()
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        for p in described.get("partitions") or []:
            if int(p["partition"]) == partition and int(p["leader"]) >= 0:
                return int(p["leader"])
        raise DevKafkaError(f"{topic}/{partition} has no leader")

    async def transaction_coordinator(self, transactional_id: str) -> int:
        """Node id coordinating ``transactional_id``: the leader of its
        ``__transaction_state`` partition (Kafka hashes the id like Java's String.hashCode)."""
        partitions = await self._partition_count("__transaction_state")
        index = (_java_string_hash(transactional_id) & 0x7FFFFFFF) % partitions
        return await self.leader("__transaction_state", index)

    async def _partition_count(self, topic: str) -> int:
        admin = await self._admin()
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        count = len(described.get("partitions") or [])
        if not count:
            raise DevKafkaError(f"{topic} does not exist yet (no transaction ran)")
        return count

    async def describe(self, topics: list[str] | None) -> list[Any]:
        """``describe_topics`` output for ``topics`` (None: every topic)."""
        admin = await self._admin()
        try:
            return list(await admin.describe_topics(topics))
        finally:
            await admin.close()


def _java_string_hash(text: str) -> int:
    """Java's ``String.hashCode`` (signed 32-bit), which Kafka's coordinator lookup uses."""
    h = 0
    for unit in text.encode("utf-16-be").hex(" ", 2).split():
        h = (31 * h + int(unit, 16)) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h
