"""Creating and validating the connector's topics.

Owns: which topics exist with which partition counts and cleanup policies. The rules:
``hitl.requests`` and ``hitl.callbacks`` have the same partition count (the resolver joins
them partition by partition) and ``hitl.requests`` is compacted (it is a table). Does not own
producing or consuming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from connector.config import Settings
from connector.errors import KafkaSetupError
from connector.kafka.clients import explain_connect_failure, make_admin

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    internal: bool


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic the connector uses, with the shape it needs."""
    t = settings.topics
    n_int = t.internal_partitions
    # Requests stay in the table until resolved; never delete them by age.
    table = {"cleanup.policy": "compact", "retention.ms": "-1", "min.compaction.lag.ms": "60000"}
    specs = [
        TopicSpec(t.input, t.partitions, {}, internal=False),
        TopicSpec(t.output, t.partitions, {}, internal=False),
        TopicSpec(t.dlq, t.partitions, {}, internal=False),
        TopicSpec(t.requests, n_int, table, internal=True),
        TopicSpec(t.callbacks, n_int, {}, internal=True),
        TopicSpec(t.unmatched, t.partitions, {}, internal=True),
        # One small record per input partition matters (the newest); compact often.
        TopicSpec(
            t.journal, n_int, {"cleanup.policy": "compact", "segment.ms": "600000"}, internal=True
        ),
    ]
    if t.escalations:
        specs.append(TopicSpec(t.escalations, t.partitions, {}, internal=False))
    return specs


def _partition_counts(described: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for topic in described:
        if isinstance(topic, dict) and topic.get("error_code", 0) == 0:
            counts[str(topic["topic"])] = len(topic.get("partitions") or [])
    return counts


async def _cleanup_policies(admin: Any, names: list[str]) -> dict[str, str]:
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, name, configs={"cleanup.policy": None})
        for name in names
    ]
    policies: dict[str, str] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object().get("resources", []):
            for entry in resource.get("config_entries", []):
                if entry.get("config_names") == "cleanup.policy":
                    policies[str(resource["resource_name"])] = str(entry.get("config_value"))
    return policies


async def ensure_topics(settings: Settings, *, create: bool) -> list[str]:
    """Create missing topics (when ``create``) and check the shape of all of them.

    Returns the names created. Raises ``KafkaSetupError`` naming each problem.
    """
    specs = topic_specs(settings)
    admin = make_admin(settings.kafka)
    try:
        await admin.start()
    except (KafkaError, OSError) as exc:
        # aiokafka says only "Unable to bootstrap"; probe once more to name the cause.
        reason = await explain_connect_failure(settings.kafka)
        raise KafkaSetupError(
            f"cannot connect to Kafka at {settings.kafka.bootstrap_servers}: "
            f"{reason or exc}; check kafka.bootstrap_servers and the security settings"
        ) from exc
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing and create:
            new = [
                NewTopic(
                    s.name, s.partitions, settings.topics.replication_factor, topic_configs=s.config
                )
                for s in missing
            ]
            # Another instance may win the race; the shape is validated below either way.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
            created = [s.name for s in missing]
            log.info("created topics %s", ", ".join(created))
        elif missing:
            raise KafkaSetupError(
                "missing topics: "
                + ", ".join(s.name for s in missing)
                + "; run `hitl-connector topics create` or set topics.create=true"
            )
        names = [s.name for s in specs]
        counts = _partition_counts(await admin.describe_topics(names))
        for _ in range(100):  # a new topic takes a moment to appear in the broker's metadata
            if not created or all(n in counts for n in names):
                break
            await asyncio.sleep(0.1)
            counts = _partition_counts(await admin.describe_topics(names))
        problems = [f"topic {s.name} does not exist" for s in specs if s.name not in counts]
        t = settings.topics
        if counts.get(t.requests) != counts.get(t.callbacks):
            problems.append(
                f"{t.requests} has {counts.get(t.requests)} partitions but {t.callbacks} has "
                f"{counts.get(t.callbacks)}; they must match (the resolver joins them by "
                "partition)"
            )
        policies = await _cleanup_policies(admin, [t.requests])
        if "compact" not in policies.get(t.requests, ""):
            problems.append(
                f"{t.requests} must have cleanup.policy=compact, has {policies.get(t.requests)!r}"
            )
        if problems:
            raise KafkaSetupError("topic check failed:\n  " + "\n  ".join(problems))
    finally:
        await admin.close()
    return created


async def partition_ids(settings: Settings, topic: str) -> list[int]:
    """The partition numbers of ``topic`` (empty when it does not exist)."""
    admin = make_admin(settings.kafka)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if not isinstance(described, dict) or described.get("error_code", 0) != 0:
        return []
    return sorted(int(p["partition"]) for p in described.get("partitions") or [])
