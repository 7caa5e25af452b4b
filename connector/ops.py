"""Operator commands: ``pending list``, ``reconcile``, ``webhooks register|list``.

Each reads state from Kafka or HITL.sh and prints it; none commits consumer offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from connector.config import Settings
from connector.errors import ConfigError, KafkaSetupError
from connector.gateway.sink import KafkaCallbackSink
from connector.hitl.client import HitlClient
from connector.kafka.admin import partition_ids
from connector.records import RequestEntry, epoch
from connector.resolver.reconciler import Reconciler, ReconcileResult
from connector.resolver.table import RequestTable


@contextlib.asynccontextmanager
async def _restored_table(settings: Settings) -> AsyncIterator[tuple[RequestTable, list[int]]]:
    """The request table of every partition, restored as the resolver restores it."""
    table = RequestTable(settings.kafka, settings.topics.requests, settings.resolver)
    await table.start()
    try:
        parts = await partition_ids(settings.kafka, settings.topics.requests)
        await table.assign(parts)
        if not await table.wait_ready(parts, settings.resolver.restore_timeout_seconds):
            raise KafkaSetupError(
                f"{settings.topics.requests} was not read to its end within "
                "resolver.restore_timeout_seconds; check the brokers or raise it"
            )
        yield table, parts
    finally:
        await table.stop()


async def read_pending(settings: Settings) -> list[RequestEntry]:
    """Every request in ``hitl.requests`` that has no tombstone yet."""
    async with _restored_table(settings) as (table, parts):
        rows = [entry for p in parts for entry in table.rows(p)]
    return sorted(rows, key=lambda e: e.submitted_at)


def _age(iso: str, now: float) -> str:
    stamp = epoch(iso)
    if stamp is None:
        return "?"
    seconds = now - stamp
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
    sink = KafkaCallbackSink(settings.kafka, settings.topics.callbacks, settings.topics.unmatched)
    async with HitlClient(settings.hitl) as client, _restored_table(settings) as (table, _):
        await sink.start()
        try:

            async def publish(request_id: str, callback: dict[str, Any], payload: Any) -> None:
                await sink.publish(request_id, callback, payload, None, via="poll")

            return await Reconciler(
                settings.resolver, settings.hitl, client, table, publish
            ).run_once()
        finally:
            await sink.stop()


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
