"""Producing accepted webhooks to ``hitl.callbacks``: the gateway's only Kafka code.

A record is durable when the idempotent, acks=all producer's future resolves; only then does
``publish`` return. Anything else (broker down, timeout) raises ``SinkUnavailable`` within
``timeout_seconds`` so the HTTP answer stays well inside HITL.sh's 30-second limit.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from connector.config import Settings
from connector.gateway.app import SinkUnavailable
from connector.kafka.clients import make_producer
from connector.records import SCHEMA_CALLBACK, base_headers, dumps, iso_now


def callback_value(
    request_id: str,
    callback: dict[str, Any],
    payload: Any,
    *,
    via: str,
    token_event_id: str | None,
    received_at: float,
) -> bytes:
    """The ``hitl.callbacks`` value: normalized callback, raw payload, provenance."""
    return dumps(
        {
            "v": 1,
            "request_id": request_id,
            "callback": callback,
            "via": via,
            "token_event_id": token_event_id,
            "received_at": iso_now(received_at),
            "received_ts": received_at,
            "payload": payload,
        }
    )


class KafkaCallbackSink:
    """Publishes callbacks with an idempotent producer; tracks whether Kafka answers."""

    def __init__(self, settings: Settings, *, timeout_seconds: float = 5.0) -> None:
        self._topic = settings.topics.callbacks
        self._kafka = settings.kafka
        self._timeout = timeout_seconds
        self._producer: AIOKafkaProducer | None = None
        self._last_failure = 0.0

    async def start(self) -> None:
        self._producer = make_producer(self._kafka, role="gateway")
        await self._producer.start()

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    def ready(self) -> bool:
        return self._producer is not None and time.monotonic() - self._last_failure > 10

    async def publish(
        self,
        request_id: str,
        callback: dict[str, Any],
        payload: Any,
        token_event_id: str | None,
        *,
        via: str = "webhook",
    ) -> None:
        producer = self._producer
        if producer is None:
            raise SinkUnavailable("producer not started")
        value = callback_value(
            request_id,
            callback,
            payload,
            via=via,
            token_event_id=token_event_id,
            received_at=time.time(),
        )
        headers = base_headers(SCHEMA_CALLBACK, request_id=request_id)
        try:
            async with asyncio.timeout(self._timeout):
                future = await producer.send(
                    self._topic, value=value, key=request_id.encode(), headers=headers
                )
                await future
        except (KafkaError, TimeoutError, OSError) as exc:
            self._last_failure = time.monotonic()
            raise SinkUnavailable(f"{type(exc).__name__}: {exc}") from exc
