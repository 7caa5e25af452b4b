"""The local stack behind ``make run``: broker, sandbox, connector and a load generator.

Starts each piece as its own process (the broker through ``DevKafka``, the rest through the
``hitl-connector`` CLI), prints progress every few seconds, and on Ctrl-C/SIGTERM stops them
in reverse order and prints a summary. With ``--bootstrap`` it uses a running broker instead.
Owns process supervision only; every piece it starts is the real one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from connector.config import Settings
from connector.devkafka import DevKafka
from connector.kafka.admin import partition_ids

DEV_KEY = "hitl_dev_key"
DEV_LOOP = "local-loop"
DEV_WEBHOOK_SECRET = "dev-webhook-secret"  # noqa: S105 - the local sandbox's, not a real one
TOPICS = ("content.events", "content.decisions", "content.events.dlq")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "connector.cli", *args]


class _RecordCounter:
    """Counts committed records of a few topics with one long-lived reader (no group).

    End offsets would over-count transactional topics: commit markers take offsets too.
    """

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self._settings = Settings(kafka={"bootstrap_servers": bootstrap})
        self._topics = topics
        self._consumer: AIOKafkaConsumer | None = None
        self._counts = dict.fromkeys(topics, 0)

    async def read(self) -> dict[str, int]:
        if self._consumer is None:
            tps = [
                TopicPartition(t, p)
                for t in self._topics
                for p in await partition_ids(self._settings.kafka, t)
            ]
            if not tps:
                return dict(self._counts)
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=self._settings.kafka.bootstrap_servers,
                isolation_level="read_committed",
                enable_auto_commit=False,
            )
            await self._consumer.start()
            self._consumer.assign(tps)
            await self._consumer.seek_to_beginning(*tps)
        while True:
            batch = await self._consumer.getmany(timeout_ms=100, max_records=50_000)
            if not batch:
                return dict(self._counts)
            for tp, records in batch.items():
                self._counts[tp.topic] += len(records)

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


def _scrape(text: str) -> dict[str, Any]:
    """Decisions by decision, p95 end-to-end latency and budget left from /metrics text."""
    decisions: dict[str, float] = {}
    buckets: dict[float, float] = {}
    remaining: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hitl_connector_decisions_total":
                key = sample.labels.get("decision", "?")
                decisions[key] = decisions.get(key, 0) + sample.value
            elif sample.name == "hitl_connector_decision_latency_seconds_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0) + sample.value
            elif sample.name == "hitl_connector_hitl_rate_limit_remaining":
                remaining = sample.value
    p95: float | None = None
    total = buckets.get(float("inf"), 0)
    if total:
        p95 = next(le for le, n in sorted(buckets.items()) if n >= 0.95 * total)
    return {"decisions": decisions, "e2e_p95": p95, "remaining": remaining}


class DevStack:
    """Supervises the local stack's processes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.var = Path(args.data_dir)
        self.var.mkdir(parents=True, exist_ok=True)
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.broker: DevKafka | None = None
        self.started = time.monotonic()
        self._offsets: _RecordCounter | None = None
        self.first_decision: float | None = None

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        # Our own CLI with arguments we built; no shell, no outside input. The child keeps
        # its own descriptor of the log file.
        with (self.var / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)  # noqa: S603
        self.procs.append((name, proc))

    def _config(self, bootstrap: str) -> Path:
        cfg = {
            "kafka": {"bootstrap_servers": bootstrap, "instance_id": "local"},
            "hitl": {
                "base_url": f"http://127.0.0.1:{self.args.sandbox_port}/v1",
                "rate_limit_calls": self.args.rate_limit,
                "rate_limit_window_seconds": 60,
            },
            "loops": {"default": DEV_LOOP},
            "gateway": {
                "host": "127.0.0.1",
                "port": self.args.gateway_port,
                "public_url": f"http://127.0.0.1:{self.args.gateway_port}",
                "signature": "required",
            },
            "resolver": {"reconcile_interval_seconds": 10, "reconcile_max_wait_seconds": 60},
            "policy": {"enabled": True},
            "log": {"format": "json"},
        }
        path = self.var / "connector.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    async def start(self) -> str:
        bootstrap: str = self.args.bootstrap or ""
        if not bootstrap:
            self.broker = DevKafka(self.var / "kafka", port=self.args.kafka_port)
            print(f"starting Kafka (data in {self.var / 'kafka'}) …", flush=True)
            await self.broker.start()
            bootstrap = self.broker.bootstrap_servers
        print(f"Kafka at {bootstrap}", flush=True)
        self._spawn(
            "sandbox",
            _cli(
                "sandbox",
                "--port",
                str(self.args.sandbox_port),
                "--preset-loop",
                DEV_LOOP,
                "--rate-limit-calls",
                str(self.args.rate_limit),
                "--rate-limit-window-seconds",
                "60",
                "--auto-review",
                "--review-delay-min-ms",
                "1000",
                "--review-delay-max-ms",
                "8000",
                # As documented: callback_url deliveries come unsigned; the connector's
                # callback token in the URL is what authenticates them.
            ),
        )
        env = {
            **os.environ,
            "HITL_API_KEY": DEV_KEY,
            "HITL_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET,
            "HITL_CALLBACK_TOKEN_SECRET": "dev-callback-token-secret",
        }
        self._spawn("connector", _cli("run", "--config", str(self._config(bootstrap))), env)
        await asyncio.sleep(3)
        self._spawn(
            "loadgen",
            _cli(
                "loadgen",
                "--bootstrap",
                bootstrap,
                "--rate",
                str(self.args.rate),
                "--count",
                str(self.args.count),
                "--bad-share",
                "0.05",
            ),
        )
        return bootstrap

    async def _get(self, url: str) -> httpx.Response | None:
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return await http.get(url)
        except httpx.HTTPError:
            return None

    async def progress(self, bootstrap: str) -> str:
        if self._offsets is None:
            self._offsets = _RecordCounter(bootstrap, list(TOPICS))
        ends = await self._offsets.read()
        sandbox = await self._get(f"http://127.0.0.1:{self.args.sandbox_port}/sandbox/stats")
        stats: dict[str, Any] = sandbox.json() if sandbox is not None else {}
        scraped = await self._get(f"http://127.0.0.1:{self.args.gateway_port}/metrics")
        m = _scrape(scraped.text if scraped is not None else "")
        decided = ends["content.decisions"]
        if decided and self.first_decision is None:
            self.first_decision = time.monotonic() - self.started
            print(f"first decision after {self.first_decision:.1f}s", flush=True)
        by_decision = ", ".join(f"{k}={v:.0f}" for k, v in sorted(m["decisions"].items()))
        p95 = m["e2e_p95"]
        budget = m["remaining"]
        return (
            f"[{time.monotonic() - self.started:6.0f}s] events in={ends['content.events']} "
            f"requests={stats.get('creates', '?')} pending={stats.get('pending', '?')} "
            f"decisions out={decided} ({by_decision or '-'}) dlq={ends['content.events.dlq']} "
            f"p95 e2e≤{'-' if p95 is None else f'{p95:.0f}s'} "
            f"budget left={'-' if budget is None else f'{budget:.0f}'} "
            f"429s={stats.get('rate_limited', '?')}"
        )

    async def stop(self) -> None:
        if self._offsets is not None:
            await self._offsets.close()
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.broker is not None:
            await self.broker.stop()


async def run(args: argparse.Namespace) -> int:
    stack = DevStack(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        bootstrap = await stack.start()
        print("running; Ctrl-C stops everything. Logs in", stack.var, flush=True)
        line = ""
        while not stop.is_set():
            with contextlib.suppress(Exception):
                line = await stack.progress(bootstrap)
                print(line, flush=True)
            for name, proc in stack.procs:
                if name != "loadgen" and proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; see {stack.var}/{name}.log")
                    stop.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=args.interval)
        print("\nstopping …", flush=True)
        print("summary:", line)
        if stack.first_decision is not None:
            print(f"time to first decision: {stack.first_decision:.1f}s")
        return 0
    finally:
        await stack.stop()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help="use this Kafka instead of starting a local broker")
    p.add_argument("--kafka-port", type=int, default=9092)
    p.add_argument("--sandbox-port", type=int, default=8765)
    p.add_argument("--gateway-port", type=int, default=8080)
    p.add_argument("--rate", type=float, default=5.0, help="events per second from loadgen")
    p.add_argument("--count", type=int, default=1_000_000, help="events loadgen produces")
    p.add_argument("--rate-limit", type=int, default=6000, help="sandbox calls per minute")
    p.add_argument("--interval", type=float, default=3.0, help="seconds between progress lines")
    p.add_argument("--data-dir", default="var/devstack", help="logs and broker data")


def main() -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
