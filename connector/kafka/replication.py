"""Replication of the connector's topics: what to create, what exists, what could lose data.

Owns: resolving ``topics.replication_factor=-1`` to the brokers' ``default.replication.factor``
(aiokafka speaks CreateTopics v3, which cannot ask the broker to pick), the per-topic
overrides, reading each topic's replicas, in-sync replicas and ``min.insync.replicas``, and
naming the risks: a topic whose acknowledged (acks=all) records a single broker failure can
lose. Does not own partition counts or cleanup policies (``kafka.admin``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from connector.config import TopicSettings


@dataclass(frozen=True, slots=True)
class ClusterDefaults:
    """What the brokers give a topic created without explicit replication settings."""

    brokers: int
    replication_factor: int
    min_insync_replicas: int


@dataclass(frozen=True, slots=True)
class TopicReplication:
    """One topic as the brokers describe it (the weakest partition counts)."""

    name: str
    partitions: int
    replication: int  # fewest replicas of any partition
    in_sync: int  # fewest in-sync replicas of any partition
    min_insync_replicas: int | None  # the topic's effective setting (None: unknown)

    def line(self) -> str:
        min_isr = "?" if self.min_insync_replicas is None else str(self.min_insync_replicas)
        return (
            f"{self.name}: partitions={self.partitions} replication={self.replication} "
            f"isr={self.in_sync} min.insync.replicas={min_isr}"
        )


def wanted_replication(topics: TopicSettings, name: str, defaults: ClusterDefaults) -> int:
    """Replicas for a new topic ``name``: its override, the setting, or the brokers' default."""
    wanted = topics.replication_factors.get(name, topics.replication_factor)
    return defaults.replication_factor if wanted == -1 else wanted


def wanted_min_insync(topics: TopicSettings, name: str) -> int | None:
    """``min.insync.replicas`` to set on a new topic ``name`` (None: the brokers' default)."""
    return topics.min_insync_replicas_per_topic.get(name, topics.min_insync_replicas)


def _config_values(responses: list[Any]) -> dict[str, dict[str, str]]:
    """``{resource name: {config name: value}}`` from DescribeConfigs responses."""
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object().get("resources", []):
            entries = out.setdefault(str(resource["resource_name"]), {})
            for entry in resource.get("config_entries", []):
                if entry.get("config_value") is not None:
                    entries[str(entry["config_names"])] = str(entry["config_value"])
    return out


def _int(value: str | None, fallback: int) -> int:
    try:
        return int(value) if value is not None else fallback
    except ValueError:
        return fallback


async def cluster_defaults(admin: Any) -> ClusterDefaults:
    """Broker count and one broker's replication defaults (brokers of a cluster share them)."""
    cluster = await admin.describe_cluster()
    brokers = sorted(int(b["node_id"]) for b in cluster.get("brokers") or [])
    if not brokers:
        return ClusterDefaults(0, 1, 1)
    keys = {"default.replication.factor": None, "min.insync.replicas": None}
    resource = ConfigResource(ConfigResourceType.BROKER, str(brokers[0]), configs=keys)
    values = _config_values(await admin.describe_configs([resource])).get(str(brokers[0]), {})
    return ClusterDefaults(
        brokers=len(brokers),
        replication_factor=_int(values.get("default.replication.factor"), 1),
        min_insync_replicas=_int(values.get("min.insync.replicas"), 1),
    )


async def describe_replication(
    admin: Any, described: list[Any], defaults: ClusterDefaults
) -> list[TopicReplication]:
    """Replication of every topic in ``described`` (``admin.describe_topics`` output)."""
    topics = [t for t in described if isinstance(t, dict) and t.get("error_code", 0) == 0]
    if not topics:
        return []
    resources = [
        ConfigResource(
            ConfigResourceType.TOPIC, str(t["topic"]), configs={"min.insync.replicas": None}
        )
        for t in topics
    ]
    configs = _config_values(await admin.describe_configs(resources))
    out = []
    for topic in topics:
        name = str(topic["topic"])
        partitions = topic.get("partitions") or []
        min_isr = configs.get(name, {}).get("min.insync.replicas")
        out.append(
            TopicReplication(
                name=name,
                partitions=len(partitions),
                replication=min((len(p.get("replicas") or []) for p in partitions), default=0),
                in_sync=min((len(p.get("isr") or []) for p in partitions), default=0),
                min_insync_replicas=_int(min_isr, defaults.min_insync_replicas),
            )
        )
    return out


def replication_risks(topic: TopicReplication, brokers: int) -> list[str]:
    """Why ``topic`` could lose acknowledged records or refuse writes (empty: none)."""
    risks: list[str] = []
    min_isr = topic.min_insync_replicas
    if topic.replication == 1 and brokers > 1:
        risks.append(
            f"{topic.name} has 1 replica on a {brokers}-broker cluster: losing that broker's "
            "disk loses acknowledged records (recreate it with more replicas, or raise them "
            "with kafka-reassign-partitions)"
        )
    if min_isr == 1 and topic.replication >= 3:
        risks.append(
            f"{topic.name} has {topic.replication} replicas but min.insync.replicas=1: a "
            "write acknowledged by the leader alone is lost if that leader fails (set "
            "min.insync.replicas=2, topics.min_insync_replicas)"
        )
    if min_isr is not None and min_isr > topic.replication:
        risks.append(
            f"{topic.name} has min.insync.replicas={min_isr} > {topic.replication} replicas: "
            "every acks=all write fails"
        )
    elif min_isr is not None and 0 < topic.in_sync < min_isr:
        risks.append(
            f"{topic.name} has only {topic.in_sync} in-sync replicas on some partition, "
            f"fewer than min.insync.replicas={min_isr}: writes there fail until a replica "
            "catches up"
        )
    return risks
