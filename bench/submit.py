"""Submit path: the connector versus a naive seed-style consumer, against the machine's ceilings.

The connector (``run --role submitter``, default settings except an unlimited API budget) and
the naive client each run as their own process against a sandbox process with no rate limit;
CPU is the submitting process's own, from /proc over the measured window (after warm-up).
Ratios use ``env.extras["ceilings"]`` from ``bench.ceilings`` when it ran in the same run.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

from bench.common import (
    BenchEnv,
    Figure,
    OffsetWatch,
    committed_total,
    connector_config,
    cpu_seconds,
    create_topics,
    produce_events,
    run_id,
    sandbox,
    spawn,
    start_connector,
    stop,
    topics_for,
)

PARTITIONS = 6

# The seed's client (``requests.post`` per call: a new connection each time), one event at a
# time, a commit per message — what the integrations page shows, wired to a consumer.
NAIVE = r"""
import asyncio, sys, orjson, requests
from aiokafka import AIOKafkaConsumer
bootstrap, topic, group, url, n, keep_alive = sys.argv[1:7]
class HITLClient:
    def __init__(self, api_key, base_url):
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.http = requests.Session() if keep_alive == "1" else requests
    def create_request(self, loop_id, data, key):
        response = self.http.post(f"{self.base_url}/loops/{loop_id}/requests",
                                  headers={**self.headers, "Idempotency-Key": key}, json=data)
        response.raise_for_status()
        return response.json()
async def main():
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
        enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    client = HITLClient("bench-key", f"{url}/v1/api")
    done = 0
    while done < int(n):
        msg = await consumer.getone()
        event = orjson.loads(msg.value)
        body = {"processing_type": "time-sensitive", "type": "markdown", "priority": "medium",
                "request_text": event["content"], "response_type": "single_select",
                "response_config": {"options": [{"value": "approved", "label": "Approve"},
                                                {"value": "rejected", "label": "Reject"}]},
                "default_response": "rejected", "platform": "api", "timeout_seconds": 3600}
        client.create_request("bench-loop", body, event["id"])
        await consumer.commit()
        done += 1
    await consumer.stop()
asyncio.run(main())
"""


async def _wait_joined(env: BenchEnv, run: str, proc: Any) -> None:
    topic = topics_for(run)["input"]
    for _ in range(240):
        await asyncio.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"connector exited: see {env.tmp / run}.log")
        try:
            await committed_total(env.bootstrap, f"g-{run}", topic, PARTITIONS)
            return
        except Exception:
            continue
    raise RuntimeError("connector did not join its group in 120 s")


async def connector_run(
    env: BenchEnv, url: str, n: int, sandbox_pid: int | None = None
) -> dict[str, float]:
    run = run_id("submit")
    topics = topics_for(run)
    await create_topics(env.bootstrap, [topics["input"]], PARTITIONS)
    config = connector_config(env, run, url)
    proc = start_connector(env, config, "submitter")
    try:
        await _wait_joined(env, run, proc)
        async with OffsetWatch(env.bootstrap, f"g-{run}", topics["input"], PARTITIONS) as watch:
            warm = min(1000, n // 10)
            await produce_events(env.bootstrap, topics["input"], run, warm)
            await watch.wait_for(warm)
            # Events are in Kafka before the clock starts: the connector sees a backlog, and
            # the producer's CPU is not on the machine during the measured window.
            await produce_events(env.bootstrap, topics["input"], run, n, start=warm)
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            side0 = cpu_seconds(sandbox_pid) if sandbox_pid else 0.0
            await watch.wait_for(warm + n)
            elapsed, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
            side = cpu_seconds(sandbox_pid) - side0 if sandbox_pid else 0.0
    finally:
        stop(proc)
    return {"rate": n / elapsed, "cpu_us": cpu / n * 1e6, "sandbox_us": side / n * 1e6}


async def naive_run(env: BenchEnv, url: str, n: int, keep_alive: bool) -> dict[str, float]:
    run = run_id("naive")
    topic = topics_for(run)["input"]
    await create_topics(env.bootstrap, [topic], PARTITIONS)
    await produce_events(env.bootstrap, topic, run, n)
    args = [sys.executable, "-c", NAIVE, env.bootstrap, topic, f"g-{run}", url, str(n),
            "1" if keep_alive else "0"]  # fmt: skip
    t0 = time.monotonic()
    proc = spawn(args, env.tmp / f"{run}.log")
    cpu = 0.0
    while proc.poll() is None:  # keep the last reading: /proc goes away at exit
        try:
            cpu = cpu_seconds(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        await asyncio.sleep(0.02)
    if proc.returncode:
        raise RuntimeError(f"naive client failed: see {env.tmp / run}.log")
    return {"rate": n / (time.monotonic() - t0), "cpu_us": cpu / n * 1e6}


async def run(env: BenchEnv) -> list[Figure]:
    n, naive_n = env.scale(20_000, 5_000), env.scale(500, 200)
    runs: dict[str, list[dict[str, float]]] = {"connector": [], "naive": [], "kept": []}
    with sandbox(env.tmp) as (url, sandbox_proc):
        await connector_run(env, url, 2000)  # warm the sandbox and the broker
        for rep in range(env.repeats):
            # Interleaved, so drift on a shared machine does not land on one side.
            runs["connector"].append(await connector_run(env, url, n, sandbox_proc.pid))
            runs["naive"].append(await naive_run(env, url, naive_n, keep_alive=False))
            runs["kept"].append(await naive_run(env, url, naive_n, keep_alive=True))
            print(f"  [{rep}] " + ", ".join(f"{k}: {v[-1]['rate']:.0f}/s" for k, v in runs.items()))
    mine = runs["connector"]
    ratio = [c["rate"] / b["rate"] for c, b in zip(mine, runs["naive"], strict=True)]
    ratio_kept = [c["rate"] / b["rate"] for c, b in zip(mine, runs["kept"], strict=True)]
    figures = [
        Figure("submit", "connector events/s", "events/s", [r["rate"] for r in runs["connector"]]),
        Figure("submit", "connector CPU per event", "µs", [r["cpu_us"] for r in runs["connector"]],
               target="<= 300", better="lower"),
        Figure("submit", "sandbox CPU per create during the connector run", "µs",
               [r["sandbox_us"] for r in runs["connector"]], better="lower",
               note="the other process on the same 2 cores"),
        Figure("submit", "naive seed-style client (requests.post per event) events/s", "events/s",
               [r["rate"] for r in runs["naive"]]),
        Figure("submit", "naive client CPU per event", "µs", [r["cpu_us"] for r in runs["naive"]],
               better="lower"),
        Figure("submit", "connector ÷ naive events/s", "×", ratio, target=">= 30"),
        Figure("submit", "naive client with a keep-alive session events/s", "events/s",
               [r["rate"] for r in runs["kept"]], note="stricter baseline than the seed"),
        Figure("submit", "connector ÷ keep-alive naive events/s", "×", ratio_kept),
    ]  # fmt: skip
    ceilings = env.extras.get("ceilings")
    if ceilings:
        lower = min(ceilings["broker"], ceilings["sandbox"])
        which = "sandbox" if ceilings["sandbox"] <= ceilings["broker"] else "broker"
        figures.append(
            Figure("submit", f"connector ÷ lower ceiling ({which} alone)", "share",
                   [r["rate"] / lower for r in runs["connector"]], target=">= 0.5")
        )  # fmt: skip
    print(f"  naive median {statistics.median(r['rate'] for r in runs['naive']):.0f}/s")
    return figures
