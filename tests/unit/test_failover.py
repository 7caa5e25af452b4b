"""Broker reachability is logged on transitions only (connector.kafka.failover.BrokerHealth)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from connector.kafka.failover import BrokerHealth


def test_one_warning_when_a_broker_goes_one_info_when_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = BrokerHealth()
    with caplog.at_level(logging.INFO, logger="connector.kafka.failover"):
        for _ in range(300):
            health.failed("2 (127.0.0.1:9093)", "cannot connect")
        assert health.down() == ["2 (127.0.0.1:9093)"]
        for _ in range(5):
            health.answered("2 (127.0.0.1:9093)")
        health.answered("1 (127.0.0.1:9092)")  # never down: nothing to say
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(records) == 2, records
    assert records[0][0] == "WARNING" and "broker 2 (127.0.0.1:9093) unreachable" in records[0][1]
    assert records[1][0] == "INFO" and "reachable again after" in records[1][1]
    assert "(300 failed attempts)" in records[1][1]
    assert health.down() == []


class _Broker:
    def __init__(self, node_id: int) -> None:
        self.nodeId, self.host, self.port = node_id, "127.0.0.1", 9090 + node_id


class _Cluster:
    def __init__(self, *ids: int) -> None:
        self.known = {i: _Broker(i) for i in ids}

    def brokers(self) -> set[_Broker]:
        return set(self.known.values())

    def broker_metadata(self, node_id: int) -> _Broker | None:
        return self.known.get(node_id)


class _Client:
    """The two aiokafka client methods the wrappers replace; node 1 hangs."""

    def __init__(self) -> None:
        self.cluster = _Cluster(1, 2, 3)
        self.connects: list[int] = []
        self.refreshes = 0

    async def _get_conn(self, node_id: int, **_: object) -> object | None:
        self.connects.append(node_id)
        return object()

    async def send(self, node_id: int, request: object, **_: object) -> str:
        from aiokafka.errors import RequestTimedOutError

        if node_id == 1:
            raise RequestTimedOutError()
        return f"answer from {node_id}"

    def force_metadata_update(self) -> None:
        self.refreshes += 1


class MetadataRequest:  # named like aiokafka's request classes
    pass


class ProduceRequest:
    pass


async def test_a_broker_that_timed_out_is_skipped_while_others_answer() -> None:
    from aiokafka.errors import RequestTimedOutError

    from connector.kafka.failover import avoid_hung_brokers

    client = _Client()
    avoid_hung_brokers(client, request_timeout_ms=60_000)
    with pytest.raises(RequestTimedOutError):
        await client.send(1, MetadataRequest())
    assert await client._get_conn(1) is None  # suspect: not even a connection attempt
    assert await client._get_conn(2) is not None
    assert client.connects == [2]
    assert await client.send(2, MetadataRequest()) == "answer from 2"


async def test_a_slow_produce_does_not_make_its_leader_suspect() -> None:
    from aiokafka.errors import RequestTimedOutError

    from connector.kafka.failover import avoid_hung_brokers

    client = _Client()
    avoid_hung_brokers(client, request_timeout_ms=60_000)
    with pytest.raises(RequestTimedOutError):
        await client.send(1, ProduceRequest())  # acks=all may wait for a dying follower
    assert await client._get_conn(1) is not None


async def test_the_last_reachable_broker_is_never_skipped() -> None:
    from aiokafka.errors import RequestTimedOutError

    from connector.kafka.failover import avoid_hung_brokers

    client = _Client()
    client.cluster = _Cluster(1)
    avoid_hung_brokers(client, request_timeout_ms=60_000)
    with pytest.raises(RequestTimedOutError):
        await client.send(1, MetadataRequest())
    assert await client._get_conn(1) is not None  # one broker: nothing better to try


async def test_a_producer_forgets_every_coordinator_on_a_hung_or_fenced_broker() -> None:
    from types import SimpleNamespace

    from aiokafka.client import ConnectionGroup
    from aiokafka.errors import NodeNotReadyError, RequestTimedOutError

    from connector.kafka.failover import forget_coordinators_on_hung_brokers

    client = _Client()
    coordinators = {"transaction": 1, "group": 1, "other": 2}
    producer: Any = SimpleNamespace(
        client=client, _sender=SimpleNamespace(_coordinators=coordinators)
    )
    forget_coordinators_on_hung_brokers(producer)
    with pytest.raises(RequestTimedOutError):
        await client.send(1, MetadataRequest(), group=ConnectionGroup.COORDINATION)
    assert coordinators == {"other": 2} and client.refreshes == 1
    # A coordinator on a broker the controller fenced (gone from metadata) fails at once.
    coordinators["group"] = 3
    del client.cluster.known[3]
    with pytest.raises(NodeNotReadyError):
        await client.send(3, MetadataRequest(), group=ConnectionGroup.COORDINATION)
    assert coordinators == {"other": 2}
    assert await client.send(2, MetadataRequest(), group=ConnectionGroup.COORDINATION) == (
        "answer from 2"
    )
