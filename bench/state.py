"""Resolver restore: time to ready and resident memory per pending request (issue 6).

``hitl.requests`` is filled with N pending rows written exactly as the submitter writes them
(``RequestEntry.to_record``: key = request_id, JSON value, the same headers), then a resolver
process (``--role resolver``) is started on it. Measured: process start → ``/readyz`` 200 (the
resolver is ready once every assigned partition of the table is read up to its end offset),
and the RSS after the restore minus the RSS of a resolver with an empty table, ÷ N. The
resolver runs at the shipped defaults (``restore_timeout_seconds`` included) except
``resolver.reconcile=false`` (no HITL.sh to poll) and INFO logs (the restored rows are counted
from them); the clock starts at process launch, after the table was written.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from bench.common import (
    BenchEnv,
    Figure,
    connector_config,
    create_topics,
    free_port,
    rss_bytes,
    run_id,
    start_connector,
    stop,
    topics_for,
)
from connector.records import (
    H_CONTENT_TYPE,
    H_EVENT_ID,
    H_REQUEST_ID,
    H_SCHEMA,
    SCHEMA_REQUEST,
    RequestEntry,
    SourceRef,
    dumps,
    iso_from_ms,
    iso_now,
    key_to_text,
)

SCENARIO = "state"
TABLE_CONFIG = {"cleanup.policy": "compact", "retention.ms": "-1", "min.compaction.lag.ms": "60000"}
PARTITIONS = 6
OPTIONS = [
    {"value": "approved", "label": "Approve"},
    {"value": "rejected", "label": "Reject"},
    {"value": "needs_changes", "label": "Needs changes"},
]


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


_ms_prefix: dict[int, str] = {}


def _iso_ms(ts_ms: int) -> str:
    """``iso_from_ms`` for a millisecond timestamp, cached per second."""
    second, ms = divmod(ts_ms, 1000)
    prefix = _ms_prefix.get(second)
    if prefix is None:
        prefix = _ms_prefix[second] = _iso(datetime.fromtimestamp(second, UTC))[:-1]
    return f"{prefix}.{ms:03d}000Z" if ms else f"{prefix}Z"


def pending_rows(run: str, n: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """``n`` request-table rows as the submitter writes them (key, value, headers).

    One ``RequestEntry`` is serialised by the connector's own code; the others are that JSON
    with the per-request fields replaced (the same bytes ``to_record`` would give, faster).
    """
    now = time.time()
    timeout_at = _iso(datetime.now(UTC) + timedelta(hours=2))
    prefix = f"{int(now) & 0xFFFFFFFF:08x}{uuid.uuid4().hex[:10]}"
    topic = f"content-{run}"

    def entry(i: int) -> RequestEntry:
        return RequestEntry(
            request_id=f"{prefix}{i:06x}",
            event_id=f"{run}-evt-{i}",
            key=f"{run}-key-{i}".encode(),
            loop_id="bench-loop",
            source=SourceRef(topic, i % PARTITIONS, i // PARTITIONS, int(now * 1000) - 5000 + i),
            response_type="single_select",
            options=OPTIONS,
            default_response="rejected",
            timeout_at=timeout_at,
            submitted_at=iso_now(now - 1),
            traceparent=None,
            callback_token=True,
        )

    template = entry(0)
    first = template.to_record("t")
    assert first.value is not None
    base = orjson.loads(first.value)
    # Per-row timestamps by string formatting (the connector's iso helpers are slow here).
    sub0 = datetime.fromtimestamp(int(now) - 60, UTC)
    sub_prefix = _iso(sub0)[:17]  # "YYYY-MM-DDTHH:MM:"
    ts0 = int(now * 1000) - 5000
    fixed = [(H_CONTENT_TYPE, b"application/json"), (H_SCHEMA, SCHEMA_REQUEST.encode())]
    rows = []
    for i in range(n):
        request_id = f"{prefix}{i:06x}"
        event_id = f"{run}-evt-{i}"
        key = f"{run}-key-{i}".encode()
        ts = ts0 + i
        micros = i % 60_000_000
        value = {
            **base,
            "request_id": request_id,
            "event_id": event_id,
            "key": key_to_text(key),
            "source": {
                "topic": topic,
                "partition": i % PARTITIONS,
                "offset": i // PARTITIONS,
                "timestamp": iso_from_ms(ts) if i == 0 else _iso_ms(ts),
                "timestamp_ms": ts,
            },
            "submitted_at": iso_now(now - 1)
            if i == 0
            else (f"{sub_prefix}{micros // 1_000_000:02d}.{micros % 1_000_000:06d}Z"),
        }
        headers = [*fixed, (H_EVENT_ID, event_id.encode()), (H_REQUEST_ID, request_id.encode())]
        rows.append((request_id.encode(), dumps(value), headers))
    if n:
        assert rows[0][1] == first.value, "rows must match the submitter's format"
        assert rows[0][2] == first.headers
    return rows


async def write_rows(bootstrap: str, topic: str, run: str, n: int) -> float:
    """Write ``n`` pending rows fast: whole record batches per partition (``send_batch``),
    the partition chosen by the default partitioner as the submitter's producer does."""
    started = time.monotonic()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, max_batch_size=1024 * 1024, max_request_size=8 * 1024 * 1024
    )
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        partitioner = DefaultPartitioner()
        pending: list[Any] = []
        chunk = 50_000
        for start in range(0, n, chunk):
            batches: dict[int, Any] = {}
            ts = int(time.time() * 1000)
            for key, value, headers in pending_rows(f"{run}-{start}", min(chunk, n - start)):
                p = partitioner(key, partitions, partitions)
                batch = batches.get(p)
                if batch is None:
                    batch = batches[p] = producer.create_batch()
                if batch.append(timestamp=ts, key=key, value=value, headers=headers) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=p))
                    batch = batches[p] = producer.create_batch()
                    batch.append(timestamp=ts, key=key, value=value, headers=headers)
            for p, batch in batches.items():
                pending.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.monotonic() - started


def _restored_rows(log: Path) -> int:
    """Rows the resolver reports restored, from its JSON log lines."""
    total = 0
    for line in log.read_text(errors="replace").splitlines():
        if "request table partition" not in line:
            continue
        try:
            msg = str(orjson.loads(line).get("message") or orjson.loads(line).get("msg") or "")
        except orjson.JSONDecodeError:
            msg = line
        if "(" in msg and "rows)" in msg:
            total += int(msg.rsplit("(", 1)[1].split()[0])
    return total


async def create_connector_topics(
    bootstrap: str, topics: dict[str, str], partitions: int = PARTITIONS
) -> None:
    """Every connector topic of a run; ``requests`` compacted, as the connector requires."""
    await create_topics(bootstrap, [t for k, t in topics.items() if k != "requests"], partitions)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topics["requests"], partitions, 1, topic_configs=TABLE_CONFIG)]
        )
    finally:
        await admin.close()


async def restore_once(env: BenchEnv, n: int) -> dict[str, Any]:
    """Fill a fresh requests topic with ``n`` rows, start a resolver, time it to ready."""
    run = run_id("state")
    cfg_topics = {k: v for k, v in topics_for(run).items() if v is not None}
    await create_connector_topics(env.bootstrap, cfg_topics, PARTITIONS)
    write_s = await write_rows(env.bootstrap, cfg_topics["requests"], run, n) if n else 0.0
    port = free_port()
    config = connector_config(
        env,
        run,
        "http://127.0.0.1:9",
        gateway={"host": "127.0.0.1", "port": port},
        # Shipped defaults, but no reconciler: there is no HITL.sh to poll here, and the
        # reconciler takes no part in the restore.
        resolver={"reconcile": False},
        log={"level": "INFO", "format": "json"},
    )
    started = time.monotonic()
    proc = start_connector(env, config, role="resolver")
    try:
        ready_s = None
        async with httpx.AsyncClient() as http:
            while time.monotonic() - started < 600:
                if proc.poll() is not None:
                    raise RuntimeError(f"resolver exited with {proc.returncode}; see {config}")
                try:
                    r = await http.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                    if r.status_code == 200:
                        ready_s = time.monotonic() - started
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        if ready_s is None:
            raise RuntimeError("resolver not ready within 600 s")
        await asyncio.sleep(3)  # settle: let the fetcher's buffers go
        rss = rss_bytes(proc.pid)
    finally:
        stop(proc)
    restored = _restored_rows(config.with_suffix(".log"))
    if restored != n:
        raise RuntimeError(f"resolver restored {restored} rows, expected {n}")
    return {"n": n, "write_s": write_s, "ready_s": ready_s, "rss": rss}


async def run(env: BenchEnv) -> list[Figure]:
    sizes = [100_000] if env.quick else [100_000, 1_000_000]
    ready: dict[int, list[float]] = {n: [] for n in sizes}
    per_pending: dict[int, list[float]] = {n: [] for n in sizes}
    empty_ready: list[float] = []
    for rep in range(env.repeats):
        base = await restore_once(env, 0)
        empty_ready.append(base["ready_s"])
        print(
            f"  [{rep}] empty table: ready {base['ready_s']:.2f} s, "
            f"RSS {base['rss'] / 2**20:.0f} MiB"
        )
        for n in sizes:
            got = await restore_once(env, n)
            ready[n].append(got["ready_s"])
            per_pending[n].append((got["rss"] - base["rss"]) / n)
            print(
                f"  [{rep}] {n:,} pending: written in {got['write_s']:.1f} s, ready "
                f"{got['ready_s']:.2f} s, RSS {got['rss'] / 2**20:.0f} MiB, "
                f"{per_pending[n][-1]:.0f} B/pending",
                flush=True,
            )
    figures = [Figure(SCENARIO, "resolver ready, empty table", "s", empty_ready, better="lower")]
    for n in sizes:
        label = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
        figures.append(
            Figure(
                SCENARIO,
                f"restore {label} pending: process start → ready",
                "s",
                ready[n],
                target="<= 60" if n >= 1_000_000 else None,
                better="lower",
            )
        )
        figures.append(
            Figure(
                SCENARIO,
                f"resident memory per pending request ({label})",
                "B",
                per_pending[n],
                target="<= 1024",
                better="lower",
                note="RSS after restore minus RSS with an empty table, ÷ pending",
            )
        )
    return figures
