"""Create path: the connector against a Quix Streams app and naive clients, all at their defaults.

Every contender runs as its own process against a sandbox process with no rate limit, on
its own topic of N events **produced before the process starts** (6 partitions), with a
fresh consumer group:

- ``connector``: ``run --role submitter`` at the **shipped defaults** (``bench.common.
  connector_config``: only where things are, and an unlimited API budget like the sandbox's);
- ``connector tuned``: the same with ``batch.max_records=1000``, ``batch.linger_ms=20``,
  ``hitl.max_in_flight=64`` (what this bench ran before issue 16), printed beside it, labelled;
- ``quix + requests``: ``bench.quix_submit_app``, an exactly-once Quix Streams app creating
  each request with a keep-alive ``requests`` session (the create path's baseline);
- ``naive``: the seed's client (``requests.post`` per event, a new connection each time, a
  commit per message) on an aiokafka consumer, and ``naive keep-alive`` with a ``Session``.

How each figure is measured (this process polls every 20 ms):

- events/s: N ÷ (all N input offsets committed − the first create the sandbox received, by
  its arrival time in ``GET /sandbox/calls``). The clock starts at the contender's first
  output, because process start-up and the group join are the same for any consumer and not
  the steady state; the events are all in Kafka before the process starts, so every event
  is handled inside the measured window, none before it. The final commit is included.
- CPU µs per event: the process's user+system CPU (``/proc``) over the same window, ÷ N;
  the sandbox's likewise (the other process on the same cores).

Ratios pair the repetitions (interleaved, so drift on a shared machine spreads over all).
Ratios to the machine's ceilings use ``env.extras["ceilings"]`` when ``bench.ceilings`` ran.
"""

from __future__ import annotations

import asyncio
import bisect
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka.errors import KafkaError

from bench.common import (
    API_KEY,
    BASELINE_PYTHON,
    LOOP,
    BenchEnv,
    Figure,
    OffsetWatch,
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

SCENARIO = "submit"
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


TUNED = {
    "batch": {"max_records": 1000, "linger_ms": 20},
    "hitl": {"max_in_flight": 64},
}
TUNED_LABEL = "batch.max_records=1000, batch.linger_ms=20, hitl.max_in_flight=64"
CONTENDERS = ("connector", "connector tuned", "quix + requests", "naive", "naive keep-alive")
BEFORE = "connector before"  # with --before REV: that revision's connector, same defaults


async def first_create(url: str, since: float) -> float:
    """The arrival time (sandbox clock, epoch s) of the first create after ``since``."""
    async with httpx.AsyncClient() as http:
        while True:
            calls = (await http.get(url + "/sandbox/calls", params={"since": since})).json()
            creates = [
                c["ts"]
                for c in calls["calls"]
                if c["method"] == "POST" and c["endpoint"].endswith("/requests")
            ]
            if creates:
                return float(min(creates))
            await asyncio.sleep(0.02)


@dataclass
class Samples:
    """(wall time, contender CPU s, sandbox CPU s) every poll, to read CPU at any instant."""

    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    side: list[float] = field(default_factory=list)

    def at(self, t: float) -> tuple[float, float]:
        i = min(max(bisect.bisect_left(self.times, t), 0), len(self.times) - 1)
        return self.cpu[i], self.side[i]


def last_cpu(pid: int, seen: list[float]) -> float:
    """``cpu_seconds(pid)``, or the last reading once the process is gone."""
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError):
        return seen[-1] if seen else 0.0


def launch(env: BenchEnv, kind: str, run: str, source: str, url: str, n: int) -> tuple[Any, str]:
    """Start one contender on ``source`` (``n`` events); (process, its consumer group)."""
    if kind.startswith("connector"):
        topics = {**topics_for(run), "input": source}
        sections: dict[str, Any] = {"topics": topics}
        if kind == "connector tuned":
            sections["batch"] = TUNED["batch"]
            sections["hitl"] = TUNED["hitl"]
        config = connector_config(env, run, url, **sections)
        before = kind == BEFORE
        return start_connector(env, config, "submitter", before=before), f"g-{run}"
    if kind == "quix + requests":
        args = [BASELINE_PYTHON, "-m", "bench.quix_submit_app", env.bootstrap, source,
                f"out-{run}", run, url, API_KEY, LOOP]  # fmt: skip
        return spawn(args, env.tmp / f"{run}.log", env={"QUIX_STATE_DIR": str(env.tmp / run)}), run
    keep_alive = "1" if kind == "naive keep-alive" else "0"
    args = [BASELINE_PYTHON, "-c", NAIVE, env.bootstrap, source, f"g-{run}", url, str(n),
            keep_alive]  # fmt: skip
    return spawn(args, env.tmp / f"{run}.log"), f"g-{run}"


async def one_run(
    env: BenchEnv, kind: str, url: str, n: int, sandbox_pid: int | None = None
) -> dict[str, float]:
    """Pre-produce ``n`` events, start ``kind`` on them, time first create → all committed."""
    run = run_id("submit")
    source = f"in-{run}"
    await create_topics(env.bootstrap, [source, f"out-{run}"], PARTITIONS)
    await produce_events(env.bootstrap, source, run, n)
    launched = time.time()
    proc, group = launch(env, kind, run, source, url, n)
    first = asyncio.create_task(first_create(url, launched))
    samples = Samples()
    committed_after_exit = False
    try:
        async with OffsetWatch(env.bootstrap, group, source, PARTITIONS) as watch:
            deadline = time.monotonic() + 900
            while True:
                try:
                    committed = await watch.committed()
                except KafkaError:  # the group's first offsets are not there yet
                    committed = 0
                exited = proc.poll() is not None  # the naive clients exit after n events
                samples.times.append(time.time())
                samples.cpu.append(last_cpu(proc.pid, samples.cpu))
                samples.side.append(cpu_seconds(sandbox_pid) if sandbox_pid else 0.0)
                if committed >= n:
                    break
                if exited and (proc.returncode or committed_after_exit):
                    raise RuntimeError(f"{kind} exited with {proc.returncode} (log in {env.tmp})")
                committed_after_exit = exited
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind}: {committed} of {n} committed after 900 s")
                await asyncio.sleep(0.02)
        t0 = await asyncio.wait_for(first, 10)
    finally:
        first.cancel()
        stop(proc)
    done = samples.times[-1]
    cpu0, side0 = samples.at(t0)
    return {
        "rate": n / (done - t0),
        "cpu_us": (samples.cpu[-1] - cpu0) / n * 1e6,
        "sandbox_us": (samples.side[-1] - side0) / n * 1e6,
        "startup": t0 - launched,
    }


def _ratio(a: list[dict[str, float]], b: list[dict[str, float]]) -> list[float]:
    return [x["rate"] / y["rate"] for x, y in zip(a, b, strict=True)]


async def run(env: BenchEnv) -> list[Figure]:
    sizes = {
        "connector": env.scale(20_000, 5_000),
        "connector tuned": env.scale(20_000, 5_000),
        # Quix commits every 5 s by default: N large enough that the final commit's wait
        # (included, as for every contender) is not most of the window.
        "quix + requests": env.scale(5_000, 1_000),
        "naive": env.scale(500, 200),
        "naive keep-alive": env.scale(500, 200),
    }
    contenders = CONTENDERS + ((BEFORE,) if "before" in env.extras else ())
    sizes[BEFORE] = sizes["connector"]
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in contenders}
    with sandbox(env.tmp) as (url, sandbox_proc):
        await one_run(env, "connector", url, 2000)  # warm the sandbox and the broker
        for rep in range(env.repeats):
            order = contenders if rep % 2 == 0 else tuple(reversed(contenders))
            for kind in order:
                runs[kind].append(await one_run(env, kind, url, sizes[kind], sandbox_proc.pid))
            rates = ", ".join(f"{k}: {v[-1]['rate']:,.0f}/s" for k, v in runs.items())
            print(f"  [{rep}] {rates}", flush=True)
    out = figures(runs, sizes, env.extras.get("ceilings"))
    if runs.get(BEFORE):
        out += before_after(runs, str(env.extras.get("before_rev")))
    return out


def before_after(runs: dict[str, list[dict[str, float]]], rev: str) -> list[Figure]:
    """The connector against ``--before REV``'s, both at their shipped defaults."""
    mine, old = runs["connector"], runs[BEFORE]
    cpu = [a["cpu_us"] / b["cpu_us"] for a, b in zip(mine, old, strict=True)]
    return [
        Figure(SCENARIO, f"connector before ({rev}) events/s", "events/s",
               [r["rate"] for r in old], note="that revision's code, its shipped defaults"),
        Figure(SCENARIO, f"connector before ({rev}) CPU per event", "µs",
               [r["cpu_us"] for r in old], better="lower"),
        Figure(SCENARIO, f"connector ÷ before ({rev}) events/s", "×", _ratio(mine, old),
               note="same run, interleaved; per-pair ratios"),
        Figure(SCENARIO, f"connector ÷ before ({rev}) CPU per event", "×", cpu, better="lower"),
    ]  # fmt: skip


def figures(
    runs: dict[str, list[dict[str, float]]], sizes: dict[str, int], ceilings: Any
) -> list[Figure]:
    how = "pre-produced; first create at the sandbox → all offsets committed"
    mine, tuned = runs["connector"], runs["connector tuned"]
    out = [
        Figure(SCENARIO, "connector events/s (shipped defaults)", "events/s",
               [r["rate"] for r in mine], note=f"{sizes['connector']:,} events {how}"),
        Figure(SCENARIO, "connector CPU per event", "µs", [r["cpu_us"] for r in mine],
               target="<= 300", better="lower", note="process CPU over the same window"),
        Figure(SCENARIO, "sandbox CPU per create during the connector run", "µs",
               [r["sandbox_us"] for r in mine], better="lower",
               note="the other process on the same 2 cores"),
        Figure(SCENARIO, "connector start-up to first create", "s", [r["startup"] for r in mine],
               better="lower", note="process launch → first create; outside the clock"),
        Figure(SCENARIO, "connector tuned events/s", "events/s", [r["rate"] for r in tuned],
               note=f"tuned, not the defaults: {TUNED_LABEL}"),
        Figure(SCENARIO, "connector tuned CPU per event", "µs", [r["cpu_us"] for r in tuned],
               better="lower"),
    ]  # fmt: skip
    for kind, what in (
        ("quix + requests", "Quix Streams exactly-once + requests.Session, one call at a time"),
        ("naive", "seed-style: aiokafka + requests.post per event, commit per message"),
        ("naive keep-alive", "the seed's client with a requests.Session"),
    ):
        out += [
            Figure(SCENARIO, f"{kind} events/s", "events/s", [r["rate"] for r in runs[kind]],
                   note=f"{sizes[kind]:,} events {how}; {what}"),
            Figure(SCENARIO, f"{kind} CPU per event", "µs", [r["cpu_us"] for r in runs[kind]],
                   better="lower"),
        ]  # fmt: skip
    out += [
        Figure(SCENARIO, "connector ÷ quix + requests events/s", "×",
               _ratio(mine, runs["quix + requests"]), target=">= 5",
               note="shipped defaults; per-pair ratios"),
        Figure(SCENARIO, "connector ÷ naive events/s", "×", _ratio(mine, runs["naive"]),
               target=">= 30"),
        Figure(SCENARIO, "connector ÷ naive keep-alive events/s", "×",
               _ratio(mine, runs["naive keep-alive"])),
    ]  # fmt: skip
    if ceilings:
        lower = min(ceilings["broker"], ceilings["sandbox"])
        which = "sandbox" if ceilings["sandbox"] <= ceilings["broker"] else "broker"
        out.append(
            Figure(SCENARIO, f"connector ÷ lower ceiling ({which} alone)", "share",
                   [r["rate"] / lower for r in mine], target=">= 0.5")
        )  # fmt: skip
    print(f"  naive median {statistics.median(r['rate'] for r in runs['naive']):.0f}/s")
    return out
