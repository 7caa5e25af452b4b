"""Shared fixtures: one real Kafka broker per test session, and unique topics per test.

``kafka_broker`` starts a single-node KRaft broker through ``connector.devkafka.DevKafka`` (the
same code as ``hitl-connector dev-kafka``) on a free port with a temporary data dir, and stops
it when the session ends. With ``HITL_TEST_BOOTSTRAP=host:port`` the tests use that broker
instead, and tests that need the broker process itself (``kafka_broker``) are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from connector.devkafka import DevKafka

EXTERNAL_BOOTSTRAP_ENV = "HITL_TEST_BOOTSTRAP"

TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture(scope="session")
async def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevKafka]:
    """The session's broker process (so tests can stop, kill, pause or restart it)."""
    if os.environ.get(EXTERNAL_BOOTSTRAP_ENV):
        pytest.skip(f"{EXTERNAL_BOOTSTRAP_ENV} is set: the broker process is not ours")
    broker = DevKafka(tmp_path_factory.mktemp("kafka"), port=0)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """``host:port`` of the test broker (external or the session's own)."""
    if external := os.environ.get(EXTERNAL_BOOTSTRAP_ENV):
        return external
    broker: DevKafka = request.getfixturevalue("kafka_broker")
    return broker.bootstrap_servers


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topic: str, partitions: int) -> None:
    """Creation returns once the controller committed it; wait until the broker serves it."""
    for _ in range(100):
        (described,) = await admin.describe_topics([topic])
        leaders = [p["leader"] for p in described["partitions"]]
        if described["error_code"] == 0 and len(leaders) == partitions and min(leaders) >= 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"topic {topic} has no leaders after 5 s")


@pytest.fixture
async def topic_factory(kafka_bootstrap: str) -> AsyncIterator[TopicFactory]:
    """``await topic_factory("name", partitions=3, config={...})`` → a new unique topic name.

    Each name gets a uuid suffix, so tests never share topics; they are deleted afterwards.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=30000)
    await admin.start()
    created: list[str] = []

    async def create(
        prefix: str = "test",
        partitions: int = 1,
        config: Mapping[str, str] | None = None,
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        topic = NewTopic(name, partitions, 1, topic_configs=dict(config or {}))
        response = await admin.create_topics([topic])
        for topic_name, code, *_ in response.topic_errors:
            assert code == 0, f"creating {topic_name} failed with error code {code}"
        created.append(name)
        await _wait_for_leaders(admin, name, partitions)
        return name

    try:
        yield create
    finally:
        if created:
            # Best effort: the test may have killed or paused the broker.
            with contextlib.suppress(KafkaError):
                await admin.delete_topics(created)
        await admin.close()


@pytest.fixture
async def connector_apps() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Start ``ConnectorApp``s in the test's loop: ``await connector_apps(settings, role)``.

    Every app started is stopped (drained) when the test ends.
    """
    from connector.app import ConnectorApp

    apps: list[ConnectorApp] = []

    async def start(settings: Any, role: str = "all") -> ConnectorApp:
        app = ConnectorApp(settings, role)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in reversed(apps):
        await app.stop()
