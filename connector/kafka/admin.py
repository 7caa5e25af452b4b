"""Creating and validating the connector's topics.

Owns: which topics exist with which partition counts and cleanup policies. The rules:
``hitl.requests`` and ``hitl.callbacks`` have the same partition count (the resolver joins
them partition by partition) and ``hitl.requests`` is compacted (it is a table); replication
comes from ``kafka.replication`` (created with the brokers' default unless set; every topic,
existing or new, is checked for settings that could lose acknowledged records). Does not own
producing or consuming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from connector.config import KafkaSettings, Settings, TopicSettings
from connector.errors import KafkaSetupError
from connector.kafka.clients import explain_connect_failure, make_admin
from connector.kafka.replication import (
    ClusterDefaults,
    TopicReplication,
    cluster_defaults,
    describe_replication,
    replication_risks,
    wanted_min_insync,
    wanted_replication,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    internal: bool


@dataclass(slots=True)
class TopicReport:
    """What ``ensure_topics`` found: topics created, each topic's replication, the risks."""

    created: list[str] = field(default_factory=list)
    cluster: ClusterDefaults | None = None
    topics: list[TopicReplication] = field(default_factory=list)
    risks: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        if self.cluster is not None:
            c = self.cluster
            out.append(
                f"cluster: {c.brokers} broker(s), default.replication.factor="
                f"{c.replication_factor}, min.insync.replicas={c.min_insync_replicas}"
            )
        out += [f"topic {t.line()}" for t in self.topics]
        out += [f"WARNING: {risk}" for risk in self.risks]
        return out


def _new_topic(spec: TopicSpec, topics: TopicSettings, defaults: ClusterDefaults) -> NewTopic:
    config = dict(spec.config)
    if (min_isr := wanted_min_insync(topics, spec.name)) is not None:
        config["min.insync.replicas"] = str(min_isr)
    replicas = wanted_replication(topics, spec.name, defaults)
    return NewTopic(spec.name, spec.partitions, replicas, topic_configs=config)


def topic_specs(t: TopicSettings) -> list[TopicSpec]:
    """Every topic the connector uses, with the shape it needs."""
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


async def ensure_topics(settings: Settings, *, create: bool) -> TopicReport:
    """Create missing topics (when ``create``) and check the shape of all of them.

    Takes the whole ``Settings``: a wiring step between two sections (the cluster in
    ``kafka``, the plan in ``topics``), called by the app and the CLI as they start.

    Returns what was created and each topic's replication. Raises ``KafkaSetupError`` naming
    each problem; replication risks are logged as warnings, or raise with
    ``topics.unsafe_replication=fail``.
    """
    specs = topic_specs(settings.topics)
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
    report = TopicReport()
    try:
        report.cluster = defaults = await cluster_defaults(admin)
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing and create:
            new = [_new_topic(s, settings.topics, defaults) for s in missing]
            # Another instance may win the race; the shape is validated below either way.
            with contextlib.suppress(TopicAlreadyExistsError):
                response = await admin.create_topics(new)
                failed = [
                    f"{name}: {message or f'error code {code}'}"
                    for name, code, message, *_ in _topic_errors(response)
                    if code not in (0, TopicAlreadyExistsError.errno)
                ]
                if failed:
                    raise KafkaSetupError("creating topics failed: " + "; ".join(failed))
            report.created = [s.name for s in missing]
            log.info("created topics %s", ", ".join(report.created))
        elif missing:
            raise KafkaSetupError(
                "missing topics: "
                + ", ".join(s.name for s in missing)
                + "; run `hitl-connector topics create` or set topics.create=true"
            )
        names = [s.name for s in specs]
        described = await admin.describe_topics(names)
        counts = _partition_counts(described)
        for _ in range(100):  # a new topic takes a moment to appear in the broker's metadata
            if not report.created or all(n in counts for n in names):
                break
            await asyncio.sleep(0.1)
            described = await admin.describe_topics(names)
            counts = _partition_counts(described)
        problems = [f"topic {s.name} does not exist" for s in specs if s.name not in counts]
        t = settings.topics
        if counts.get(t.requests) != counts.get(t.callbacks):
            problems.append(
                f"{t.requests} has {counts.get(t.requests)} partitions but {t.callbacks} has "
                f"{counts.get(t.callbacks)}; they must match (the resolver joins them by "
                "partition)"
            )
        policies = await _cleanup_policies(admin, [t.requests])
        for _ in range(50):  # on a cluster, another broker may not know a new topic yet
            if t.requests not in report.created or t.requests in policies:
                break
            await asyncio.sleep(0.1)
            policies = await _cleanup_policies(admin, [t.requests])
        if "compact" not in policies.get(t.requests, ""):
            problems.append(
                f"{t.requests} must have cleanup.policy=compact, has {policies.get(t.requests)!r}"
            )
        if problems:
            raise KafkaSetupError("topic check failed:\n  " + "\n  ".join(problems))
        report.topics = await describe_replication(admin, described, defaults)
        report.risks = [
            r for topic in report.topics for r in replication_risks(topic, defaults.brokers)
        ]
    finally:
        await admin.close()
    if report.risks and settings.topics.unsafe_replication == "fail":
        raise KafkaSetupError(
            "topics could lose acknowledged records (topics.unsafe_replication=fail):\n  "
            + "\n  ".join(report.risks)
        )
    for risk in report.risks:
        log.warning("topic replication: %s", risk)
    return report


def _topic_errors(response: Any) -> list[tuple[Any, ...]]:
    return [tuple(e) for e in getattr(response, "topic_errors", None) or []]


async def partition_ids(kafka: KafkaSettings, topic: str) -> list[int]:
    """The partition numbers of ``topic`` (empty when it does not exist)."""
    admin = make_admin(kafka)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if not isinstance(described, dict) or described.get("error_code", 0) != 0:
        return []
    return sorted(int(p["partition"]) for p in described.get("partitions") or [])
