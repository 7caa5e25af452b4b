"""Soak run: the local stack under steady load with webhook faults, checked for flatness.

Starts, each as its own process: a broker (``connector.devkafka.DevKafka``), the sandbox with
the auto-reviewer and webhook faults (duplicates, drops, reordering, delays, and retries
forced by a short delivery timeout), the connector with every role (``hitl-connector run``)
and the load generator at a steady rate (``hitl-connector loadgen``). Every ``--interval``
seconds it prints one line about the connector process: RSS (``/proc/<pid>/status`` VmRSS),
open files (``/proc/<pid>/fd``), asyncio tasks (``hitl_connector_asyncio_tasks``), consumer
lag per role (``hitl_connector_consumer_lag``), events in, decisions out, DLQ records.

At the end the load stops, the stack drains, and it prints a flatness verdict (second-half
RSS growth, open files and tasks not growing, lag bounded) and the ledger of
``tests/integration/ledger.py``. Exit status 0 only when everything is flat, no process died
and nothing was lost, undecided or decided twice.

    .venv/bin/python scripts/soak.py [--minutes 30] [--rate 5] [--interval 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the ledger lives in tests/

from connector.config import Settings  # noqa: E402
from connector.devkafka import DevKafka  # noqa: E402
from connector.kafka.admin import partition_ids  # noqa: E402
from tests.integration.ledger import Ledger, ledger  # noqa: E402

API_KEY = "hitl_soak_key"
LOOP = "soak-loop"
WEBHOOK_SECRET = "soak-webhook-secret"
TOKEN_SECRET = "soak-callback-token-secret"

# Flatness bounds (see docs/soak.md).
MAX_RSS_GROWTH = 0.10  # second half of the run
FD_SLACK = 10  # open files: second-half max may exceed first-half max by this many
TASK_FACTOR, TASK_SLACK = 1.25, 10  # tasks: second-half max <= first-half max * f + slack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "connector.cli", *args]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sample:
    t: float
    rss: int
    fds: int
    tasks: float | None
    lag: dict[str, float]
    events_in: int
    consumed: float
    decisions: float
    dlq: float
    pending: float | None

    def line(self) -> str:
        tasks = "-" if self.tasks is None else f"{self.tasks:.0f}"
        lag = " ".join(f"lag_{role}={v:.0f}" for role, v in sorted(self.lag.items())) or "lag=-"
        pending = "-" if self.pending is None else f"{self.pending:.0f}"
        return (
            f"[{self.t / 60:5.1f} min] rss={self.rss / 2**20:.1f}MiB fds={self.fds} "
            f"tasks={tasks} {lag} events_in={self.events_in} consumed={self.consumed:.0f} "
            f"decisions_out={self.decisions:.0f} dlq={self.dlq:.0f} pending={pending}"
        )


def scrape(text: str) -> dict[str, Any]:
    """The figures a sample needs from the connector's /metrics text."""
    out: dict[str, Any] = {
        "tasks": None,
        "lag": {},
        "consumed": 0.0,
        "decisions": 0.0,
        "dlq": 0.0,
        "pending": None,
        "webhooks": {},
        "via": {},
    }
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "hitl_connector_asyncio_tasks":
                out["tasks"] = s.value
            elif s.name == "hitl_connector_consumer_lag":
                role = s.labels.get("role", "?")
                out["lag"][role] = out["lag"].get(role, 0.0) + s.value
            elif s.name == "hitl_connector_events_consumed_total":
                out["consumed"] += s.value
            elif s.name == "hitl_connector_decisions_total":
                out["decisions"] += s.value
                via = s.labels.get("via", "?")
                out["via"][via] = out["via"].get(via, 0.0) + s.value
            elif s.name == "hitl_connector_events_total" and s.labels.get("outcome") == "dlq":
                out["dlq"] += s.value
            elif s.name == "hitl_connector_pending_requests":
                out["pending"] = s.value
            elif s.name == "hitl_connector_webhooks_received_total":
                outcome = s.labels.get("outcome", "?")
                out["webhooks"][outcome] = out["webhooks"].get(outcome, 0.0) + s.value
    return out


@dataclass
class Soak:
    args: argparse.Namespace
    var: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    broker: DevKafka | None = None
    sandbox_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    _input: AIOKafkaConsumer | None = None
    _tps: list[TopicPartition] = field(default_factory=list)

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        with (self.var / f"{name}.log").open("ab") as log:  # the child keeps its descriptor
            self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def config(self, bootstrap: str) -> dict[str, Any]:
        return {
            "kafka": {"bootstrap_servers": bootstrap, "instance_id": "soak"},
            "hitl": {
                "base_url": f"{self.sandbox_url}/v1",
                "rate_limit_calls": 1_000_000,
                "rate_limit_window_seconds": 60,
            },
            "loops": {"default": LOOP},
            "gateway": {
                "host": "127.0.0.1",
                "port": self.gateway_port,
                "public_url": self.gateway_url,
                "signature": "required",
            },
            # Dropped webhooks are recovered by polling: requests pending longer than
            # reconcile_max_wait_seconds are polled every reconcile_interval_seconds.
            "resolver": {
                "reconcile_interval_seconds": 5,
                "reconcile_max_wait_seconds": 20,
                "reconcile_repoll_seconds": 30,
            },
            "policy": {"enabled": True},
            "log": {"format": "json"},
        }

    async def wait_http(self, url: str, name: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                self.check_alive()
                try:
                    if (await http.get(url)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready at {url} after {timeout:.0f}s")
                await asyncio.sleep(0.5)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if name != "loadgen" and proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}; see {self.var / (name + '.log')}"
                )

    async def start(self) -> tuple[str, Settings]:
        a = self.args
        self.broker = DevKafka(self.var / "kafka", port=0)
        print(f"soak: logs and data in {self.var}", flush=True)
        await self.broker.start()
        bootstrap = self.broker.bootstrap_servers
        self.spawn(
            "sandbox",
            cli(
                "sandbox",
                "--port",
                str(self.sandbox_port),
                "--preset-loop",
                LOOP,
                "--auto-review",
                "--review-delay-min-ms",
                "200",
                "--review-delay-max-ms",
                "4000",
                "--webhook-secret",
                WEBHOOK_SECRET,
                "--webhook-signature",
                "sha256",
                "--webhook-drop-share",
                str(a.drop_share),
                "--webhook-duplicate-share",
                str(a.duplicate_share),
                "--webhook-reorder-share",
                str(a.reorder_share),
                "--webhook-delay-ms",
                "500",
                # A short delivery timeout turns slow acks into failed attempts, so the
                # sandbox's retry schedule (scaled down) runs too.
                "--webhook-timeout-seconds",
                str(a.webhook_timeout),
                "--webhook-retry-scale",
                "0.01",
                "--seed",
                "17",
            ),
        )
        await self.wait_http(self.sandbox_url + "/sandbox/stats", "sandbox")
        cfg = self.config(bootstrap)
        path = self.var / "connector.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {
            **os.environ,
            "HITL_API_KEY": API_KEY,
            "HITL_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "HITL_CALLBACK_TOKEN_SECRET": TOKEN_SECRET,
        }
        self.spawn("connector", cli("run", "--config", str(path)), env)
        await self.wait_http(self.gateway_url + "/readyz", "connector")
        count = int(a.rate * a.minutes * 60)
        self.spawn(
            "loadgen",
            cli(
                "loadgen",
                "--bootstrap",
                bootstrap,
                "--rate",
                str(a.rate),
                "--count",
                str(count),
                "--bad-share",
                "0.02",
                "--seed",
                "17",
            ),
        )
        settings = Settings(**cfg)
        return bootstrap, settings

    async def events_in(self, settings: Settings) -> int:
        """Records on the input topic (non-transactional, so end offsets count records)."""
        topic = settings.topics.input
        if self._input is None:
            parts = await partition_ids(settings.kafka, topic)
            self._tps = [TopicPartition(topic, p) for p in parts]
            self._input = AIOKafkaConsumer(
                bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False
            )
            await self._input.start()
            self._input.assign(self._tps)
        ends = await self._input.end_offsets(self._tps)
        return int(sum(ends.values()))

    async def metrics(self) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                return scrape((await http.get(self.gateway_url + "/metrics")).text)
        except httpx.HTTPError:
            return scrape("")

    async def sample(self, settings: Settings, t: float) -> Sample:
        pid = self.procs["connector"].pid
        m = await self.metrics()
        return Sample(
            t=t,
            rss=rss_bytes(pid),
            fds=open_files(pid),
            tasks=m["tasks"],
            lag=m["lag"],
            events_in=await self.events_in(settings),
            consumed=m["consumed"],
            decisions=m["decisions"],
            dlq=m["dlq"],
            pending=m["pending"],
        )

    async def sandbox_stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as http:
            data: dict[str, Any] = (await http.get(self.sandbox_url + "/sandbox/stats")).json()
            return data

    async def stop(self) -> None:
        if self._input is not None:
            await self._input.stop()
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(list(self.procs.values())):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self.broker is not None:
            await self.broker.stop()


def verdict(samples: list[Sample], max_lag: float) -> list[tuple[str, bool, str]]:
    """Each flatness check: (name, passed, figures)."""
    total = samples[-1].t
    first = [s for s in samples if s.t < total / 2]
    second = [s for s in samples if s.t >= total / 2]
    mid, last = second[0], samples[-1]
    growth = (last.rss - mid.rss) / mid.rss if mid.rss else 0.0
    checks = [
        (
            "rss",
            growth < MAX_RSS_GROWTH,
            f"second half {mid.rss / 2**20:.1f} -> {last.rss / 2**20:.1f} MiB "
            f"({growth:+.1%}, bound +{MAX_RSS_GROWTH:.0%})",
        )
    ]
    fd1, fd2 = max(s.fds for s in first), max(s.fds for s in second)
    checks.append(("open_files", fd2 <= fd1 + FD_SLACK, f"max first half {fd1}, second half {fd2}"))
    tasks1 = [s.tasks for s in first if s.tasks is not None]
    tasks2 = [s.tasks for s in second if s.tasks is not None]
    if tasks1 and tasks2:
        t1, t2 = max(tasks1), max(tasks2)
        ok = t2 <= t1 * TASK_FACTOR + TASK_SLACK
        checks.append(("asyncio_tasks", ok, f"max first half {t1:.0f}, second half {t2:.0f}"))
    else:
        checks.append(("asyncio_tasks", False, "hitl_connector_asyncio_tasks not exported"))
    lag2 = max(sum(s.lag.values()) for s in second)
    checks.append(
        ("consumer_lag", lag2 <= max_lag, f"max second half {lag2:.0f} (bound {max_lag:.0f})")
    )
    return checks


async def drain(soak: Soak, settings: Settings, timeout: float) -> tuple[Ledger, float]:
    """After the load stopped: wait until every event is decided or in the DLQ."""
    started = time.monotonic()
    while True:
        soak.check_alive()
        figures = await ledger(settings, soak.sandbox_url)
        waited = time.monotonic() - started
        if figures.undecided == 0 or waited > timeout:
            figures.recovery_s = waited
            return figures, waited
        await asyncio.sleep(5)


async def run(args: argparse.Namespace) -> int:
    var = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="hitl-soak-"))
    var.mkdir(parents=True, exist_ok=True)
    soak = Soak(args, var)
    samples: list[Sample] = []
    failures: list[str] = []
    try:
        _bootstrap, settings = await soak.start()
        duration = args.minutes * 60
        started = time.monotonic()
        print(
            f"soak: {args.minutes:g} min at {args.rate:g} events/s, a line every "
            f"{args.interval:g}s (connector pid {soak.procs['connector'].pid})",
            flush=True,
        )
        while True:
            t = time.monotonic() - started
            soak.check_alive()
            sample = await soak.sample(settings, t)
            samples.append(sample)
            print(sample.line(), flush=True)
            if t >= duration:
                break
            await asyncio.sleep(min(args.interval, max(0.0, duration - t)))
        loadgen = soak.procs["loadgen"]
        try:
            loadgen.wait(timeout=120)
        except subprocess.TimeoutExpired:
            loadgen.send_signal(signal.SIGTERM)
            loadgen.wait(30)
        if loadgen.returncode != 0:
            failures.append(f"loadgen exited with {loadgen.returncode}")
        print("soak: load stopped; draining …", flush=True)
        figures, waited = await drain(soak, settings, args.drain_seconds)
        end = await soak.sample(settings, time.monotonic() - started)
        stats = await soak.sandbox_stats()
        wh = stats["webhooks"]
        webhooks = await soak.metrics()
    except RuntimeError as exc:
        print(f"soak: FAILED: {exc}", flush=True)
        return 2
    finally:
        await soak.stop()

    max_lag = args.max_lag if args.max_lag is not None else max(100.0, args.rate * 30)
    print(f"after drain ({waited:.0f}s): {end.line()}")
    print(
        f"sandbox: creates={stats['creates']} idempotent_replays={stats['idempotent_replays']} "
        f"webhooks sent={wh['sent']} delivered={wh['delivered']} failed={wh['failed_attempts']} "
        f"retries={wh['retries']} dropped={wh['dropped']} duplicated={wh['duplicated']} "
        f"reordered={wh['reordered']} gave_up={wh['gave_up']}"
    )
    received = ", ".join(f"{k}={v:.0f}" for k, v in sorted(webhooks["webhooks"].items()))
    via = ", ".join(f"{k}={v:.0f}" for k, v in sorted(webhooks["via"].items()))
    print(f"gateway: {received or '-'}; decisions by via: {via or '-'}")
    print("verdict:")
    for name, ok, text in verdict(samples, max_lag):
        print(f"  {name:<14} {'flat' if ok else 'NOT FLAT'}  {text}")
        if not ok:
            failures.append(f"{name} not flat")
    print(f"ledger: {figures.line()}")
    if figures.lost or figures.undecided or figures.duplicate_decisions:
        failures.append("events lost, undecided or decided twice")
    if figures.duplicate_requests:
        failures.append("duplicate HITL requests")
    if figures.events_in == 0 or figures.decisions_out == 0:
        failures.append("no traffic went through")
    if failures:
        print("soak: FAILED: " + "; ".join(failures))
        return 1
    print("soak: OK — flat, nothing lost, one decision per request")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="load duration (default 30)")
    p.add_argument("--rate", type=float, default=5.0, help="events per second (default 5)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between lines")
    p.add_argument("--drain-seconds", type=float, default=180.0, help="max wait after the load")
    p.add_argument("--max-lag", type=float, default=None, help="lag bound (default rate*30)")
    p.add_argument("--drop-share", type=float, default=0.05, help="webhooks never sent")
    p.add_argument("--duplicate-share", type=float, default=0.10, help="webhooks sent twice")
    p.add_argument("--reorder-share", type=float, default=0.10, help="webhooks held back")
    p.add_argument(
        "--webhook-timeout", type=float, default=0.1, help="sandbox delivery timeout (s)"
    )
    p.add_argument("--data-dir", default=None, help="logs and broker data (default: a temp dir)")
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
