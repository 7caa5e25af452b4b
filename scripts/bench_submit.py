"""Submit-path benchmark: the connector versus a naive seed-style consumer, in one run.

Prints events/s and CPU µs per event of the submitting process for:
- the connector (``hitl-connector run --role submitter``) with the aiohttp-backed and the stock
  httpx transport;
- a naive baseline written like the seed's client: one event at a time, a synchronous POST,
  a commit per message.

Every process is separate (broker, sandbox, connector, producer), so CPU figures are the
submitting process's own (from /proc). Not a test: it asserts nothing and prints figures.

    .venv/bin/python scripts/bench_submit.py [--events 20000] [--naive-events 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from connector.devkafka import DevKafka

ROOT = Path(__file__).resolve().parent.parent
LOOP = "bench-loop"
KEY = "bench-key"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (and its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / TICKS


def start_sandbox(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "connector.sandbox", "--port", str(port), "--preset-loop", LOOP],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/sandbox/stats", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("sandbox did not start")


async def produce(bootstrap: str, topic: str, n: int, run: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks="all")
    await producer.start()
    try:
        futures = []
        for i in range(n):
            value = orjson.dumps(
                {"id": f"{run}-{i}", "content": f"benchmark post {i}", "priority": "normal"}
            )
            futures.append(await producer.send(topic, value, key=f"{run}-{i}".encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def committed_total(bootstrap: str, group: str, topic: str, parts: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(parts)]
        offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
        return sum(max(0, m.offset) for m in offsets.values())
    finally:
        await admin.close()


async def create_topic(bootstrap: str, topic: str, parts: int) -> None:
    from aiokafka.admin import NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, parts, 1)])
    finally:
        await admin.close()


def connector_config(
    bootstrap: str, sandbox: str, run: str, transport: str, tmp: Path, *, metrics: bool = True
) -> Path:
    cfg: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"g-{run}", "instance_id": run},
        "topics": {
            "input": f"in-{run}",
            "output": f"out-{run}",
            "dlq": f"dlq-{run}",
            "requests": f"req-{run}",
            "callbacks": f"cb-{run}",
            "unmatched": f"unm-{run}",
            "escalations": None,
        },
        "hitl": {
            "base_url": f"{sandbox}/v1",
            "transport": transport,
            "max_in_flight": 64,
            "rate_limit_calls": 10_000_000,
            "rate_limit_window_seconds": 1,
        },
        "loops": {"default": LOOP},
        "batch": {"max_records": 1000, "linger_ms": 20},
        "gateway": {"host": "127.0.0.1", "port": 0},
        "log": {"level": "WARNING", "format": "json"},
        "metrics": {"enabled": metrics},
    }
    path = tmp / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def run_connector(
    bootstrap: str, sandbox: str, n: int, transport: str, tmp: Path, *, metrics: bool = True
) -> dict[str, float]:
    run = f"{transport}-{uuid.uuid4().hex[:6]}"
    cfg = connector_config(bootstrap, sandbox, run, transport, tmp, metrics=metrics)
    env = {**os.environ, "HITL_API_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "connector.cli", "run", "--role", "submitter", "--config", str(cfg)],
        env=env,
        stderr=(tmp / f"{run}.log").open("wb"),
    )
    try:
        topic = f"in-{run}"
        while True:  # wait until the connector has created its topics and joined
            await asyncio.sleep(0.5)
            try:
                await committed_total(bootstrap, f"g-{run}", topic, 6)
                break
            except Exception:
                if proc.poll() is not None:
                    raise RuntimeError((tmp / f"{run}.log").read_text()[-2000:]) from None
        await asyncio.sleep(3)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        await produce(bootstrap, topic, n, run)
        while await committed_total(bootstrap, f"g-{run}", topic, 6) < n:
            await asyncio.sleep(0.1)
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return {"events_per_s": n / elapsed, "cpu_us_per_event": cpu / n * 1e6}


NAIVE = r"""
import asyncio, sys, httpx, orjson
from aiokafka import AIOKafkaConsumer
bootstrap, topic, group, url, n = sys.argv[1:6]
async def main():
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
        enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    http = httpx.Client(headers={"Authorization": "Bearer bench-key"})
    done = 0
    while done < int(n):
        msg = await consumer.getone()
        event = orjson.loads(msg.value)
        body = {"processing_type": "time-sensitive", "type": "markdown", "priority": "medium",
                "request_text": event["content"], "response_type": "single_select",
                "response_config": {"options": [{"value": "approved", "label": "Approve"},
                                                {"value": "rejected", "label": "Reject"}]},
                "default_response": "rejected", "platform": "api", "timeout_seconds": 3600}
        r = http.post(f"{url}/v1/api/loops/bench-loop/requests", json=body)
        r.raise_for_status()
        await consumer.commit()
        done += 1
    await consumer.stop()
asyncio.run(main())
"""


async def run_naive(bootstrap: str, sandbox: str, n: int) -> dict[str, float]:
    run = f"naive-{uuid.uuid4().hex[:6]}"
    topic = f"in-{run}"
    await create_topic(bootstrap, topic, 6)
    await produce(bootstrap, topic, n, run)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", NAIVE, bootstrap, topic, f"g-{run}", sandbox, str(n)]
    )
    # Sample CPU just before exit: poll until the process ends, keeping the last reading.
    cpu = 0.0
    while proc.poll() is None:
        try:
            cpu = cpu_seconds(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - t0
    return {"events_per_s": n / elapsed, "cpu_us_per_event": cpu / n * 1e6}


def median_row(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--naive-events", type=int, default=1_000)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one")
    args = parser.parse_args()
    broker = None
    tmp = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        broker = DevKafka(tmp / "kafka", port=0)
        await broker.start()
        bootstrap = broker.bootstrap_servers
    port = free_port()
    sandbox_proc = start_sandbox(port)
    sandbox = f"http://127.0.0.1:{port}"
    try:
        # Metrics on/off alternate, twice each, and the medians are compared, so that warm-up
        # and drift of a shared machine do not land on one side.
        on_runs: list[dict[str, float]] = []
        off_runs: list[dict[str, float]] = []
        for _ in range(2):
            on_runs.append(await run_connector(bootstrap, sandbox, args.events, "aiohttp", tmp))
            off_runs.append(
                await run_connector(bootstrap, sandbox, args.events, "aiohttp", tmp, metrics=False)
            )
        rows = {
            "connector (aiohttp transport)": median_row(on_runs),
            "connector (aiohttp, metrics off)": median_row(off_runs),
            "connector (stock httpx transport)": await run_connector(
                bootstrap, sandbox, args.events, "httpx", tmp
            ),
            "naive seed-style baseline": await run_naive(bootstrap, sandbox, args.naive_events),
        }
    finally:
        sandbox_proc.terminate()
        sandbox_proc.wait(timeout=10)
        if broker is not None:
            await broker.stop()
    naive = rows["naive seed-style baseline"]
    print(f"\n{'path':<36}{'events/s':>12}{'CPU µs/event':>16}{'× naive rate':>15}")
    for name, row in rows.items():
        ratio = row["events_per_s"] / naive["events_per_s"]
        print(
            f"{name:<36}{row['events_per_s']:>12.0f}{row['cpu_us_per_event']:>16.0f}{ratio:>15.1f}"
        )
    on = rows["connector (aiohttp transport)"]["cpu_us_per_event"]
    off = rows["connector (aiohttp, metrics off)"]["cpu_us_per_event"]
    print(f"\nmetrics share of connector CPU per event: {(on - off) / on:.1%} ({on - off:.0f} µs)")


if __name__ == "__main__":
    asyncio.run(main())
