"""Helpers for integration tests: settings for a run, producing, reading topics, waiting.

Everything here talks to the real broker and real HTTP servers; nothing is faked.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError

from connector.config import KafkaSettings, Settings
from connector.kafka.admin import partition_ids

API_KEY = "hitl_test_key"
WEBHOOK_SECRET = "whsec-test-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_settings(
    bootstrap: str, sandbox_url: str, *, loop_id: str = "loop-test", **sections: Any
) -> Settings:
    """Settings with unique topics and group for one test, pointed at the sandbox."""
    run = uuid.uuid4().hex[:10]
    data: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": f"g-{run}",
            "instance_id": f"i-{run}",
            "session_timeout_ms": 10_000,
        },
        "topics": {
            "input": f"in-{run}",
            "output": f"out-{run}",
            "dlq": f"dlq-{run}",
            "requests": f"req-{run}",
            "callbacks": f"cb-{run}",
            "unmatched": f"unm-{run}",
            "journal": f"jrn-{run}",
            "escalations": f"esc-{run}",
            "partitions": 3,
            "internal_partitions": 3,
        },
        # The sandbox is unlimited unless a test limits it; so is the connector then.
        "hitl": {
            "base_url": f"{sandbox_url}/v1",
            "api_key": API_KEY,
            "rate_limit_calls": 1_000_000,
            "rate_limit_window_seconds": 1,
        },
        "loops": {"default": loop_id},
        "batch": {"linger_ms": 20},
        # Every role serves /metrics; a free port keeps parallel apps apart.
        # A webhook secret: the gateway refuses to start with nothing to authenticate.
        "gateway": {"host": "127.0.0.1", "port": 0, "secrets": [WEBHOOK_SECRET]},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return Settings(**data)


def decision_settings(bootstrap: str, sandbox_url: str, **sections: Any) -> Settings:
    """Settings for a run with every role: gateway on a free port with a public URL (so
    requests carry callback URLs), webhook secret, fast reconciler."""
    port = free_port()
    gateway = {
        "host": "127.0.0.1",
        "port": port,
        "public_url": f"http://127.0.0.1:{port}",
        "secrets": [WEBHOOK_SECRET],
        "token_secrets": ["token-secret"],
        "signature": "required",
    }
    gateway.update(sections.pop("gateway", {}))
    resolver = {
        "reconcile_interval_seconds": 1.0,
        "reconcile_max_wait_seconds": 6.0,
        "reconcile_repoll_seconds": 5.0,
        "unmatched_ttl_seconds": 30.0,
    }
    resolver.update(sections.pop("resolver", {}))
    return run_settings(bootstrap, sandbox_url, gateway=gateway, resolver=resolver, **sections)


async def produce(bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes]]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(futures)


@dataclass
class Snapshot:
    end: dict[int, int]
    committed: dict[int, int]

    @property
    def done(self) -> bool:
        return all(self.committed.get(p, 0) >= e for p, e in self.end.items())

    @property
    def total_end(self) -> int:
        return sum(self.end.values())

    @property
    def total_committed(self) -> int:
        return sum(self.committed.values())


async def offsets(bootstrap: str, group: str, topic: str) -> Snapshot:
    """End offsets of ``topic`` and the group's committed offsets, per partition."""
    parts = await partition_ids(KafkaSettings(bootstrap_servers=bootstrap), topic)
    tps = [TopicPartition(topic, p) for p in parts]
    if not tps:
        return Snapshot({}, {})
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        for attempt in range(50):
            try:
                committed = await admin.list_consumer_group_offsets(group, partitions=tps)
                break
            except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
                # A fresh broker creates __consumer_offsets on the first lookup.
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
        await admin.close()
    return Snapshot(
        {tp.partition: off for tp, off in end.items()},
        {tp.partition: meta.offset for tp, meta in committed.items() if meta.offset >= 0},
    )


async def read_all(bootstrap: str, topic: str, *, timeout: float = 10.0) -> list[Any]:
    """Every committed record of ``topic`` (read_committed), up to the current end."""
    parts = await partition_ids(KafkaSettings(bootstrap_servers=bootstrap), topic)
    if not parts:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= end[tp] for tp in tps):
                break
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.25, what: str = ""
) -> float:
    """Poll ``check`` until true; returns the seconds it took. Fails the test on timeout."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(interval)


def event_of(request: dict[str, Any]) -> str:
    """The event id the connector put into a sandbox request's ``context.connector``."""
    conn = (request.get("context") or {}).get("connector") or {}
    return str(conn.get("event_id", request.get("idempotency_key")))


def source_of(request: dict[str, Any]) -> tuple[str, int, int] | None:
    """The source record (topic, partition, offset) a sandbox request was created for."""
    conn = (request.get("context") or {}).get("connector") or {}
    try:
        return str(conn["topic"]), int(conn["partition"]), int(conn["offset"])
    except (KeyError, TypeError, ValueError):
        return None


LOOKUP = "GET /loops/{id}/requests"


def lookup_calls(stats: dict[str, Any]) -> int:
    """API calls the connector spent looking requests up (``GET loops/{id}/requests``)."""
    return sum((stats.get("api_calls") or {}).get(LOOKUP, {}).values())


def sandbox_get(url: str, path: str, **params: Any) -> Any:
    return httpx.get(f"{url}{path}", params=params, timeout=10).json()


def sandbox_put_config(url: str, **changes: Any) -> Any:
    response = httpx.put(f"{url}/sandbox/config", json=changes, timeout=10)
    response.raise_for_status()
    return response.json()


def header(record: Any, name: str) -> bytes | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value)
    return None


def webhook_outcomes(app: Any) -> dict[str, int]:
    """The gateway's webhook outcomes, read from the app's Prometheus registry."""
    if app.gateway is None or app.metrics is None:
        return {}
    out: dict[str, int] = {}
    for metric in app.metrics.registry.collect():
        if metric.name == "hitl_connector_webhooks_received":
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    out[sample.labels["outcome"]] = int(sample.value)
    return out


def webhook_ack_quantile(app: Any, q: float) -> float | None:
    """Upper bound of the ``webhook_ack_seconds`` bucket holding quantile ``q`` (registry)."""
    if app.metrics is None:
        return None
    buckets: list[tuple[float, float]] = []
    for metric in app.metrics.registry.collect():
        if metric.name == "hitl_connector_webhook_ack_seconds":
            buckets = [
                (float(s.labels["le"]), s.value)
                for s in metric.samples
                if s.name.endswith("_bucket")
            ]
    total = buckets[-1][1] if buckets else 0
    return next((le for le, n in buckets if total and n >= q * total), None)


def counted(app: Any, name: str, **labels: str) -> int:
    """A counter's value from the app's Prometheus registry (``name`` without the prefix)."""
    assert app.metrics is not None, "metrics.enabled is off"
    value = app.metrics.registry.get_sample_value(f"hitl_connector_{name}_total", labels)
    return int(value or 0)
