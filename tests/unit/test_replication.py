"""Replication settings and the risks the topic check names (no broker: pure functions)."""

from __future__ import annotations

import pytest

from connector.config import Settings
from connector.errors import ConfigError
from connector.kafka.replication import (
    ClusterDefaults,
    TopicReplication,
    replication_risks,
    wanted_min_insync,
    wanted_replication,
)

CLUSTER = ClusterDefaults(brokers=3, replication_factor=3, min_insync_replicas=2)


def topic(replication: int, in_sync: int, min_isr: int | None) -> TopicReplication:
    return TopicReplication("t", 6, replication, in_sync, min_isr)


def test_replication_defaults_to_the_brokers_default_with_per_topic_overrides() -> None:
    topics = Settings().topics
    assert topics.replication_factor == -1
    assert wanted_replication(topics, "hitl.requests", CLUSTER) == 3
    assert wanted_min_insync(topics, "hitl.requests") is None
    topics = Settings(
        topics={
            "replication_factor": 2,
            "min_insync_replicas": 1,
            "replication_factors": {"hitl.requests": 3},
            "min_insync_replicas_per_topic": {"hitl.requests": 2},
        }
    ).topics
    assert wanted_replication(topics, "hitl.requests", CLUSTER) == 3
    assert wanted_replication(topics, "content.events", CLUSTER) == 2
    assert wanted_min_insync(topics, "hitl.requests") == 2
    assert wanted_min_insync(topics, "content.events") == 1


@pytest.mark.parametrize(
    "topics",
    [
        {"replication_factor": 0},
        {"replication_factors": {"x": 0}},
        {"min_insync_replicas_per_topic": {"x": 33}},
    ],
)
def test_invalid_replication_settings_are_refused(topics: dict[str, object]) -> None:
    with pytest.raises((ConfigError, ValueError)):
        Settings(topics=topics)


def test_a_healthy_replicated_topic_has_no_risk() -> None:
    assert replication_risks(topic(3, 3, 2), brokers=3) == []
    assert replication_risks(topic(1, 1, 1), brokers=1) == []  # one broker: nothing better


def test_one_replica_on_a_cluster_is_a_risk() -> None:
    (risk,) = replication_risks(topic(1, 1, 1), brokers=3)
    assert "1 replica on a 3-broker cluster" in risk


def test_min_isr_one_with_three_replicas_is_a_risk() -> None:
    (risk,) = replication_risks(topic(3, 3, 1), brokers=3)
    assert "min.insync.replicas=1" in risk


def test_min_isr_above_replication_and_isr_below_min_are_named() -> None:
    (above,) = replication_risks(topic(2, 2, 3), brokers=3)
    assert "every acks=all write fails" in above
    (shrunk,) = replication_risks(topic(3, 1, 2), brokers=3)
    assert "only 1 in-sync" in shrunk


def test_line_names_replication_isr_and_min_isr() -> None:
    assert topic(3, 2, 2).line() == "t: partitions=6 replication=3 isr=2 min.insync.replicas=2"
