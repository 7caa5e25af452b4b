"""Every Prometheus metric the connector exports, defined once, on an injectable registry.

Names carry the ``hitl_connector_`` prefix and base units; labels come only from small fixed
sets (roles, outcomes, DLQ reasons, endpoint templates, configured option values and loop
ids — anything else is folded into ``other``). Code updates these once per batch where it
can. Tests build ``Metrics(CollectorRegistry())`` and read values with ``get_sample_value``.

Ground truth the tests check: events consumed = input records committed; lag = end offset −
committed offset; pending = requests in the table; decisions = output records.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from connector import __version__

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
HUMAN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14_400, 43_200, 86_400)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}
OTHER = "other"


def status_class(status: int | None) -> str:
    """``2xx``…``5xx``, with 429 on its own (budget alerts need it) and ``error`` for none."""
    if status is None:
        return "error"
    if status == 429:
        return "429"
    return f"{status // 100}xx"


class Metrics:
    """The connector's metrics. One instance per process (or per test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = "hitl_connector_"
        self.build_info = Info(p + "build", "Version of the running connector.", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        self.events_consumed = Counter(
            p + "events_consumed", "Input records consumed and committed.", registry=r
        )
        self.events = Counter(
            p + "events",
            "Input records by outcome (submitted, policy, dlq) and DLQ reason.",
            ["outcome", "reason"],
            registry=r,
        )
        self.events_truncated = Counter(
            p + "events_truncated", "Events whose text was cut to the HITL limit.", registry=r
        )
        self.api_calls = Counter(
            p + "hitl_api_calls",
            "HITL.sh API calls by endpoint and status class (429 separate).",
            ["endpoint", "status_class"],
            registry=r,
        )
        self.create_latency = Histogram(
            p + "hitl_create_latency_seconds",
            "Time for one HITL.sh create-request call.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rate_limit_remaining = Gauge(
            p + "hitl_rate_limit_remaining",
            "API calls left in the current window (X-RateLimit-Remaining).",
            registry=r,
        )
        self.rate_limit_limit = Gauge(
            p + "hitl_rate_limit_limit", "API calls allowed per window.", registry=r
        )
        self.circuit_state = Gauge(
            p + "hitl_circuit_state",
            "HITL.sh circuit breaker: 0 closed, 1 half-open, 2 open.",
            registry=r,
        )
        self.batch_size = Histogram(
            p + "batch_size",
            "Records per processed batch.",
            ["role"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            p + "batch_duration_seconds",
            "Time to process and commit one batch.",
            ["role"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            p + "consumer_lag",
            "End offset minus committed offset, per consumed topic partition.",
            ["role", "topic", "partition"],
            registry=r,
        )
        self.pending_requests = Gauge(
            p + "pending_requests",
            "HITL requests waiting for a human (in this resolver's table partitions).",
            registry=r,
        )
        self.oldest_pending_age = Gauge(
            p + "oldest_pending_age_seconds",
            "Age of the oldest pending HITL request.",
            registry=r,
        )
        self.webhooks_received = Counter(
            p + "webhooks_received",
            "Webhook deliveries by outcome.",
            ["outcome"],
            registry=r,
        )
        self.webhook_ack = Histogram(
            p + "webhook_ack_seconds",
            "Time from receiving a webhook to answering it (incl. the durable produce).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.callbacks = Counter(
            p + "callbacks",
            "Callbacks joined by the resolver, by result (decided, duplicate, escalation, "
            "unmatched, ignored).",
            ["result"],
            registry=r,
        )
        self.decisions = Counter(
            p + "decisions",
            "Decision records written, by decision, decided_by and via.",
            ["decision", "decided_by", "via"],
            registry=r,
        )
        self.decision_latency = Histogram(
            p + "decision_latency_seconds",
            "Input record timestamp to decision record, by loop.",
            ["loop"],
            buckets=HUMAN_BUCKETS,
            registry=r,
        )
        self.human_response = Histogram(
            p + "human_response_seconds",
            "Human response time reported by HITL.sh, by loop.",
            ["loop"],
            buckets=HUMAN_BUCKETS,
            registry=r,
        )
        self.reconciler_polls = Counter(
            p + "reconciler_polls",
            "Reconciler API calls by kind (list, get).",
            ["kind"],
            registry=r,
        )
        self.reconciler_recovered = Counter(
            p + "reconciler_recovered",
            "Terminal answers found by polling (webhook missing).",
            registry=r,
        )
        self.unmatched = Counter(
            p + "unmatched_callbacks",
            "Callbacks sent to the unmatched topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.unmatched_choices = Counter(
            p + "unmatched_answer_choices",
            "Select answers naming no option that was sent (kept in the decision's response).",
            ["response_type"],
            registry=r,
        )
        self.asyncio_tasks = Gauge(
            p + "asyncio_tasks",
            "Asyncio tasks alive in the process's event loop (a leak shows as growth).",
            registry=r,
        )
        self.transactions = Counter(
            p + "kafka_transactions",
            "Kafka transactions by role and result (commit, abort).",
            ["role", "result"],
            registry=r,
        )
        self._loops: frozenset[str] = frozenset()
        self._decisions: frozenset[str] = frozenset()

    def bound_labels(self, loops: Iterable[str | None], decisions: Iterable[str]) -> None:
        """Label values allowed for ``loop`` and ``decision``; others become ``other``."""
        self._loops = frozenset(loop for loop in loops if loop)
        self._decisions = frozenset(decisions)

    def loop_label(self, loop_id: str | None) -> str:
        return loop_id if loop_id in self._loops else OTHER

    def decision_label(self, decision: str | None) -> str:
        if decision is None:
            return "none"
        return decision if decision in self._decisions else OTHER

    def render(self) -> bytes:
        return generate_latest(self.registry)
