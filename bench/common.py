"""Shared pieces of the benchmarks: processes, CPU from /proc, topics, figures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
LOOP = "bench-loop"
API_KEY = "bench-key"
WEBHOOK_SECRET = "bench-webhook-secret"
TICKS = os.sysconf("SC_CLK_TCK")
# The interpreter of the baselines (Quix Streams apps, naive clients, the FastAPI receiver):
# the `bench` extra lives in its own environment (`make bench` makes .venv-bench), because
# quixstreams pins a pydantic older than the connector's lock.
BASELINE_PYTHON = os.environ.get("BENCH_BASELINE_PYTHON") or sys.executable


@dataclass
class Figure:
    """One measured quantity: every repetition's value, the median and the spread."""

    scenario: str
    name: str
    unit: str
    values: list[float]
    target: str | None = None  # e.g. ">= 30", "<= 150"
    better: Literal["higher", "lower"] = "higher"
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def spread(self) -> tuple[float, float]:
        return (min(self.values), max(self.values)) if self.values else (math_nan(), math_nan())

    @property
    def met(self) -> bool | None:
        """Whether the median meets ``target`` (``None`` without a target)."""
        if not self.target or not self.values:
            return None
        op, bound = self.target.split()
        return self.median >= float(bound) if op == ">=" else self.median <= float(bound)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(median=self.median, min=self.spread[0], max=self.spread[1], met=self.met)
        return out


def math_nan() -> float:
    return float("nan")


@dataclass
class BenchEnv:
    """What every scenario gets: one broker, a scratch dir, and how hard to try."""

    bootstrap: str
    tmp: Path
    repeats: int = 3
    quick: bool = False
    broker_lib: Path | None = None  # Kafka jars (for the perf-test tools)
    java: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def scale(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def run_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def spawn(
    args: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a child process with its output in ``log`` (the handle is closed in the parent)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def sandbox(tmp: Path, *args: str) -> Any:
    """A sandbox process on a free port (preset loop ``LOOP``); yields its base URL."""
    port = free_port()
    proc = spawn(
        [
            sys.executable,
            "-m",
            "hitl_sandbox",
            "--port",
            str(port),
            "--preset-loop",
            LOOP,
            *args,
        ],
        tmp / f"sandbox-{port}.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/sandbox/stats", proc)
        yield url, proc
    finally:
        stop(proc)


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 6) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        for name in names:  # wait until every partition has a leader
            for _ in range(100):
                (described,) = await admin.describe_topics([name])
                leaders = [p["leader"] for p in described["partitions"]]
                if described["error_code"] == 0 and leaders and min(leaders) >= 0:
                    break
                await asyncio.sleep(0.05)
    finally:
        await admin.close()


def event(run: str, i: int, **extra: Any) -> bytes:
    return orjson.dumps(
        {"id": f"{run}-{i}", "content": f"benchmark post {i}", "priority": "normal", **extra}
    )


@contextlib.asynccontextmanager
async def producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks="all")
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def produce_events(bootstrap: str, topic: str, run: str, n: int, start: int = 0) -> None:
    async with producer(bootstrap) as p:
        futures = [
            await p.send(topic, event(run, i), key=f"{run}-{i}".encode())
            for i in range(start, start + n)
        ]
        await asyncio.gather(*futures)


class OffsetWatch:
    """Committed offsets of one group on one topic, through one long-lived admin client."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self._group = group
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]

    async def __aenter__(self) -> OffsetWatch:
        await self._admin.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._admin.close()

    async def committed(self) -> int:
        offsets = await self._admin.list_consumer_group_offsets(self._group, partitions=self._tps)
        return sum(max(0, m.offset) for m in offsets.values())

    async def wait_for(self, total: int, poll: float = 0.02) -> None:
        while await self.committed() < total:
            await asyncio.sleep(poll)


async def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    async with OffsetWatch(bootstrap, group, topic, partitions) as watch:
        return await watch.committed()


def topics_for(run: str) -> dict[str, Any]:
    return {
        "input": f"in-{run}",
        "output": f"out-{run}",
        "dlq": f"dlq-{run}",
        "requests": f"req-{run}",
        "callbacks": f"cb-{run}",
        "unmatched": f"unm-{run}",
        "journal": f"jrn-{run}",
        "escalations": None,
    }


# What a bench run must set besides the shipped defaults: the sandbox has no API budget, so
# the connector's budget (HITL.sh's documented 100 calls an hour) is lifted to match it.
UNLIMITED_BUDGET = {"rate_limit_calls": 10_000_000, "rate_limit_window_seconds": 1}


def connector_config(env: BenchEnv, run: str, sandbox_url: str, **sections: Any) -> Path:
    """A connector YAML for one run at the **shipped defaults**: only where things are (Kafka,
    topics, the sandbox, the loop, the gateway's port) and an unlimited API budget are set.
    ``sections`` are merged over that, per section (a scenario's tuned variant says so)."""
    cfg: dict[str, Any] = {
        "kafka": {"bootstrap_servers": env.bootstrap, "group_id": f"g-{run}", "instance_id": run},
        "topics": topics_for(run),
        "hitl": {"base_url": f"{sandbox_url}/v1", **UNLIMITED_BUDGET},
        "loops": {"default": LOOP},
        "gateway": {"host": "127.0.0.1", "port": 0},
        "log": {"level": "WARNING", "format": "json"},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if values is not None else None
    path = env.tmp / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_connector(
    env: BenchEnv, config: Path, role: str = "submitter", *, before: bool = False
) -> subprocess.Popen[bytes]:
    """``hitl-connector run``; with ``before``, the code of ``--before REV`` (same venv)."""
    extra = {"HITL_API_KEY": API_KEY, "HITL_WEBHOOK_SECRET": WEBHOOK_SECRET}
    # ``python -m`` puts its working directory first on sys.path: run the old code from its
    # own directory, so its ``connector`` comes before today's (and the installed one).
    cwd = before_code(env) if before else None
    if before:  # settings added since are unknown there (and refused: extra="forbid")
        cfg = yaml.safe_load(config.read_text())
        for section, key in BEFORE_UNKNOWN:
            cfg.get(section, {}).pop(key, None)
        config = config.with_name(config.stem + "-before.yaml")
        config.write_text(yaml.safe_dump(cfg))
    return spawn(
        [sys.executable, "-m", "connector.cli", "run", "--role", role, "--config", str(config)],
        config.with_suffix(".log"),
        env=extra,
        cwd=cwd,
    )


# (section, key) a bench config sets that the --before revision (issue 14's base) lacks.
BEFORE_UNKNOWN = (("topics", "journal"),)


def before_code(env: BenchEnv) -> Path:
    """Where ``--before REV``'s ``connector`` package was unpacked (``checkout_before``)."""
    code = env.extras.get("before")
    if not isinstance(code, Path):
        raise RuntimeError("no --before revision given")
    return code


def checkout_before(rev: str, tmp: Path) -> Path:
    """``connector/`` as it was at ``rev`` (``git archive``), for before/after contenders: a
    directory to put first on ``PYTHONPATH``. Runs in the bench's venv, so ``rev`` must need
    no dependency the current lock lacks."""
    dest = tmp / f"before-{rev}"
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "connector"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def reader(bootstrap: str, topic: str, *, committed: bool = True, tail: bool = False) -> Any:
    """A group-less consumer of ``topic`` from the beginning (read_committed unless
    ``committed`` is False); ``tail`` answers fetches within 5 ms, for latency figures."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed" if committed else "read_uncommitted",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        group_id=None,
        **({"fetch_max_wait_ms": 5} if tail else {}),
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
