"""The machine's ceilings for the submit path, measured in the same run as the connector.

- Broker alone: Kafka's own ``ProducerPerformance`` and ``ConsumerPerformance`` (the classes
  behind ``kafka-producer-perf-test``/``kafka-consumer-perf-test``, from the same jars as the
  broker) with records the size of a content event; produce also transactional (the Java
  client, a transaction every ``TXN_MS`` ms, ``acks=all``), the ceiling of any exactly-once
  path on this machine.
- Sandbox alone: ``wrk`` (C, keep-alive, 64 connections) on the create endpoint with a unique
  ``Idempotency-Key`` per request, as the connector sends them.

``env.extras["ceilings"]`` gets ``{"broker": ..., "sandbox": ...}`` events/s for ``bench.submit``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import orjson

from bench.common import API_KEY, LOOP, ROOT, BenchEnv, Figure, create_topics, run_id, sandbox
from connector.devkafka import find_java, resolve_distribution

RECORD_BYTES = 120  # a typical bench content event (see bench.common.event)
TXN_MS = 100  # transaction length of the transactional produce ceiling

WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = "wrk-" .. id .. "-" .. counter
  return wrk.format("POST", nil, nil, body)
end
setup = function(thread)
  thread:set("id", tostring(math.random(1, 1e9)))
  thread:set("body", BODY)
end
"""


def _java(main_class: str, *args: str) -> str:
    dist = resolve_distribution()
    cmd = [find_java(), "-Xmx512m", "-cp", dist.classpath]
    if dist.log4j_config is not None:
        cmd.append(f"-Dlog4j2.configurationFile={dist.log4j_config}")
    done = subprocess.run(
        [*cmd, main_class, *args], capture_output=True, text=True, timeout=600, check=True
    )
    return done.stdout


def producer_rate(bootstrap: str, topic: str, records: int, txn_ms: int = 0) -> float:
    """Records/s of ProducerPerformance; ``txn_ms`` > 0: transactional, one per ``txn_ms``."""
    txn = ["--transactional-id", f"{topic}-txn", "--transaction-duration-ms", str(txn_ms)]
    out = _java(
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic", topic, "--num-records", str(records), "--record-size", str(RECORD_BYTES),
        "--throughput", "-1", *(txn if txn_ms else []),
        "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all", "linger.ms=5",
    )  # fmt: skip
    last = [line for line in out.splitlines() if "records sent" in line][-1]
    match = re.search(r"([\d.]+) records/sec", last)
    if match is None:
        raise RuntimeError(f"unexpected ProducerPerformance output: {last}")
    return float(match.group(1))


def consumer_rate(bootstrap: str, topic: str, records: int) -> float:
    out = _java(
        "org.apache.kafka.tools.ConsumerPerformance",
        "--bootstrap-server", bootstrap, "--topic", topic, "--messages", str(records),
        "--timeout", "60000",
    )  # fmt: skip
    lines = [line for line in out.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if "nMsg.sec" in line)
    row = next(csv.DictReader(io.StringIO("\n".join(lines[start : start + 2]))))
    return float({k.strip(): v for k, v in row.items()}["nMsg.sec"])


def ensure_wrk() -> str:
    subprocess.run(["sh", str(ROOT / "scripts" / "ensure_debian_package.sh"), "wrk", "wrk"],
                   check=True)  # fmt: skip
    return "wrk"


def wrk_rate(url: str, tmp: Path, seconds: int) -> float:
    body = orjson.dumps(
        {
            "processing_type": "time-sensitive",
            "type": "markdown",
            "priority": "medium",
            "request_text": "benchmark post",
            "response_type": "single_select",
            "response_config": {"options": [{"value": "approved", "label": "Approve"}]},
            "default_response": "approved",
            "timeout_seconds": 3600,
            "platform": "api",
        }
    ).decode()
    script = tmp / "wrk-create.lua"
    script.write_text(WRK_SCRIPT.replace("BODY", "[[" + body + "]]"))
    out = subprocess.run(
        [ensure_wrk(), "-t2", "-c64", f"-d{seconds}s", "-s", str(script),
         "-H", f"Authorization: Bearer {API_KEY}", "-H", "Content-Type: application/json",
         f"{url}/v1/api/loops/{LOOP}/requests"],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if match is None:
        raise RuntimeError(f"unexpected wrk output: {out}")
    if non2xx is not None:
        print(f"  wrk: {non2xx.group(1)} non-2xx answers", file=sys.stderr)
    return float(match.group(1))


async def run(env: BenchEnv) -> list[Figure]:
    records = env.scale(500_000, 100_000)
    produced, consumed, created, transactional = [], [], [], []
    for _ in range(env.repeats):
        topic, txn_topic = run_id("ceiling"), run_id("ceiling-txn")
        await create_topics(env.bootstrap, [topic, txn_topic], partitions=6)
        produced.append(await asyncio.to_thread(producer_rate, env.bootstrap, topic, records))
        consumed.append(await asyncio.to_thread(consumer_rate, env.bootstrap, topic, records))
        transactional.append(
            await asyncio.to_thread(producer_rate, env.bootstrap, txn_topic, records, TXN_MS)
        )
    with sandbox(env.tmp) as (url, _):
        await asyncio.to_thread(wrk_rate, url, env.tmp, 2)  # warm-up
        for _ in range(env.repeats):
            created.append(await asyncio.to_thread(wrk_rate, url, env.tmp, env.scale(10, 4)))
    broker = [min(p, c) for p, c in zip(produced, consumed, strict=True)]
    env.extras["ceilings"] = {
        "broker": sorted(broker)[len(broker) // 2],
        "sandbox": sorted(created)[len(created) // 2],
    }
    return [
        Figure("ceilings", "broker alone: produce (ProducerPerformance)", "records/s", produced),
        Figure("ceilings", "broker alone: consume (ConsumerPerformance)", "records/s", consumed),
        Figure(
            "ceilings",
            "broker alone: transactional produce (ProducerPerformance)",
            "records/s",
            transactional,
            note=f"Java client, acks=all, a transaction every {TXN_MS} ms",
        ),
        Figure("ceilings", "sandbox alone: creates (wrk, 64 connections)", "requests/s", created),
    ]
