"""Webhook path: one gateway process (uvicorn), load from other processes (issue 6).

(a) Max rate: ``wrk`` (closed loop, keep-alive connections) replays distinct, validly signed
``request.completed`` deliveries from a file (``bench.loadgen_webhooks bodies``). Figures:
webhooks/s answered 2xx, webhooks/s durably on ``hitl.callbacks`` (counted afterwards with a
read_committed consumer, by the measured run's request-id prefix), and the gateway process's
CPU µs per accepted webhook (from /proc over the measured window).

(b) Ack latency at 50 % and 90 % of that max: ``bench.loadgen_webhooks fixed`` sends open
loop at a fixed rate and measures from each request's scheduled send time.

``SERVERS`` lists the receivers compared in one run (interleaved), each its own process: the
connector's gateway (``run --role gateway`` at the shipped defaults) and the baseline, a
FastAPI + aiokafka receiver (``bench.fastapi_receiver``: uvicorn and aiokafka at their defaults,
signature checked, ``send_and_wait`` before the 200). The first one's figures carry the names
above, the others' their name and the ratios to the first (per repetition, same run).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import (
    BASELINE_PYTHON,
    ROOT,
    WEBHOOK_SECRET,
    BenchEnv,
    Figure,
    connector_config,
    cpu_seconds,
    create_topics,
    free_port,
    run_id,
    spawn,
    start_connector,
    stop,
)

SCENARIO = "webhook"
CONNECTIONS = 64

LUA = r"""
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  local nthreads = tonumber(args[2])
  reqs = {}
  local i = 0
  for line in io.lines(args[1]) do
    if i % nthreads == tid then
      local sig, body = line:match("^(%x+)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", "/webhooks/hitl", {
        ["Content-Type"] = "application/json",
        ["X-HITL-Signature-256"] = "sha256=" .. sig,
      }, body)
    end
    i = i + 1
  end
  idx = 0
end
function request()
  idx = idx % #reqs + 1
  return reqs[idx]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def ensure_wrk() -> str:
    """wrk from Debian, installed the same way as the other test tools."""
    subprocess.run(
        ["sh", str(ROOT / "scripts" / "ensure_debian_package.sh"), "wrk", "wrk"], check=True
    )
    return "wrk"


def write_bodies(path: Path, prefix: str, n: int) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen_webhooks",
            "bodies",
            "--out",
            str(path),
            "--n",
            str(n),
            "--prefix",
            prefix,
            "--secret",
            WEBHOOK_SECRET,
        ],
        check=True,
        cwd=ROOT,
    )


async def run_wrk(
    env: BenchEnv, url: str, bodies: Path, seconds: int, threads: int = 1
) -> dict[str, Any]:
    script = env.tmp / "webhooks.lua"
    script.write_text(LUA)
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        f"-t{threads}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        "--",
        str(bodies),
        str(threads),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    for line in out.decode().splitlines():
        if line.startswith("WRKJSON "):
            result: dict[str, Any] = orjson.loads(line[len("WRKJSON ") :])
            return result
    raise RuntimeError(f"wrk gave no summary:\n{out.decode()[-2000:]}")


async def run_fixed(url: str, prefix: str, rate: float, seconds: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.loadgen_webhooks",
        "fixed",
        "--url",
        url,
        "--rate",
        f"{rate:.1f}",
        "--seconds",
        str(seconds),
        "--connections",
        str(CONNECTIONS),
        "--prefix",
        prefix,
        "--secret",
        WEBHOOK_SECRET,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"fixed-rate sender failed ({proc.returncode})")
    result: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    return result


class TopicCounter:
    """Counts records on a topic since a mark, as a read_committed consumer sees them."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.consumer: AIOKafkaConsumer | None = None
        self.tps: list[TopicPartition] = []

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
            max_poll_records=10_000,
        )
        await self.consumer.start()
        parts = self.consumer.partitions_for_topic(self.topic)
        for _ in range(100):
            if parts:
                break
            await asyncio.sleep(0.1)
            await self.consumer._client.force_metadata_update()
            parts = self.consumer.partitions_for_topic(self.topic)
        self.tps = [TopicPartition(self.topic, p) for p in sorted(parts or ())]
        self.consumer.assign(self.tps)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def mark(self) -> dict[TopicPartition, int]:
        assert self.consumer is not None
        ends: dict[TopicPartition, int] = await self.consumer.end_offsets(self.tps)
        return ends

    async def count(self, since: dict[TopicPartition, int], prefix: bytes) -> tuple[int, int]:
        """(records with a key starting with ``prefix``, distinct such keys) after ``since``."""
        consumer = self.consumer
        assert consumer is not None
        ends = await consumer.end_offsets(self.tps)
        for tp in self.tps:
            consumer.seek(tp, since[tp])
        total = 0
        keys: set[bytes] = set()
        while [tp for tp in self.tps if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                for r in records:
                    if r.key is not None and r.key.startswith(prefix):
                        total += 1
                        keys.add(r.key)
        return total, len(keys)


async def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}")
            try:
                if (await client.get(url + "/readyz", timeout=1)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("gateway not ready")


BASELINE = "fastapi + aiokafka"
SERVERS = ("gateway", BASELINE)  # one process each; the first one's figures keep their names
BEFORE = "gateway before"  # with --before REV: that revision's gateway, same defaults


@dataclass
class Gateway:
    """One gateway process with one HTTP server, and what was measured on it."""

    server: str
    run: str
    url: str
    proc: subprocess.Popen[bytes]
    counter: TopicCounter
    accepted: list[float] = field(default_factory=list)
    durable: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    wrk_p99: list[float] = field(default_factory=list)
    lat: dict[float, dict[str, list[float]]] = field(default_factory=dict)


async def start_gateway(env: BenchEnv, server: str) -> Gateway:
    run = run_id("wh-fastapi" if server == BASELINE else "wh")
    port = free_port()
    if server == BASELINE:
        await create_topics(env.bootstrap, [f"cb-{run}"])
        args = [BASELINE_PYTHON, "-m", "bench.fastapi_receiver", env.bootstrap, f"cb-{run}",
                str(port), WEBHOOK_SECRET]  # fmt: skip
        proc = spawn(args, env.tmp / f"{run}.log")
    else:
        gateway = {"port": port, "signature": "required"}
        config = connector_config(env, run, "http://127.0.0.1:9", gateway=gateway)
        proc = start_connector(env, config, role="gateway", before=server == BEFORE)
    return Gateway(
        server, run, f"http://127.0.0.1:{port}", proc, TopicCounter(env.bootstrap, f"cb-{run}")
    )


async def max_rate(env: BenchEnv, gw: Gateway, rep: int, guess: float, seconds: int) -> None:
    prefix = f"{gw.run}-m{rep}"
    bodies = env.tmp / f"{prefix}.txt"
    write_bodies(bodies, prefix, int(guess * seconds * 1.5) + 1000)
    mark = await gw.counter.mark()
    cpu0 = cpu_seconds(gw.proc.pid)
    result = await run_wrk(env, gw.url, bodies, seconds)
    cpu1 = cpu_seconds(gw.proc.pid)
    await asyncio.sleep(1.0)  # in-flight produces at wrk's stop finish
    records, distinct = await gw.counter.count(mark, (prefix + "-").encode())
    duration = result["duration_us"] / 1e6
    ok = result["requests"] - result["non2xx"]
    gw.accepted.append(ok / duration)
    gw.durable.append(distinct / duration)
    gw.cpu_us.append((cpu1 - cpu0) * 1e6 / max(ok, 1))
    gw.wrk_p99.append(result["p99_us"] / 1000)
    print(
        f"  {gw.server} max-rate run {rep}: {result} → {ok / duration:,.0f}/s 2xx, "
        f"{records} records ({distinct} distinct) durable, "
        f"{gw.cpu_us[-1]:.0f} µs CPU/webhook",
        flush=True,
    )
    bodies.unlink()


async def run(env: BenchEnv) -> list[Figure]:
    ensure_wrk()
    seconds = env.scale(10, 5)
    warm_seconds = env.scale(4, 2)
    servers = SERVERS + ((BEFORE,) if "before" in env.extras else ())
    gateways = [await start_gateway(env, server) for server in servers]
    try:
        for gw in gateways:
            await wait_ready(gw.url, gw.proc)
            await gw.counter.start()
        warm = env.tmp / f"{gateways[0].run}-warm.txt"
        write_bodies(warm, f"{gateways[0].run}-warm", 30_000)
        guess = 0.0
        for rep in range(env.repeats):
            # Interleaved, first one then the other first, so that drift on a shared machine
            # (and the broker's work after a run) does not land on one server.
            for gw in gateways[:: 1 if rep % 2 == 0 else -1]:
                warm_result = await run_wrk(env, gw.url, warm, warm_seconds)
                guess = max(guess, warm_result["requests"] / (warm_result["duration_us"] / 1e6))
                await max_rate(env, gw, rep, guess, seconds)
        for rep in range(env.repeats):
            for gw in gateways[:: -1 if rep % 2 == 0 else 1]:
                # The default at 50 % and 90 % of its max; the others at 50 % of theirs.
                for share in (0.5, 0.9) if gw is gateways[0] else (0.5,):
                    rate = sorted(gw.accepted)[len(gw.accepted) // 2] * share
                    got = await run_fixed(gw.url, f"{gw.run}-f{share}-{rep}", rate, seconds)
                    lat = gw.lat.setdefault(share, {"p50": [], "p99": []})
                    lat["p50"].append(got["p50_ms"])
                    lat["p99"].append(got["p99_ms"])
                    print(
                        f"  {gw.server} fixed {share:.0%} of max ({rate:,.0f}/s) run {rep}: {got}",
                        flush=True,
                    )
    finally:
        for gw in gateways:
            await gw.counter.stop()
            stop(gw.proc)
    return figures(gateways, seconds, str(env.extras.get("before_rev", "")))


def figures(gateways: list[Gateway], seconds: int, before_rev: str = "") -> list[Figure]:
    default, others = gateways[0], gateways[1:]
    wrk = f"wrk -c{CONNECTIONS}, closed loop, {seconds} s"
    out = [
        Figure(
            SCENARIO, "max rate, acked 2xx", "webhooks/s", default.accepted, ">= 5000", note=wrk
        ),
        Figure(
            SCENARIO,
            "max rate, durable on hitl.callbacks",
            "webhooks/s",
            default.durable,
            ">= 5000",
            note="read_committed count of the measured run's request ids",
        ),
        Figure(SCENARIO, "gateway CPU per webhook", "µs", default.cpu_us, "<= 150", "lower"),
        Figure(
            SCENARIO, "ack p99 at max rate (closed loop)", "ms", default.wrk_p99, better="lower"
        ),
    ]
    for share, values in default.lat.items():
        pct = f"{share:.0%}"
        note = "open loop, from scheduled send time"
        out.append(
            Figure(SCENARIO, f"ack p50 at {pct} of max", "ms", values["p50"], None, "lower", note)
        )
        out.append(
            Figure(
                SCENARIO,
                f"ack p99 at {pct} of max",
                "ms",
                values["p99"],
                "<= 25" if share == 0.5 else None,
                "lower",
                note,
            )
        )
    for gw in others:
        if gw.server == BEFORE:
            gw.server = f"gateway before ({before_rev})"
        name = f"({gw.server})"
        ratio = [a / b for a, b in zip(default.accepted, gw.accepted, strict=True)]
        cpu_ratio = [a / b for a, b in zip(default.cpu_us, gw.cpu_us, strict=True)]
        out += [
            Figure(SCENARIO, f"max rate, acked 2xx {name}", "webhooks/s", gw.accepted, note=wrk),
            Figure(SCENARIO, f"gateway CPU per webhook {name}", "µs", gw.cpu_us, better="lower"),
            Figure(SCENARIO, f"ack p99 at max rate (closed loop) {name}", "ms", gw.wrk_p99,
                   better="lower"),
            Figure(SCENARIO, f"ack p99 at 50% of max {name}", "ms", gw.lat[0.5]["p99"],
                   better="lower", note="open loop, at 50 % of its own max"),
            Figure(SCENARIO, f"max rate {default.server} ÷ {gw.server}", "×", ratio,
                   target=">= 1.5" if gw.server == BASELINE else None,
                   note="acked 2xx; same repetition, interleaved"),
            Figure(SCENARIO, f"CPU per webhook {default.server} ÷ {gw.server}", "×", cpu_ratio,
                   better="lower"),
        ]  # fmt: skip
    return out
