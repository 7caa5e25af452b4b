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
from collections.abc import Iterable, Sequence

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

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(p + name, doc, labels, registry=r)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(p + name, doc, labels, registry=r)

        def histogram(name: str, doc: str, buckets: Sequence[float], *labels: str) -> Histogram:
            return Histogram(p + name, doc, labels, buckets=buckets, registry=r)

        self.events_consumed = counter("events_consumed", "Input records consumed and committed.")
        self.events = counter(
            "events",
            "Input records by outcome (submitted, policy, dlq) and DLQ reason.",
            "outcome",
            "reason",
        )
        self.events_truncated = counter(
            "events_truncated", "Events whose text was cut to the HITL limit."
        )
        self.api_calls = counter(
            "hitl_api_calls",
            "HITL.sh API calls by endpoint and status class (429 separate).",
            "endpoint",
            "status_class",
        )
        self.create_latency = histogram(
            "hitl_create_latency_seconds",
            "Time for one HITL.sh create-request call.",
            LATENCY_BUCKETS,
        )
        self.rate_limit_remaining = gauge(
            "hitl_rate_limit_remaining",
            "API calls left in the current window (X-RateLimit-Remaining).",
        )
        self.rate_limit_limit = gauge("hitl_rate_limit_limit", "API calls allowed per window.")
        self.circuit_state = gauge(
            "hitl_circuit_state", "HITL.sh circuit breaker: 0 closed, 1 half-open, 2 open."
        )
        self.batch_size = histogram(
            "batch_size", "Records per processed batch.", BATCH_BUCKETS, "role"
        )
        self.batch_duration = histogram(
            "batch_duration_seconds",
            "Time to process and commit one batch.",
            LATENCY_BUCKETS,
            "role",
        )
        self.consumer_lag = gauge(
            "consumer_lag",
            "End offset minus committed offset, per consumed topic partition.",
            "role",
            "topic",
            "partition",
        )
        self.pending_requests = gauge(
            "pending_requests",
            "HITL requests waiting for a human (in this resolver's table partitions).",
        )
        self.oldest_pending_age = gauge(
            "oldest_pending_age_seconds", "Age of the oldest pending HITL request."
        )
        self.webhooks_received = counter(
            "webhooks_received", "Webhook deliveries by outcome.", "outcome"
        )
        self.webhook_ack = histogram(
            "webhook_ack_seconds",
            "Time from receiving a webhook to answering it (incl. the durable produce).",
            LATENCY_BUCKETS,
        )
        self.callbacks = counter(
            "callbacks",
            "Callbacks joined by the resolver, by result (decided, duplicate, escalation, "
            "unmatched, ignored).",
            "result",
        )
        self.decisions = counter(
            "decisions",
            "Decision records written, by decision, decided_by and via.",
            "decision",
            "decided_by",
            "via",
        )
        self.decision_latency = histogram(
            "decision_latency_seconds",
            "Input record timestamp to decision record, by loop.",
            HUMAN_BUCKETS,
            "loop",
        )
        self.human_response = histogram(
            "human_response_seconds",
            "Human response time reported by HITL.sh, by loop.",
            HUMAN_BUCKETS,
            "loop",
        )
        self.reconciler_polls = counter(
            "reconciler_polls", "Reconciler API calls by kind (list, get).", "kind"
        )
        self.reconciler_recovered = counter(
            "reconciler_recovered", "Terminal answers found by polling (webhook missing)."
        )
        self.recovered_requests = counter(
            "recovered_requests",
            "Requests the submitter did not create again: reused (known in memory, no call) "
            "or adopted (found by a lookup); unreadable: listed requests it could not match.",
            "outcome",
        )
        self.unmatched = counter(
            "unmatched_callbacks", "Callbacks sent to the unmatched topic, by reason.", "reason"
        )
        self.unmatched_choices = counter(
            "unmatched_answer_choices",
            "Select answers naming no option that was sent (kept in the decision's response).",
            "response_type",
        )
        self.asyncio_tasks = gauge(
            "asyncio_tasks",
            "Asyncio tasks alive in the process's event loop (a leak shows as growth).",
        )
        self.transactions = counter(
            "kafka_transactions",
            "Kafka transactions by role and result (commit, abort).",
            "role",
            "result",
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
