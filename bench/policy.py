"""The policy path against Quix Streams, side by side in one run (issue 16).

Most events of a moderation pipeline never need a person: the policy decides them from
``ai_analysis`` with no HTTP call. This scenario pre-produces N such events once (6
partitions; half approved, half rejected by the rule) and then runs, after one uncounted
warm-up run of the connector and of Quix, alternately and each with a fresh consumer group and
output topic on that same input:

- ``connector``: ``hitl-connector run --role submitter`` at the **shipped defaults** (only
  Kafka, topics, the loop and the policy thresholds are configured);
- ``quix default``: ``bench.quix_policy_app``, an exactly-once Quix Streams app doing the same
  work (JSON in, the same rule, a decision record out) at Quix's default ``commit_interval``;
- ``quix 1 s``: the same app with ``commit_interval=1``.

How each figure is measured (this process polls every 20 ms):

- events/s: N ÷ (time every input offset is committed − time the first output record reached
  the broker, seen by a read_uncommitted consumer). The clock starts at the first output the
  process writes, so start-up (imports, group join) is excluded for both; waiting for the final
  commit is included. (Record timestamps cannot be used: Quix gives an output its input's.)
- processing rate: N ÷ (last − first output arrival): work done, commits aside.
- CPU µs per event: the process's user+system CPU (``/proc``) from the first output record to
  the final commit, ÷ N; the broker's likewise.
- latency p50/p99 at a fixed rate: a paced producer writes ``RATE`` events/s into a fresh topic
  for a few seconds while the process runs; each output's visibility to a read_committed
  consumer minus its input record's timestamp. The first second is warm-up and not counted.

Every run checks that the output holds exactly N decisions with N distinct event ids.
"""

from __future__ import annotations

import asyncio
import bisect
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from bench.common import (
    API_KEY,
    BASELINE_PYTHON,
    LOOP,
    BenchEnv,
    Figure,
    OffsetWatch,
    cpu_seconds,
    create_topics,
    percentile,
    reader,
    run_id,
    sandbox,
    spawn,
    stop,
    topics_for,
)
from bench.latency import paced

SCENARIO = "policy"
PARTITIONS = 6
RATE = 2_000
CONTENDERS = ("connector", "quix default", "quix 1 s")


def policy_value(event_id: str, i: int) -> bytes:
    """``policy_event`` for a given id (the paced producer's value builder)."""
    return policy_event(event_id.rsplit("-", 1)[0], i)


def policy_event(run: str, i: int) -> bytes:
    """A seed-shaped event the policy decides: even ids approved, odd ids rejected."""
    analysis = (
        {"confidence": 0.98, "flags": [], "risk_score": 0.02}
        if i % 2 == 0
        else {"confidence": 0.7, "flags": ["spam"], "risk_score": 0.95}
    )
    return orjson.dumps(
        {
            "id": f"{run}-{i}",
            "content": f"policy post {i}",
            "content_type": "text",
            "priority": "normal",
            "ai_analysis": analysis,
            "metadata": {"user_id": f"u-{i % 97}", "source": "content_api"},
        }
    )


async def pre_produce(bootstrap: str, topic: str, run: str, n: int) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, acks="all", max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, policy_event(run, i), key=f"{run}-{i}".encode())
            for i in range(n)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def connector_config(env: BenchEnv, run: str, source: str, sandbox_url: str) -> Path:
    """Shipped defaults except what any deployment must set (and the policy, on)."""
    topics = {**topics_for(run), "input": source}
    cfg: dict[str, Any] = {
        "kafka": {"bootstrap_servers": env.bootstrap, "group_id": f"g-{run}", "instance_id": run},
        "topics": topics,
        "hitl": {"base_url": f"{sandbox_url}/v1"},
        "loops": {"default": LOOP},
        "policy": {"enabled": True, "reject_flags": ["spam"]},
        "gateway": {"host": "127.0.0.1", "port": 0},
        "log": {"level": "WARNING", "format": "json"},
    }
    path = env.tmp / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(env: BenchEnv, kind: str, run: str, source: str, url: str) -> tuple[Any, str, str]:
    """Start one contender; returns (process, its consumer group, its output topic)."""
    output = topics_for(run)["output"]
    if kind == "connector":
        config = connector_config(env, run, source, url)
        proc = spawn(
            [sys.executable, "-m", "connector.cli", "run", "--role", "submitter",
             "--config", str(config)],
            config.with_suffix(".log"),
            env={"HITL_API_KEY": API_KEY},
        )  # fmt: skip
        return proc, f"g-{run}", output
    args = [BASELINE_PYTHON, "-m", "bench.quix_policy_app", env.bootstrap, source, output, run]
    if kind == "quix 1 s":
        args.append("1.0")
    proc = spawn(args, env.tmp / f"{run}.log", env={"QUIX_STATE_DIR": str(env.tmp / run)})
    return proc, run, output


@dataclass
class Samples:
    """(wall time, process CPU s, broker CPU s) every poll, to read CPU at any instant."""

    times: list[float]
    cpu: list[float]
    broker: list[float]

    def at(self, t: float) -> tuple[float, float]:
        i = min(max(bisect.bisect_left(self.times, t), 0), len(self.times) - 1)
        return self.cpu[i], self.broker[i]


async def read_output(bootstrap: str, topic: str, expect: int, timeout: float = 60) -> list[Any]:
    """Every committed record of ``topic`` (waits for ``expect`` of them, or the timeout)."""
    consumer = reader(bootstrap, topic)
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expect and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


class Arrivals:
    """When records reach ``topic`` (read_uncommitted: written, not yet committed), by wall
    clock. Quix gives an output the input's timestamp, so record timestamps cannot be used."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.first = self.last = float("nan")
        self.count = 0
        self._consumer = reader(bootstrap, topic, committed=False, tail=True)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100, max_records=10_000)
            got = sum(len(b) for b in batches.values())
            if got:
                now = time.time()
                if not self.count:
                    self.first = now
                self.last = now
                self.count += got

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()


async def throughput_run(
    env: BenchEnv, kind: str, source: str, n: int, url: str
) -> dict[str, float]:
    run = run_id("pol")
    await create_topics(env.bootstrap, [topics_for(run)["output"]], PARTITIONS)
    broker_pid = env.extras["broker"].pid if "broker" in env.extras else None
    arrivals = Arrivals(env.bootstrap, topics_for(run)["output"])
    await arrivals.start()
    proc, group, output = launch(env, kind, run, source, url)
    samples = Samples([], [], [])
    try:
        async with OffsetWatch(env.bootstrap, group, source, PARTITIONS) as watch:
            deadline = time.monotonic() + 600
            while True:
                try:
                    committed = await watch.committed()
                except KafkaError:  # a fresh broker creates __consumer_offsets on first use
                    committed = 0
                samples.times.append(time.time())
                samples.cpu.append(cpu_seconds(proc.pid))
                samples.broker.append(cpu_seconds(broker_pid) if broker_pid else float("nan"))
                if committed >= n:
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"{kind} exited with {proc.returncode} (log in {env.tmp})")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind}: {committed} of {n} committed after 600 s")
                await asyncio.sleep(0.02)
    finally:
        stop(proc)
        await arrivals.stop()
    done = samples.times[-1]
    records = await read_output(env.bootstrap, output, n)
    ids = {orjson.loads(r.value)["event_id"] for r in records}
    if len(records) != n or len(ids) != n:
        raise RuntimeError(f"{kind}: {len(records)} outputs, {len(ids)} distinct, for {n} events")
    first, last = arrivals.first, arrivals.last
    cpu0, broker0 = samples.at(first)
    return {
        "rate": n / (done - first),
        "processing": n / max(last - first, 1e-3),
        "cpu_us": (samples.cpu[-1] - cpu0) / n * 1e6,
        "broker_us": (samples.broker[-1] - broker0) / n * 1e6,
    }


async def latency_run(env: BenchEnv, kind: str, seconds: float, url: str) -> dict[str, float]:
    run = run_id("lat")
    source = f"in-{run}"
    await create_topics(env.bootstrap, [source, topics_for(run)["output"]], PARTITIONS)
    proc, _group, output = launch(env, kind, run, source, url)
    visible: dict[str, float] = {}
    tail = reader(env.bootstrap, output, tail=True)
    await tail.start()

    async def follow() -> None:
        while True:
            batches = await tail.getmany(timeout_ms=100)
            now = time.time()
            for batch in batches.values():
                for r in batch:
                    visible.setdefault(orjson.loads(r.value)["event_id"], now)

    follower = asyncio.create_task(follow())
    try:
        await asyncio.sleep(3)  # the process starts and joins its group
        stamps = await paced(env.bootstrap, source, run, RATE, seconds, value_for=policy_value)
        deadline = time.monotonic() + 30
        while len(visible) < len(stamps) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await tail.stop()
        stop(proc)
    warm = min(stamps.values()) + 1.0
    lat = [(visible[e] - t) * 1000 for e, t in stamps.items() if t >= warm and e in visible]
    missing = sum(1 for e in stamps if e not in visible)
    if missing:
        raise RuntimeError(f"{kind}: {missing} of {len(stamps)} paced events never came out")
    return {"p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99)}


async def run(env: BenchEnv) -> list[Figure]:
    n = env.scale(100_000, 10_000)
    seconds = env.scale(10, 4)
    source_run = run_id("polin")
    source = f"in-{source_run}"
    await create_topics(env.bootstrap, [source], PARTITIONS)
    await pre_produce(env.bootstrap, source, source_run, n)
    got: dict[str, list[dict[str, float]]] = {k: [] for k in CONTENDERS}
    lat: dict[str, list[dict[str, float]]] = {k: [] for k in CONTENDERS}
    with sandbox(env.tmp) as (url, _proc):
        # Not counted: whoever ran first on the freshly produced topic ran slower (broker
        # warm-up), so one connector run and one Quix run go first.
        await throughput_run(env, "connector", source, n, url)
        await throughput_run(env, "quix 1 s", source, n, url)
        for rep in range(env.repeats):
            order = CONTENDERS if rep % 2 == 0 else tuple(reversed(CONTENDERS))
            for kind in order:  # alternating, so drift on a shared machine spreads over all
                got[kind].append(await throughput_run(env, kind, source, n, url))
            print(f"  [{rep}] " + ", ".join(f"{k}: {v[-1]['rate']:,.0f}/s" for k, v in got.items()))
        for rep in range(max(1, env.repeats // 2 + 1) if not env.quick else 1):
            for kind in CONTENDERS:
                lat[kind].append(await latency_run(env, kind, seconds, url))
            print(
                f"  [lat {rep}] "
                + ", ".join(f"{k}: p99 {v[-1]['p99']:.0f} ms" for k, v in lat.items())
            )
    return figures(got, lat, n)


def _ratio(a: list[dict[str, float]], b: list[dict[str, float]], key: str) -> list[float]:
    return [x[key] / y[key] for x, y in zip(a, b, strict=True)]


def figures(
    got: dict[str, list[dict[str, float]]], lat: dict[str, list[dict[str, float]]], n: int
) -> list[Figure]:
    c, qd, q1 = got["connector"], got["quix default"], got["quix 1 s"]
    out: list[Figure] = []
    for kind, runs in got.items():
        out += [
            Figure(SCENARIO, f"{kind} events/s (first output → all offsets committed)",
                   "events/s", [r["rate"] for r in runs], note=f"{n:,} pre-produced events"),
            Figure(SCENARIO, f"{kind} processing rate (first → last output)", "events/s",
                   [r["processing"] for r in runs]),
            Figure(SCENARIO, f"{kind} CPU per event", "µs", [r["cpu_us"] for r in runs],
                   better="lower"),
            Figure(SCENARIO, f"broker CPU per event during {kind}", "µs",
                   [r["broker_us"] for r in runs], better="lower"),
        ]  # fmt: skip
    out += [
        Figure(SCENARIO, "connector ÷ quix (default commit interval) events/s", "×",
               _ratio(c, qd, "rate"), target=">= 1.5", note="per-pair ratios"),
        Figure(SCENARIO, "connector ÷ quix (1 s commit interval) events/s", "×",
               _ratio(c, q1, "rate"), target=">= 1.5"),
        Figure(SCENARIO, "connector ÷ quix (1 s) processing rate", "×",
               _ratio(c, q1, "processing")),
        Figure(SCENARIO, "connector ÷ quix (default) CPU per event", "×",
               _ratio(c, qd, "cpu_us"), target="<= 0.8", better="lower"),
        Figure(SCENARIO, "connector ÷ quix (1 s) CPU per event", "×",
               _ratio(c, q1, "cpu_us"), target="<= 0.8", better="lower"),
    ]  # fmt: skip
    for kind, runs in lat.items():
        out += [
            Figure(SCENARIO, f"{kind} latency p50 at {RATE:,}/s", "ms", [r["p50"] for r in runs],
                   better="lower", note="input timestamp → visible to read_committed"),
            Figure(SCENARIO, f"{kind} latency p99 at {RATE:,}/s", "ms", [r["p99"] for r in runs],
                   better="lower"),
        ]  # fmt: skip
    out.append(
        Figure(SCENARIO, "connector ÷ quix (1 s) latency p99", "×",
               _ratio(lat["connector"], lat["quix 1 s"], "p99"), target="<= 1", better="lower")
    )  # fmt: skip
    return out
