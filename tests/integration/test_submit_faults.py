"""Submit path under faults: outage with Retry-After, 429 with a reset, pacing, 3 SIGKILLs.

Real broker, real sandbox over HTTP. Figures are printed for the closing note.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from connector.config import Settings
from connector.kafka.admin import ensure_topics
from hitl_sandbox import SandboxOptions, SandboxServer
from tests.integration.harness import (
    API_KEY,
    event_of,
    lookup_calls,
    offsets,
    produce,
    run_settings,
    sandbox_get,
    sandbox_put_config,
    wait_until,
)
from tests.integration.ledger import ledger

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

LOOP = "loop-test"
CREATE = ("POST", "/loops/{id}/requests")


def events(n: int, prefix: str) -> list[tuple[bytes, bytes]]:
    return [
        (f"{prefix}-{i}".encode(), orjson.dumps({"id": f"{prefix}-{i}", "content": f"text {i}"}))
        for i in range(n)
    ]


def creates(url: str) -> list[dict[str, Any]]:
    calls = sandbox_get(url, "/sandbox/calls")["calls"]
    return [c for c in calls if (c["method"], c["endpoint"]) == CREATE]


async def all_done(settings: Settings) -> bool:
    snap = await offsets(
        settings.kafka.bootstrap_servers, settings.kafka.group_id, settings.topics.input
    )
    return snap.done and snap.total_end > 0


async def test_outage_with_retry_after_pauses_partitions_and_loses_nothing(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    with SandboxServer(SandboxOptions(preset_loops=(LOOP,))) as sandbox:
        settings = run_settings(
            kafka_bootstrap,
            sandbox.url,
            batch={"max_batch_seconds": 3.0, "linger_ms": 20},
            hitl={"circuit_failure_threshold": 3, "circuit_open_seconds": 5.0, "max_retries": 3},
        )
        app = await connector_apps(settings, "submitter")
        await produce(kafka_bootstrap, settings.topics.input, events(30, "before"))
        await wait_until(lambda: all_done(settings), timeout=60, what="warm-up committed")

        retry_after = 5
        sandbox_put_config(sandbox.url, outage_seconds=20, outage_retry_after=retry_after)
        outage_start = time.time()
        await produce(kafka_bootstrap, settings.topics.input, events(120, "during"))
        max_paused = 0
        while time.time() - outage_start < 21:
            max_paused = max(max_paused, len(app.submitter.paused))
            await asyncio.sleep(0.2)
        await wait_until(lambda: all_done(settings), timeout=90, what="recovery")
        recovered = time.time() - (outage_start + 20)

        calls = creates(sandbox.url)
        failed = [c for c in calls if c["status"] == 503]
        # A call that *arrives* within Retry-After of a 503 answer, and was not already in
        # flight with it (100 ms on loopback), was sent earlier than told.
        early = [
            (f["ts"], c["ts"])
            for f in failed
            for c in calls
            if f["ts"] + 0.1 < c["ts"] < f["ts"] + retry_after - 0.05
        ]
        keys = [event_of(r) for r in sandbox_get(sandbox.url, "/sandbox/requests")["requests"]]
        print(
            f"\noutage: 503s={len(failed)} calls_during_outage="
            f"{sum(1 for c in calls if outage_start <= c['ts'] < outage_start + 20)} "
            f"early_calls={len(early)} max_paused_partitions={max_paused} "
            f"all_committed_after_outage_end={recovered:.1f}s "
            f"requests={len(keys)} lost={150 - len(set(keys))} "
            f"duplicates={len(keys) - len(set(keys))}"
        )
        figures = await ledger(settings, sandbox.url, recovery_s=recovered)
        print(f"outage ledger: {figures.line()}")
        assert figures.events_in == 150 and figures.lost == 0
        assert figures.duplicate_requests == 0 and figures.requests == 150
        assert failed, "the outage was not observed"
        assert not early, f"calls earlier than Retry-After: {early[:5]}"
        assert max_paused > 0, "partitions were not paused during the outage"
        assert len(keys) == len(set(keys)) == 150


async def test_429_with_reset_means_no_call_before_the_reset(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    options = SandboxOptions(preset_loops=(LOOP,), rate_limit_calls=5, rate_limit_window_seconds=10)
    with SandboxServer(options) as sandbox:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        # Exhaust this key's window from outside the connector (a window may roll over
        # while we do, so call until the 429 arrives).
        for _ in range(15):
            r = httpx.get(f"{sandbox.url}/v1/test", headers=auth, timeout=5)
            if r.status_code == 429:
                break
        assert r.status_code == 429
        reset = float(r.headers["X-RateLimit-Reset"])
        settings = run_settings(
            kafka_bootstrap,
            sandbox.url,
            hitl={"rate_limit_calls": 5, "rate_limit_window_seconds": 10},
            batch={"max_batch_seconds": 2.0},
        )
        await connector_apps(settings, "submitter")
        await produce(kafka_bootstrap, settings.topics.input, events(5, "rl"))
        await wait_until(lambda: all_done(settings), timeout=60, what="all created")
        calls = creates(sandbox.url)
        limited = [c for c in calls if c["status"] == 429]
        before_reset = [c for c in calls if c["ts"] < reset]
        print(
            f"\nrate-limit: creates={len(calls)} 429s={len(limited)} "
            f"creates_before_reset={len(before_reset)} reset_epoch={reset:.0f}"
        )
        # Only the first probe (before any header was seen) may meet the exhausted window.
        assert len(limited) <= 1
        assert len(before_reset) <= 1
        assert sum(1 for c in calls if c["status"] == 201) == 5


async def test_pacing_uses_the_budget_without_429s(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    limit, window = 20, 10
    options = SandboxOptions(
        preset_loops=(LOOP,), rate_limit_calls=limit, rate_limit_window_seconds=window
    )
    with SandboxServer(options) as sandbox:
        settings = run_settings(
            kafka_bootstrap,
            sandbox.url,
            hitl={"rate_limit_calls": limit, "rate_limit_window_seconds": window},
            batch={"max_batch_seconds": 5.0},
        )
        await ensure_topics(settings, create=True)
        await produce(kafka_bootstrap, settings.topics.input, events(80, "pace"))
        await connector_apps(settings, "submitter")
        await wait_until(lambda: all_done(settings), timeout=120, what="80 creates")
        calls = creates(sandbox.url)
        stats = sandbox_get(sandbox.url, "/sandbox/stats")
        first, last = calls[0]["ts"], calls[-1]["ts"]
        windows_spanned = math.floor(last / window) - math.floor(first / window) + 1
        utilization = len(calls) / (limit * windows_spanned)
        rate = (len(calls) - 1) / (last - first) if last > first else float("inf")
        print(
            f"\npacing: creates={len(calls)} 429s={stats['rate_limited']} "
            f"windows={windows_spanned} budget_used={utilization:.0%} "
            f"rate={rate:.2f}/s allowed={limit / window:.2f}/s"
        )
        assert stats["rate_limited"] == 0
        assert len(calls) == 80
        assert utilization >= 0.9


def _connector_proc(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HITL_API_KEY": API_KEY}
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "connector.cli",
                "run",
                "--role",
                "submitter",
                "--config",
                str(cfg),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_three_sigkills_during_creates_ask_nobody_twice(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The submitter process is SIGKILLed three times while it creates, against the sandbox
    as documented (Idempotency-Key ignored). The journal and the lookups must leave exactly
    one request per event, and spend at most ceil(in flight / 100) + 1 calls per crash."""
    options = SandboxOptions(preset_loops=(LOOP,), latency_ms=10, latency_max_ms=60)
    with SandboxServer(options) as sandbox:
        settings = run_settings(kafka_bootstrap, sandbox.url, batch={"max_records": 100})
        cfg = tmp_path / "connector.yaml"
        data = settings.model_dump(
            mode="json", exclude={"hitl": {"api_key"}, "gateway": {"secrets"}}
        )
        cfg.write_text(yaml.safe_dump(data))
        n, kills = 3000, 3
        await ensure_topics(settings, create=True)
        await produce(kafka_bootstrap, settings.topics.input, events(n, "kill"))
        log = tmp_path / "connector.log"
        in_flight: list[int] = []
        proc = _connector_proc(cfg, log)
        try:
            for k in range(1, kills + 1):
                target = k * n // (kills + 1)

                async def creating(target: int = target) -> bool:
                    return bool(sandbox_get(sandbox.url, "/sandbox/stats")["creates"] >= target)

                await wait_until(creating, timeout=90, interval=0.02, what=f"kill {k}")
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                created = sandbox_get(sandbox.url, "/sandbox/stats")["creates"]
                snap = await offsets(
                    kafka_bootstrap, settings.kafka.group_id, settings.topics.input
                )
                in_flight.append(max(0, created - snap.total_committed))
                proc = _connector_proc(cfg, log)
            took = await wait_until(lambda: all_done(settings), timeout=120, what="recovery")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        stats = sandbox_get(sandbox.url, "/sandbox/stats")
        requests = sandbox_get(sandbox.url, "/sandbox/requests")["requests"]
        snap = await offsets(kafka_bootstrap, settings.kafka.group_id, settings.topics.input)
        extra = lookup_calls(stats)
        bound = sum(math.ceil(f / 100) + 1 for f in in_flight)
        figures = await ledger(settings, sandbox.url, recovery_s=took)
        print(
            f"\nsigkill x{kills}: events={n} requests={len(requests)} in_flight_at_kills="
            f"{in_flight} duplicate_requests={figures.duplicate_requests} "
            f"events_without_a_request={figures.lost} committed={snap.total_committed}/"
            f"{snap.total_end} extra_api_calls={extra} (bound {bound}: ceil(in flight/100)+1 "
            f"per crash) idempotent_replays={stats['idempotent_replays']}"
        )
        print(f"sigkill ledger: {figures.line()}")
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert stats["idempotent_replays"] == 0, "the sandbox must ignore Idempotency-Key"
        assert figures.events_in == n and figures.lost == 0 and figures.requests == n
        assert figures.duplicate_requests == 0, "duplicate HITL requests"
        assert snap.done and snap.total_committed == n
        assert extra <= bound, (extra, in_flight)
        assert sum(in_flight) > 0, "no kill landed while requests were in flight"
        text = log.read_text()
        assert API_KEY not in text, "the API key reached the log"
        lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        assert any(line.get("msg", "").startswith("submitter stopped") for line in lines)
        assert any("looked up before they are created" in line.get("msg", "") for line in lines)
