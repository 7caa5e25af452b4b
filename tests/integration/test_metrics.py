"""Metrics against ground truth: every counter and gauge equals what the test counts itself.

Real broker, sandbox and connector (all roles, in-process so the registry can be read
directly; the same numbers are served on /metrics, checked at the end).
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from connector.app import ConnectorApp
from connector.metrics import Metrics
from hitl_sandbox import SandboxServer
from tests.integration.harness import (
    decision_settings,
    offsets,
    produce,
    read_all,
    sandbox_get,
    sandbox_put_config,
    wait_until,
)
from tests.integration.test_decision_path import reviewer

pytestmark = pytest.mark.kafka


def value(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def total(m: Metrics, name: str, **match: str) -> float:
    """Sum of a metric's samples whose labels include ``match``."""
    out = 0.0
    for family in m.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in match.items()):
                out += sample.value
    return out


def lag_sum(m: Metrics, role: str) -> float:
    return total(m, "hitl_connector_consumer_lag", role=role)


async def test_metrics_equal_ground_truth(kafka_bootstrap: str, connector_apps: Any) -> None:
    with SandboxServer(reviewer(auto_review=False)) as sandbox:
        settings = decision_settings(
            kafka_bootstrap,
            sandbox.url,
            batch={"max_batch_seconds": 2.0},
            hitl={"circuit_failure_threshold": 2, "circuit_open_seconds": 60.0, "max_retries": 1},
        )
        app: ConnectorApp = await connector_apps(settings, "all")
        m = app.metrics
        assert m is not None
        group = settings.kafka.group_id
        good = [
            (f"k{i}".encode(), orjson.dumps({"id": f"g{i}", "content": f"c{i}"})) for i in range(40)
        ]
        bad = [(f"b{i}".encode(), b"{broken" if i % 2 else b"\xff\xfe") for i in range(10)]
        await produce(kafka_bootstrap, settings.topics.input, good + bad)

        async def consumed_50() -> bool:
            return value(m, "hitl_connector_events_consumed_total") == 50

        await wait_until(consumed_50, timeout=60, what="50 consumed")
        truth = await offsets(kafka_bootstrap, group, settings.topics.input)
        assert truth.total_committed == 50
        assert value(m, "hitl_connector_events_total", outcome="submitted", reason="") == 40
        assert total(m, "hitl_connector_events_total", outcome="dlq") == 10
        assert value(m, "hitl_connector_events_total", outcome="dlq", reason="invalid_json") == 5
        stats = sandbox_get(sandbox.url, "/sandbox/stats")
        creates_ok = value(
            m, "hitl_connector_hitl_api_calls_total", endpoint="create_request", status_class="2xx"
        )
        assert creates_ok == stats["creates"] == 40

        async def pending_matches() -> bool:
            pending = sandbox_get(sandbox.url, "/sandbox/stats")["pending"]
            return value(m, "hitl_connector_pending_requests") == pending == 40

        await wait_until(pending_matches, timeout=10, what="pending gauge = sandbox pending")
        assert value(m, "hitl_connector_oldest_pending_age_seconds") > 0

        # HITL down: the submitter pauses; its lag is the records it could not submit.
        sandbox_put_config(sandbox.url, outage_seconds=600, outage_retry_after=30)
        await produce(
            kafka_bootstrap,
            settings.topics.input,
            [
                (f"o{i}".encode(), orjson.dumps({"id": f"o{i}", "content": "later"}))
                for i in range(20)
            ],
        )

        async def lag_matches() -> bool:
            snap = await offsets(kafka_bootstrap, group, settings.topics.input)
            backlog = snap.total_end - snap.total_committed
            return backlog > 0 and lag_sum(m, "submitter") == backlog

        await wait_until(lag_matches, timeout=30, what="submitter lag = end - committed")
        assert value(m, "hitl_connector_hitl_circuit_state") == 2  # open
        assert (
            value(
                m,
                "hitl_connector_hitl_api_calls_total",
                endpoint="create_request",
                status_class="5xx",
            )
            >= 1
        )

        sandbox_put_config(sandbox.url, outage_seconds=0, auto_review=True)

        async def all_decided() -> bool:
            return len(await read_all(kafka_bootstrap, settings.topics.output)) >= 60

        await wait_until(all_decided, timeout=120, interval=1, what="60 decisions")
        decisions = await read_all(kafka_bootstrap, settings.topics.output)

        async def settled() -> bool:
            return (
                total(m, "hitl_connector_decisions_total") == len(decisions)
                and value(m, "hitl_connector_pending_requests") == 0
                and lag_sum(m, "submitter") == 0
                and lag_sum(m, "resolver") == 0
            )

        await wait_until(settled, timeout=15, what="gauges settle")
        stats = sandbox_get(sandbox.url, "/sandbox/stats")
        accepted = value(m, "hitl_connector_webhooks_received_total", outcome="accepted")
        assert accepted == stats["webhooks"]["delivered"]
        assert value(m, "hitl_connector_events_consumed_total") == 70
        assert total(m, "hitl_connector_decisions_total", decided_by="human") == 60
        assert value(m, "hitl_connector_hitl_circuit_state") == 0
        assert total(m, "hitl_connector_kafka_transactions_total", result="commit") > 0
        assert value(m, "hitl_connector_decision_latency_seconds_count", loop="loop-test") == 60
        print(
            f"\nmetrics ground truth: consumed=70 created={stats['creates']} "
            f"decisions={len(decisions)} webhooks_accepted={accepted:.0f} "
            f"dlq=10 api_calls={stats['api_calls_total']}"
        )
        assert app.gateway is not None
        async with httpx.AsyncClient(timeout=5) as http:  # served by this very event loop
            scraped = (await http.get(app.gateway.url + "/metrics")).text
        assert "hitl_connector_events_consumed_total 70.0" in scraped
