"""Decision path under failure: Kafka paused, a connector killed, escalations.

Real broker, sandbox, gateways and a small HTTP load balancer, all over loopback.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connector.app import ConnectorApp
from connector.config import Settings
from connector.kafka.admin import ensure_topics
from hitl_sandbox import SandboxServer
from tests.integration.harness import (
    API_KEY,
    decision_settings,
    event_of,
    free_port,
    produce,
    read_all,
    sandbox_get,
    wait_until,
    webhook_outcomes,
)
from tests.integration.ledger import Ledger, ledger
from tests.integration.test_decision_path import SECRET, events, reviewer

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]


async def decisions_of(settings: Settings) -> list[dict[str, Any]]:
    records = await read_all(settings.kafka.bootstrap_servers, settings.topics.output)
    return [orjson.loads(r.value) for r in records]


def exactly_once(decisions: list[dict[str, Any]], requests: list[dict[str, Any]]) -> dict[str, int]:
    per_request = collections.Counter(d["request_id"] for d in decisions)
    keys = [event_of(r) for r in requests]
    return {
        "requests": len(requests),
        "duplicate_requests": len(keys) - len(set(keys)),
        "decisions": len(decisions),
        "undecided": len({r["id"] for r in requests} - set(per_request)),
        "decided_twice": sum(1 for n in per_request.values() if n > 1),
    }


def exactly_once_ledger(figures: Ledger, n: int) -> None:
    """Every event decided once: no loss, no second request, no second decision."""
    assert figures.events_in == n and figures.lost == 0 and figures.undecided == 0
    assert figures.requests == n and figures.duplicate_requests == 0
    assert figures.decisions_out == n and figures.duplicate_decisions == 0


async def test_kafka_paused_while_webhooks_arrive_then_every_decision_once(
    kafka_broker: Any, kafka_bootstrap: str
) -> None:
    options = reviewer(review_delay_min_ms=200, review_delay_max_ms=2500, webhook_retry_scale=0.02)
    with SandboxServer(options) as sandbox:
        settings = decision_settings(kafka_bootstrap, sandbox.url)
        app = ConnectorApp(settings, "all")
        await app.start()
        try:
            n = 300
            await produce(kafka_bootstrap, settings.topics.input, events(n, "pause"))

            async def some() -> bool:
                return len(await decisions_of(settings)) >= 30

            await wait_until(some, timeout=60, what="first decisions")
            kafka_broker.pause()
            await asyncio.sleep(12)  # webhooks keep arriving; the gateway must answer 503
            kafka_broker.resume()

            async def all_decided() -> bool:
                return len(await decisions_of(settings)) >= n

            took = await wait_until(all_decided, timeout=240, interval=1, what="all decisions")
            requests = sandbox_get(sandbox.url, "/sandbox/requests")["requests"]
            figures = exactly_once(await decisions_of(settings), requests)
            gateway = webhook_outcomes(app)
            webhooks = sandbox_get(sandbox.url, "/sandbox/stats")["webhooks"]
            print(f"\nkafka-paused: {figures} gateway={gateway} retries={webhooks['retries']}")
            ledger_figures = await ledger(settings, sandbox.url, recovery_s=took)
            print(f"kafka-paused ledger: {ledger_figures.line()}")
            exactly_once_ledger(ledger_figures, n)
            assert gateway.get("unavailable", 0) > 0, "no webhook met the outage"
            assert figures["undecided"] == 0 and figures["decided_twice"] == 0
            assert figures["requests"] == n and figures["duplicate_requests"] == 0
        finally:
            await app.stop()


class Balancer:
    """Forwards each webhook to a random live gateway, like a load balancer would."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self.port = free_port()
        self.client = httpx.Client(timeout=30)

        def forward(request: Request, body: bytes) -> Response:
            order = random.sample(self.backends, len(self.backends))
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() not in ("host", "content-length")
            }
            for backend in order:
                try:
                    r = self.client.post(backend + request.url.path, content=body, headers=headers)
                except httpx.TransportError:
                    continue
                return Response(
                    r.content,
                    r.status_code,
                    headers={"retry-after": r.headers.get("retry-after", "1")},
                )
            return Response(b"no backend", 502)

        async def route(request: Request) -> Response:

            body = await request.body()
            return await asyncio.to_thread(forward, request, body)

        app = Starlette(routes=[Route("/{path:path}", route, methods=["POST"])])
        self.server = uvicorn.Server(
            uvicorn.Config(app, port=self.port, log_level="error", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Balancer:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.client.close()


def connector_process(
    settings: Settings, instance: str, port: int, public: str, tmp: Path
) -> subprocess.Popen[bytes]:
    data = settings.model_dump(
        mode="json", exclude={"hitl": {"api_key"}, "gateway": {"secrets", "token_secret"}}
    )
    data["kafka"]["instance_id"] = instance
    data["gateway"].update(port=port, public_url=public)
    cfg = tmp / f"{instance}.yaml"
    cfg.write_text(yaml.safe_dump(data))
    env = {
        **os.environ,
        "HITL_API_KEY": API_KEY,
        "HITL_WEBHOOK_SECRET": SECRET,
        "HITL_CALLBACK_TOKEN_SECRET": "token-secret",
    }
    with (tmp / f"{instance}.log").open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "run", "--config", str(cfg)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_two_connectors_one_killed_mid_run(kafka_bootstrap: str, tmp_path: Path) -> None:
    options = reviewer(review_delay_min_ms=100, review_delay_max_ms=1500)
    ports = [free_port(), free_port()]
    with (
        SandboxServer(options) as sandbox,
        Balancer([f"http://127.0.0.1:{p}" for p in ports]) as lb,
    ):
        settings = decision_settings(
            kafka_bootstrap, sandbox.url, kafka={"session_timeout_ms": 8000}
        )
        await ensure_topics(settings, create=True)
        public = f"http://127.0.0.1:{lb.port}"
        procs = [
            connector_process(settings, f"node{i}", ports[i], public, tmp_path) for i in range(2)
        ]
        try:
            n = 1000
            await produce(kafka_bootstrap, settings.topics.input, events(n, "two"))

            async def some() -> bool:
                return len(await decisions_of(settings)) >= n // 4

            await wait_until(some, timeout=90, what="a quarter decided")
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(10)

            async def all_decided() -> bool:
                return len(await decisions_of(settings)) >= n

            took = await wait_until(all_decided, timeout=240, interval=1, what="all decisions")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        requests = sandbox_get(sandbox.url, "/sandbox/requests")["requests"]
        stats = sandbox_get(sandbox.url, "/sandbox/stats")
        figures = exactly_once(await decisions_of(settings), requests)
        print(
            f"\ntwo-connectors-one-killed: {figures} recovery={took:.1f}s "
            f"replays={stats['idempotent_replays']}"
        )
        ledger_figures = await ledger(settings, sandbox.url, recovery_s=took)
        print(f"two-connectors-one-killed ledger: {ledger_figures.line()}")
        assert procs[1].returncode == 0, (tmp_path / "node1.log").read_text()[-3000:]
        exactly_once_ledger(ledger_figures, n)
        assert figures["requests"] == n and figures["duplicate_requests"] == 0
        assert figures["undecided"] == 0 and figures["decided_twice"] == 0


async def test_claims_and_escalations_reach_the_escalations_topic(kafka_bootstrap: str) -> None:
    options = reviewer(
        claim_events=True, escalate_share=1.0, review_delay_min_ms=600, review_delay_max_ms=900
    )
    with SandboxServer(options) as sandbox:
        settings = decision_settings(kafka_bootstrap, sandbox.url)
        app = ConnectorApp(settings, "all")
        await app.start()
        try:
            assert app.gateway is not None
            # The seed's configure_webhook: registered webhooks get every request event.
            await app.client.register_webhook(
                f"{app.gateway.url}/webhooks/hitl", ["request.*"], SECRET
            )
            await produce(kafka_bootstrap, settings.topics.input, events(20, "esc"))

            async def done() -> bool:
                return len(await decisions_of(settings)) >= 20

            await wait_until(done, timeout=60, what="20 decisions")
            await asyncio.sleep(1)
            assert settings.topics.escalations is not None
            escalations = [
                orjson.loads(r.value)
                for r in await read_all(kafka_bootstrap, settings.topics.escalations)
            ]
            kinds = collections.Counter(e["event"] for e in escalations)
            requests = sandbox_get(sandbox.url, "/sandbox/requests")["requests"]
            figures = exactly_once(await decisions_of(settings), requests)
            print(f"\nescalations: {dict(kinds)} {figures}")
            ledger_figures = await ledger(settings, sandbox.url)
            print(f"escalations ledger: {ledger_figures.line()}")
            exactly_once_ledger(ledger_figures, 20)
            assert kinds["request.escalated"] >= 15 and kinds["request.claimed"] >= 15
            assert {e["event_id"] for e in escalations} <= {f"esc-{i}" for i in range(20)} | {
                event_of(r) for r in requests
            }
            assert figures["decided_twice"] == 0 and figures["undecided"] == 0
        finally:
            await app.stop()
