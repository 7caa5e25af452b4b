"""Producing accepted webhooks to ``hitl.callbacks``: the gateway's only Kafka code.

A record is durable when the idempotent, acks=all producer acknowledged the batch holding it;
only then does ``publish`` return. Anything else (broker down, timeout) raises
``SinkUnavailable`` within about ``timeout_seconds`` so the HTTP answer stays well inside
HITL.sh's 30-second limit.

Batching across concurrent webhooks: ``publish`` serializes its record, appends it to the
pending round and waits on its own future; one flusher task sends each round as one record
batch per partition (``send_batch``; the partition is Kafka's murmur2 of the key, exactly as
the producer's default partitioner computes it, so co-partitioning with ``hitl.requests``
holds; ``connector.kafka.batches``, sent without the producer's linger) and resolves the
round's futures when Kafka acknowledged every batch. While a round is
in flight the next one accumulates, so the batch size follows the load with no configured
linger (aiokafka keeps one produce request in flight per broker anyway).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from connector.config import KafkaSettings
from connector.gateway.app import SinkUnavailable, Unusable
from connector.kafka.batches import BatchWriter
from connector.kafka.clients import make_producer
from connector.kafka.partitioner import murmur2
from connector.records import SCHEMA_CALLBACK, base_headers, iso_now

SCHEMA_CALLBACK_RAW = "hitl.callback.raw.v1"

log = logging.getLogger(__name__)

_Pending = tuple[int, bytes, bytes, list[tuple[str, bytes]], "asyncio.Future[None]"]


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
    return orjson.dumps(
        {
            "v": 1,
            "request_id": request_id,
            "callback": callback,
            "via": via,
            "token_event_id": token_event_id,
            "received_at": iso_now(received_at),
            "received_ts": received_at,
            "payload": payload,
        },
        option=orjson.OPT_NON_STR_KEYS,
    )


def unusable_value(
    raw: bytes,
    unusable: Unusable,
    request_id: str | None,
    token_event_id: str | None,
    received_at: float,
) -> bytes:
    """A kept delivery: the ``hitl.callbacks`` envelope with ``callback`` null and the raw
    body (UTF-8 text, or base64 when it is not UTF-8), so that once the cause is fixed a replay
    into ``hitl.callbacks`` is normalized again by the resolver (``parse_callback_value``)."""
    try:
        text, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return orjson.dumps(
        {
            "v": 1,
            "request_id": request_id,
            "callback": None,
            "via": unusable.via,
            "token_event_id": token_event_id,
            "received_at": iso_now(received_at),
            "received_ts": received_at,
            "reason": unusable.reason,
            "detail": unusable.detail,
            "raw": text,
            "raw_encoding": encoding,
        }
    )


class KafkaCallbackSink:
    """Publishes callbacks in batches with an idempotent producer; tracks whether Kafka answers."""

    def __init__(
        self, kafka: KafkaSettings, topic: str, unmatched: str, *, timeout_seconds: float = 5.0
    ) -> None:
        self._topic = topic  # topics.callbacks
        self._unmatched = unmatched  # topics.unmatched: authenticated but unusable deliveries
        self._kafka = kafka
        self._timeout = timeout_seconds
        self._producer: AIOKafkaProducer | None = None
        self._last_failure = 0.0
        self._partitions: list[int] = []
        self._pending: list[_Pending] = []
        self._oldest = 0.0  # monotonic time the oldest pending record was added
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        producer = make_producer(self._kafka, role="gateway")
        await producer.start()
        try:
            self._partitions = sorted(await producer.partitions_for(self._topic))
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer
        self._wakeup = asyncio.Event()
        self._flusher = asyncio.create_task(self._flush_loop(), name="gateway-sink")

    async def stop(self) -> None:
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            if self._pending:  # let the last round go out (bounded by the timeout)
                self._wakeup.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._timeout + 1):
                        while self._pending:  # noqa: ASYNC110 - a few ms at shutdown
                            await asyncio.sleep(0.01)
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        self._fail(self._pending, "gateway stopping")
        self._pending = []
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
        if self._producer is None or self._flusher is None:
            raise SinkUnavailable("producer not started")
        received_at = time.time()
        value = callback_value(
            request_id,
            callback,
            payload,
            via=via,
            token_event_id=token_event_id,
            received_at=received_at,
        )
        key = request_id.encode()
        headers = base_headers(SCHEMA_CALLBACK, request_id=request_id)
        partitions = self._partitions
        partition = partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._pending:
            self._oldest = time.monotonic()
            self._wakeup.set()
        self._pending.append((partition, key, value, headers, future))
        await future

    async def publish_unusable(
        self,
        raw: bytes,
        unusable: Unusable,
        *,
        request_id: str | None,
        token_event_id: str | None,
    ) -> None:
        """Keep an authenticated delivery that cannot be used on the unmatched topic; returns
        once it is durable. Rare, so sent on its own rather than through the batching rounds."""
        producer = self._producer
        if producer is None:
            raise SinkUnavailable("producer not started")
        value = unusable_value(raw, unusable, request_id, token_event_id, time.time())
        key = request_id.encode() if request_id is not None else None
        headers = base_headers(SCHEMA_CALLBACK_RAW, request_id=request_id)
        headers += [
            ("error.reason", unusable.reason.encode()),
            ("error.detail", unusable.detail.encode("utf-8", "replace")[:500]),
        ]
        try:
            async with asyncio.timeout(self._timeout):
                await producer.send_and_wait(self._unmatched, value, key=key, headers=headers)
        except (KafkaError, TimeoutError, OSError) as exc:
            self._last_failure = time.monotonic()
            raise SinkUnavailable(f"{type(exc).__name__}: {exc}") from exc

    # ---- the flusher ---------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                pending, self._pending = self._pending, []
                await self._send_round(pending, self._oldest + self._timeout)

    async def _send_round(self, pending: list[_Pending], deadline: float) -> None:
        """Send one round and wait for its acknowledgement, then resolve its waiters.

        One round in flight at a time, like aiokafka's one produce request per broker: what
        arrives meanwhile becomes the next round, so a request carries everything that came
        during the previous round trip (a round queued early would carry only a few records
        and leave the rest for one more round trip).
        """
        producer = self._producer
        assert producer is not None
        try:
            async with asyncio.timeout_at(_loop_deadline(deadline)):
                futures = await self._send_batches(producer, pending)
                await asyncio.gather(*futures)
        except asyncio.CancelledError:  # stopping: nobody is left to wait for this round
            self._fail(pending, "gateway stopping")
            raise
        except Exception as exc:  # noqa: BLE001 - any failure answers 503, never hangs
            self._round_failed(pending, exc)
            return
        for item in pending:
            future = item[4]
            if not future.done():
                future.set_result(None)

    def _round_failed(self, pending: list[_Pending], exc: BaseException) -> None:
        if not isinstance(exc, KafkaError | TimeoutError | OSError):
            log.error("gateway sink round failed unexpectedly", exc_info=exc)
        self._last_failure = time.monotonic()
        self._fail(pending, f"{type(exc).__name__}: {exc}")

    async def _send_batches(
        self, producer: AIOKafkaProducer, pending: list[_Pending]
    ) -> list[asyncio.Future[Any]]:
        writer = BatchWriter(producer)
        topic = self._topic
        for partition, key, value, headers, _ in pending:
            writer.add(topic, partition, key, value, headers)
        return await writer.send()

    @staticmethod
    def _fail(pending: list[_Pending], reason: str) -> None:
        for item in pending:
            future = item[4]
            if not future.done():
                future.set_exception(SinkUnavailable(reason))
                future.exception()  # retrieved: an abandoned waiter must not log a warning


def _loop_deadline(monotonic_deadline: float) -> float:
    """A ``time.monotonic`` deadline in the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())
