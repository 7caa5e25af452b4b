"""Webhook delivery chaos at the gateway: redeliveries across two gateways, and a gateway
killed after its Kafka produce is durable but before the sender read the answer.

Real broker, sandbox, gateways (in-process ``ConnectorApp`` role ``gateway`` and a gateway
subprocess killed with SIGKILL), a resolver and a submitter, all over loopback. Requests are
created through the submit path against the sandbox (no auto-reviewer, no callback URL, no
reconciler), answered through the sandbox's admin endpoint, and the terminal webhook is then
delivered by the test, signed like HITL.sh signs it, as often as the scenario needs.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
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
from aiokafka import AIOKafkaConsumer, TopicPartition

from connector.app import ConnectorApp
from connector.config import Settings
from connector.hitl.signing import sign
from connector.kafka.admin import ensure_topics, partition_ids
from hitl_sandbox import SandboxOptions, SandboxServer
from tests.integration.harness import (
    WEBHOOK_SECRET,
    decision_settings,
    free_port,
    offsets,
    produce,
    read_all,
    sandbox_get,
    wait_until,
    webhook_outcomes,
)
from tests.integration.ledger import ledger
from tests.integration.test_decision_chaos import exactly_once_ledger
from tests.integration.test_decision_path import LOOP, events

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

ANSWERS = ("approved", "rejected", "needs_changes")


def quiet_sandbox() -> SandboxOptions:
    """A sandbox that never answers or calls back by itself: the test delivers the webhooks."""
    return SandboxOptions(preset_loops=(LOOP,), auto_review=False, seed=11)


def settings_for(bootstrap: str, sandbox_url: str) -> Settings:
    """Every role's settings: signatures required, no callback URL, no reconciler (so each
    decision comes from a delivered webhook), HTTP on a free port per app."""
    return decision_settings(
        bootstrap,
        sandbox_url,
        gateway={"port": 0, "public_url": None, "signature": "required"},
        resolver={"reconcile": False, "unmatched_ttl_seconds": 120.0},
    )


def variant(settings: Settings, instance: str, port: int = 0) -> Settings:
    """The same run (topics, group) as another instance on its own HTTP port."""
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"instance_id": instance}),
            "gateway": settings.gateway.model_copy(update={"port": port}),
        }
    )


async def create_answered_requests(
    settings: Settings, sandbox_url: str, n: int, prefix: str
) -> list[dict[str, Any]]:
    """Produce ``n`` events, let the submitter create their requests, answer each in the
    sandbox; returns the answered requests (the sandbox's admin view)."""
    bootstrap = settings.kafka.bootstrap_servers
    await produce(bootstrap, settings.topics.input, events(n, prefix))

    async def created() -> bool:
        snap = await offsets(bootstrap, settings.kafka.group_id, settings.topics.input)
        return snap.total_end >= n and snap.done

    await wait_until(created, timeout=120, interval=0.5, what=f"{n} requests created")
    pending = sandbox_get(sandbox_url, "/sandbox/requests")["requests"]
    assert len(pending) == n, f"expected {n} sandbox requests, found {len(pending)}"
    rng = random.Random(n)
    answered: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=sandbox_url, timeout=30) as http:
        for req in pending:
            r = await http.post(
                f"/sandbox/requests/{req['id']}/respond",
                json={"response_data": rng.choice(ANSWERS)},
            )
            r.raise_for_status()
            answered.append(r.json()["request"])
    return answered


def completed_webhook(request: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The documented nested ``request.completed`` delivery (P1) and its S1 signature."""
    body = orjson.dumps(
        {
            "event": "request.completed",
            "timestamp": request["updated_at"],
            "data": {
                "request": request,
                "loop": {"id": request["loop_id"]},
                "reviewer": request.get("response_by_user"),
            },
        }
    )
    headers = {
        "content-type": "application/json",
        "X-HITL-Signature-256": "sha256=" + sign(body, WEBHOOK_SECRET),
    }
    return body, headers


async def all_joined(settings: Settings, n: int) -> bool:
    """n decisions out and the resolver has committed every callback (duplicates included)."""
    bootstrap = settings.kafka.bootstrap_servers
    snap = await offsets(
        bootstrap, f"{settings.kafka.group_id}-resolver", settings.topics.callbacks
    )
    if not snap.done:
        return False
    return len(await read_all(bootstrap, settings.topics.output)) >= n


@pytest.mark.slow
async def test_same_webhook_five_times_two_at_once_to_two_gateways_one_decision(
    kafka_bootstrap: str,
) -> None:
    n, copies = 200, 5
    with SandboxServer(quiet_sandbox()) as sandbox:
        base = settings_for(kafka_bootstrap, sandbox.url)
        await ensure_topics(base, create=True)
        apps: list[ConnectorApp] = []
        try:
            for role, instance in (
                ("resolver", "resolver-1"),
                ("gateway", "gateway-a"),
                ("gateway", "gateway-b"),
                ("submitter", "submitter-1"),
            ):
                app = ConnectorApp(variant(base, instance), role)
                await app.start()
                apps.append(app)
            gateways = [app.gateway for app in apps[1:3] if app.gateway is not None]
            urls = [g.url + "/webhooks/hitl" for g in gateways]
            assert len(set(urls)) == 2, urls

            answered = await create_answered_requests(base, sandbox.url, n, "five")
            statuses: collections.Counter[int] = collections.Counter()
            per_gateway: collections.Counter[str] = collections.Counter()
            rng = random.Random(5)
            gate = asyncio.Semaphore(16)
            started = time.monotonic()
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx.AsyncClient(timeout=30, limits=limits) as http:

                async def deliver(url: str, body: bytes, headers: dict[str, str]) -> None:
                    r = await http.post(url, content=body, headers=headers)
                    statuses[r.status_code] += 1
                    per_gateway[url] += 1

                async def five_times(request: dict[str, Any]) -> None:
                    body, headers = completed_webhook(request)
                    async with gate:
                        # Two at the same instant, one to each gateway ...
                        await asyncio.gather(*(deliver(u, body, headers) for u in urls))
                        # ... then three more, one after another, to either.
                        for _ in range(copies - 2):
                            await deliver(rng.choice(urls), body, headers)

                await asyncio.gather(*(five_times(req) for req in answered))
            delivered_s = time.monotonic() - started
            took = await wait_until(
                lambda: all_joined(base, n), timeout=180, interval=1, what="all joined"
            )
            figures = await ledger(base, sandbox.url, recovery_s=took)
            outcomes = [webhook_outcomes(app) for app in apps[1:3]]
        finally:
            for app in reversed(apps):
                await app.stop()

    fivexx = sum(v for k, v in statuses.items() if k >= 500)
    print(
        f"\nfive-deliveries-two-gateways: requests={n} deliveries={sum(statuses.values())} "
        f"statuses={dict(statuses)} 5xx={fivexx} per_gateway={list(per_gateway.values())} "
        f"gateway_outcomes={outcomes} callbacks={figures.callbacks} "
        f"delivered_in={delivered_s:.1f}s"
    )
    print(f"five-deliveries-two-gateways ledger: {figures.line()}")
    exactly_once_ledger(figures, n)
    assert statuses == {200: n * copies}, statuses
    assert fivexx == 0
    assert figures.callbacks == n * copies, "every acknowledged delivery is one durable record"
    assert min(per_gateway.values()) >= n, "both gateways took their share"


# --- a gateway killed after the durable produce, before the sender read the answer -----------


class GatewayProcess:
    """``hitl-connector run --role gateway`` as a child process on a fixed port."""

    def __init__(self, settings: Settings, port: int, tmp: Path) -> None:
        data = settings.model_dump(
            mode="json", exclude={"hitl": {"api_key"}, "gateway": {"secrets", "token_secret"}}
        )
        data["kafka"]["instance_id"] = "gateway-proc"
        data["gateway"].update(port=port, public_url=None)
        self.config = tmp / "gateway.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.log = tmp / "gateway.log"
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    async def start(self) -> None:
        env = {**os.environ, "HITL_WEBHOOK_SECRET": WEBHOOK_SECRET}
        with self.log.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "connector.cli",
                    "run",
                    "--role",
                    "gateway",
                    "--config",
                    str(self.config),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        proc = self.proc

        async def ready() -> bool:
            assert proc.poll() is None, self.log.read_text()[-3000:]
            try:
                async with httpx.AsyncClient(timeout=2) as http:
                    return (await http.get(self.url + "/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(ready, timeout=60, interval=0.1, what="gateway process ready")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class CallbackTail:
    """Follows ``hitl.callbacks`` (read_committed) and remembers which request ids it saw."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer: AIOKafkaConsumer | None = None
        self.seen: collections.Counter[str] = collections.Counter()

    async def start(self) -> None:
        topic = self._settings.topics.callbacks
        parts = await partition_ids(self._settings.kafka, topic)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await self._consumer.start()
        tps = [TopicPartition(topic, p) for p in parts]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def wait_for(self, request_id: str, count: int, timeout: float = 30.0) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        deadline = time.monotonic() + timeout
        while self.seen[request_id] < count:
            assert time.monotonic() < deadline, f"no callback record for {request_id}"
            batch = await consumer.getmany(timeout_ms=50)
            for records in batch.values():
                for record in records:
                    if record.key is not None:
                        self.seen[record.key.decode()] += 1


def raw_request(port: int, body: bytes, headers: dict[str, str]) -> bytes:
    head = [
        "POST /webhooks/hitl HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.mark.slow
async def test_gateway_killed_after_produce_before_answer_then_redelivered_one_decision(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    n = 20
    with SandboxServer(quiet_sandbox()) as sandbox:
        base = settings_for(kafka_bootstrap, sandbox.url)
        await ensure_topics(base, create=True)
        gateway = GatewayProcess(base, free_port(), tmp_path)
        tail = CallbackTail(base)
        apps: list[ConnectorApp] = []
        answered_before_kill = 0
        redelivery: collections.Counter[int] = collections.Counter()
        try:
            for role, instance in (("resolver", "resolver-1"), ("submitter", "submitter-1")):
                app = ConnectorApp(variant(base, instance), role)
                await app.start()
                apps.append(app)
            await gateway.start()
            await tail.start()
            answered = await create_answered_requests(base, sandbox.url, n, "killed")
            started = time.monotonic()
            for request in answered:
                body, headers = completed_webhook(request)
                reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
                writer.write(raw_request(gateway.port, body, headers))
                await writer.drain()
                # The record is durable on hitl.callbacks: kill the gateway now, without
                # reading its answer, so the sender never got an acknowledgement.
                await tail.wait_for(request["id"], 1)
                gateway.kill()
                # Only to report where the kill landed; the sender has already given up.
                try:
                    leftover = await asyncio.wait_for(reader.read(64), timeout=1)
                except (TimeoutError, ConnectionError):
                    leftover = b""
                if leftover.startswith(b"HTTP/1.1 200"):
                    answered_before_kill += 1
                writer.close()
                await gateway.start()
                async with httpx.AsyncClient(timeout=30) as http:
                    r = await http.post(
                        gateway.url + "/webhooks/hitl", content=body, headers=headers
                    )
                redelivery[r.status_code] += 1
                await tail.wait_for(request["id"], 2)
            cycle_s = (time.monotonic() - started) / n
            took = await wait_until(
                lambda: all_joined(base, n), timeout=120, interval=1, what="all joined"
            )
            figures = await ledger(base, sandbox.url, recovery_s=took)
        finally:
            await tail.stop()
            gateway.stop()
            for app in reversed(apps):
                await app.stop()

    print(
        f"\ngateway-killed-after-produce: deliveries={n} kills={n} "
        f"gateway_starts={gateway.starts} answer_already_written_at_kill={answered_before_kill} "
        f"redelivery_statuses={dict(redelivery)} callbacks={figures.callbacks} "
        f"cycle={cycle_s:.1f}s"
    )
    print(f"gateway-killed-after-produce ledger: {figures.line()}")
    exactly_once_ledger(figures, n)
    assert redelivery == {200: n}, redelivery
    assert figures.callbacks == 2 * n, "each killed delivery and its redelivery are durable"
