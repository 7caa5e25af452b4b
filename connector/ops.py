"""Operator commands: ``pending list``, ``reconcile``, ``webhooks register|list``.

Each reads state from Kafka or HITL.sh and prints it; none commits consumer offsets.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from datetime import datetime
from typing import Any

import orjson
from aiokafka import TopicPartition

from connector.config import Settings
from connector.errors import ConfigError
from connector.gateway.sink import KafkaCallbackSink
from connector.hitl.client import HitlClient
from connector.kafka.admin import partition_ids
from connector.kafka.clients import make_consumer
from connector.records import RequestEntry
from connector.resolver.reconciler import Reconciler, ReconcileResult
from connector.resolver.table import RequestTable


async def read_pending(settings: Settings) -> list[RequestEntry]:
    """Every request in ``hitl.requests`` that has no tombstone yet."""
    topic = settings.topics.requests
    tps = [TopicPartition(topic, p) for p in await partition_ids(settings, topic)]
    if not tps:
        return []
    consumer = make_consumer(settings.kafka, role="ops", group_id=None)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        rows: dict[str, RequestEntry] = {}

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in tps])

        while await behind():
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for rec in records:
                    if rec.key is None:
                        continue
                    rid = rec.key.decode("utf-8", "replace")
                    if rec.value is None:
                        rows.pop(rid, None)
                        continue
                    try:
                        rows[rid] = RequestEntry.from_json(orjson.loads(rec.value))
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        continue
        return sorted(rows.values(), key=lambda e: e.submitted_at)
    finally:
        await consumer.stop()


def _age(iso: str, now: float) -> str:
    try:
        seconds = now - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def format_pending(rows: list[RequestEntry], now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [f"{'REQUEST':<26} {'EVENT':<28} {'LOOP':<20} {'AGE':>7} {'TIMEOUT AT':<22}"]
    lines += [
        f"{e.request_id:<26} {e.event_id[:28]:<28} {e.loop_id[:20]:<20} "
        f"{_age(e.submitted_at, now):>7} {e.timeout_at or '-':<22}"
        for e in rows
    ]
    lines.append(f"{len(rows)} pending")
    return "\n".join(lines)


async def reconcile_once(settings: Settings) -> ReconcileResult:
    """One reconciler pass over every partition, now (overdue requests only)."""
    if settings.hitl.api_key is None:
        raise ConfigError("HITL_API_KEY is not set; reconcile must call HITL.sh")
    table = RequestTable(settings)
    sink = KafkaCallbackSink(settings)
    async with HitlClient(settings.hitl) as client:
        await table.start()
        await sink.start()
        try:
            parts = await partition_ids(settings, settings.topics.requests)
            await table.assign(parts)
            await table.wait_ready(parts, settings.resolver.restore_timeout_seconds)

            async def publish(request_id: str, callback: dict[str, Any], payload: Any) -> None:
                await sink.publish(request_id, callback, payload, None, via="poll")

            return await Reconciler(settings, client, table, publish).run_once()
        finally:
            await sink.stop()
            await table.stop()


def format_result(result: ReconcileResult) -> str:
    return " ".join(f"{k}={v}" for k, v in asdict(result).items())


async def register_webhook(
    settings: Settings, url: str, events: list[str], secret: str, loop_id: str | None
) -> dict[str, Any]:
    async with HitlClient(settings.hitl) as client:
        return await client.register_webhook(url, events, secret, loop_id=loop_id)


async def list_webhooks(settings: Settings) -> list[dict[str, Any]]:
    async with HitlClient(settings.hitl) as client:
        return await client.list_webhooks()


def run(coro: Any) -> Any:
    return asyncio.run(coro)
