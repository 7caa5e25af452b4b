"""The N-broker cluster's configuration, without starting it (connector.devcluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.devcluster import DevCluster, _java_string_hash, cluster_properties
from connector.devkafka import DevKafkaError


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_three_brokers_share_one_quorum_and_replicate_three_times(tmp_path: Path) -> None:
    cluster = DevCluster(tmp_path, brokers=3)
    rendered = []
    for node in cluster.nodes:
        node._choose_ports()
        rendered.append(_props(node._render_properties()))
    assert [p["node.id"] for p in rendered] == ["1", "2", "3"]
    assert len({p["controller.quorum.voters"] for p in rendered}) == 1
    voters = rendered[0]["controller.quorum.voters"].split(",")
    assert [v.split("@")[0] for v in voters] == ["1", "2", "3"]
    assert len({n.cluster_id for n in cluster.nodes}) == 1
    assert len({n.port for n in cluster.nodes}) == 3
    assert len(cluster.bootstrap_servers.split(",")) == 3
    for p in rendered:
        assert p["default.replication.factor"] == "3" and p["min.insync.replicas"] == "2"
        assert p["transaction.state.log.replication.factor"] == "3"
        assert p["transaction.state.log.min.isr"] == "2"
        assert p["offsets.topic.replication.factor"] == "3"


def test_replication_follows_the_broker_count() -> None:
    assert cluster_properties(1)["default.replication.factor"] == "1"
    assert cluster_properties(2)["min.insync.replicas"] == "1"
    assert cluster_properties(5)["default.replication.factor"] == "3"
    with pytest.raises(DevKafkaError):
        DevCluster("/nonexistent", brokers=0)


def test_coordinator_hash_is_javas_string_hash_code() -> None:
    # Values of java.lang.String#hashCode (Kafka picks __transaction_state partitions by it).
    assert _java_string_hash("hello") == 99162322
    assert _java_string_hash("polygenelubricants") == -(2**31)
    assert _java_string_hash("") == 0
