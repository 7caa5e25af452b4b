"""Broker and group chaos: the broker killed and paused mid-stream, the connector SIGTERMed,
a second connector joining and leaving, creates finishing out of order.

Real broker (the session's: every scenario that faults it restores it in ``finally``), real
sandbox, gateways and connector processes over loopback. Every scenario ends by printing its
ledger line and asserting its bounds.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from connector.app import ConnectorApp
from connector.config import Settings
from connector.devkafka import DevKafka
from connector.kafka.admin import ensure_topics
from hitl_sandbox import SandboxOptions, SandboxServer
from tests.integration.harness import (
    counted,
    decision_settings,
    event_of,
    free_port,
    lookup_calls,
    offsets,
    produce,
    read_all,
    run_settings,
    sandbox_get,
    wait_until,
    webhook_outcomes,
)
from tests.integration.ledger import Ledger, ledger
from tests.integration.test_decision_chaos import Balancer, connector_process
from tests.integration.test_decision_path import LOOP, events, reviewer

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

TRANSACTIONS = "hitl_connector_kafka_transactions_total"


# --- helpers ------------------------------------------------------------------------------


async def decided(settings: Settings) -> int:
    return len(await read_all(settings.kafka.bootstrap_servers, settings.topics.output))


async def submitted(settings: Settings) -> int:
    """Input records the submitter group committed (0 while the group does not exist yet)."""
    bootstrap = settings.kafka.bootstrap_servers
    try:
        snap = await offsets(bootstrap, settings.kafka.group_id, settings.topics.input)
    except (KafkaError, OSError, TimeoutError):
        return 0
    return snap.total_committed


async def lag_zero(settings: Settings, *, resolver: bool = True) -> bool:
    """Committed offsets == end offsets for the submitter (and the resolver) group."""
    bootstrap, group = settings.kafka.bootstrap_servers, settings.kafka.group_id
    submitter = await offsets(bootstrap, group, settings.topics.input)
    if not (submitter.done and submitter.total_end > 0):
        return False
    if not resolver:
        return True
    return (await offsets(bootstrap, f"{group}-resolver", settings.topics.callbacks)).done


async def settled(settings: Settings, n: int) -> bool:
    """All ``n`` events decided and no lag on either group (False while Kafka recovers)."""
    try:
        return await decided(settings) >= n and await lag_zero(settings)
    except (KafkaError, OSError, TimeoutError):
        return False


async def at_least(settings: Settings, n: int) -> bool:
    try:
        return await decided(settings) >= n
    except (KafkaError, OSError, TimeoutError):
        return False


def transactions(app: ConnectorApp, result: str) -> dict[str, int]:
    """Kafka transactions by role with ``result`` (commit/abort), from the app's metrics."""
    assert app.metrics is not None
    return {
        role: int(
            app.metrics.registry.get_sample_value(TRANSACTIONS, {"role": role, "result": result})
            or 0
        )
        for role in ("submitter", "resolver")
    }


def roles_alive(app: ConnectorApp) -> dict[str, bool]:
    return {name: not task.done() for name, task in app._tasks.items()}


async def ready(app: ConnectorApp) -> bool:
    assert app.gateway is not None
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            return (await client.get(f"{app.gateway.url}/readyz")).status_code == 200
        except httpx.TransportError:
            return False


def exactly_once(figures: Ledger, n: int) -> None:
    """Every event decided once: no loss, no second request, no second decision."""
    assert figures.events_in == n and figures.lost == 0, figures.lost_events[:10]
    assert figures.undecided == 0
    assert figures.requests == n and figures.duplicate_requests == 0
    assert figures.decisions_out == n and figures.duplicate_decisions == 0


def chaos_sandbox(**overrides: Any) -> SandboxOptions:
    """Auto-reviewer with human-like delays, quick webhook retries, a little API latency
    (so creates are in flight when the fault hits)."""
    base: dict[str, Any] = {
        "review_delay_min_ms": 200,
        "review_delay_max_ms": 2000,
        "webhook_retry_scale": 0.02,
        "latency_ms": 5,
        "latency_max_ms": 60,
    }
    base.update(overrides)
    return reviewer(**base)


def chaos_settings(bootstrap: str, sandbox_url: str, **sections: Any) -> Settings:
    """Every role; small batches and a narrow create window, so a run has many transactions."""
    batch = {"max_records": 50, **sections.pop("batch", {})}
    hitl = {"max_in_flight": 4, **sections.pop("hitl", {})}
    return decision_settings(bootstrap, sandbox_url, batch=batch, hitl=hitl, **sections)


# --- 1 and 2: the broker killed, or paused, mid-stream ------------------------------------


async def _broker_fault_mid_stream(
    kafka_broker: DevKafka, bootstrap: str, name: str, fault: str, outage_s: float
) -> None:
    # Slow creates (20..150 ms, two at a time): the submitter is mid-stream at the fault.
    with SandboxServer(chaos_sandbox(latency_ms=20, latency_max_ms=150)) as sandbox:
        settings = chaos_settings(bootstrap, sandbox.url, hitl={"max_in_flight": 2})
        app = ConnectorApp(settings, "all")
        await app.start()
        first, second = 300, 100
        n = first + second
        try:
            await produce(bootstrap, settings.topics.input, events(first, f"{name}-a"))

            async def mid_stream() -> bool:
                return await submitted(settings) >= first // 4 and await decided(settings) >= 10

            await wait_until(mid_stream, timeout=90, what="submitting and deciding")
            before = await decided(settings)
            submitted_before = await submitted(settings)
            faulted = time.monotonic()
            try:
                if fault == "kill":
                    kafka_broker.kill()
                    # Webhooks keep arriving (503); the open transaction waits for the broker.
                    await asyncio.sleep(outage_s)
                    await kafka_broker.start()
                else:
                    kafka_broker.pause()
                    await asyncio.sleep(outage_s)
                    kafka_broker.resume()
            finally:
                # The broker is the session's: whatever happened, leave it running.
                if fault == "kill" and not kafka_broker.running:
                    await kafka_broker.start()
                elif fault == "pause" and kafka_broker.running:
                    kafka_broker.resume()
            back = time.monotonic()
            # Events keep coming after the broker is back.
            await produce(bootstrap, settings.topics.input, events(second, f"{name}-b"))
            await wait_until(
                lambda: settled(settings, n), timeout=240, interval=1, what="lag 0, all decided"
            )
            recovery = time.monotonic() - back  # broker back → lag 0 and every event decided
            alive = roles_alive(app)
            readyz = await wait_until(lambda: ready(app), timeout=60, what="/readyz 200")
            aborts = transactions(app, "abort")
            commits = transactions(app, "commit")
            gateway = webhook_outcomes(app)
        finally:
            await app.stop()
        stats = sandbox_get(sandbox.url, "/sandbox/stats")
        webhooks = stats["webhooks"]
        print(
            f"\n{name}: fault={fault} outage_s={back - faulted:.1f} "
            f"extra_api_calls={lookup_calls(stats)} idempotent_replays="
            f"{stats['idempotent_replays']} "
            f"submitted_before={submitted_before} decided_before={before} "
            f"recovery_s={recovery:.1f} roles_alive={alive} readyz_after_s={readyz:.1f} "
            f"aborted_transactions={aborts} committed_transactions={commits} "
            f"gateway={gateway} webhook_retries={webhooks['retries']}"
        )
        figures = await ledger(settings, sandbox.url, recovery_s=recovery)
        print(f"{name} ledger: {figures.line()}")
        exactly_once(figures, n)
        assert all(alive.values()), f"a role died: {alive}"
        assert gateway.get("unavailable", 0) > 0, "no webhook met the outage"
        assert submitted_before < first and before < first, "the fault was not mid-stream"


@pytest.mark.slow
async def test_broker_sigkill_and_restart_mid_stream(
    kafka_broker: DevKafka, kafka_bootstrap: str
) -> None:
    await _broker_fault_mid_stream(kafka_broker, kafka_bootstrap, "broker-sigkill", "kill", 3.0)


@pytest.mark.parametrize(
    "pause_s",
    [pytest.param(8.0, id="8s"), pytest.param(30.0, id="30s", marks=pytest.mark.slow)],
)
async def test_broker_sigstop_then_sigcont_mid_stream(
    kafka_broker: DevKafka, kafka_bootstrap: str, pause_s: float
) -> None:
    await _broker_fault_mid_stream(
        kafka_broker, kafka_bootstrap, f"broker-sigstop-{pause_s:.0f}s", "pause", pause_s
    )


# --- 3: the connector SIGTERMed mid-stream ------------------------------------------------


async def _exit_code(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return await asyncio.to_thread(proc.wait, timeout)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.slow
async def test_connector_sigterm_mid_stream_drains_within_the_deadline(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deadline = 15.0
    with SandboxServer(chaos_sandbox()) as sandbox:
        settings = chaos_settings(
            kafka_bootstrap, sandbox.url, batch={"shutdown_deadline_seconds": deadline}
        )
        port = settings.gateway.port
        public = settings.gateway.public_url
        assert public is not None
        await ensure_topics(settings, create=True)
        n = 600
        await produce(kafka_bootstrap, settings.topics.input, events(n, "term"))
        proc = connector_process(settings, "node", port, public, tmp_path)
        log = tmp_path / "node.log"
        try:

            async def mid_stream() -> bool:
                return await submitted(settings) >= n // 4 and await decided(settings) >= 10

            await wait_until(mid_stream, timeout=120, what="a quarter submitted")
            committed_at_term = await submitted(settings)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await _exit_code(proc, deadline + 30)
            shutdown_s = time.monotonic() - signalled
            first_log = log.read_text()
            decided_at_exit = await decided(settings)
            committed_at_exit = await submitted(settings)
            # A restart finishes the rest.
            proc = connector_process(settings, "node", port, public, tmp_path)
            restarted = time.monotonic()
            await wait_until(
                lambda: settled(settings, n), timeout=240, interval=1, what="lag 0, all decided"
            )
            recovery = time.monotonic() - restarted
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            if await _exit_code(proc, 60) is None:
                proc.kill()
        print(
            f"\nconnector-sigterm: events={n} committed_at_term={committed_at_term} "
            f"committed_at_exit={committed_at_exit} decided_at_exit={decided_at_exit} "
            f"exit_code={code} shutdown_s={shutdown_s:.1f} deadline_s={deadline:.0f} "
            f"restart_to_lag0_s={recovery:.1f} second_exit_code={proc.returncode}"
        )
        figures = await ledger(settings, sandbox.url, recovery_s=recovery)
        print(f"connector-sigterm ledger: {figures.line()}")
        assert code == 0, first_log[-3000:]
        assert shutdown_s <= deadline, f"shutdown took {shutdown_s:.1f}s > {deadline}s"
        lines = [orjson.loads(line) for line in first_log.splitlines() if line.startswith("{")]
        assert any(line.get("msg", "").startswith("submitter stopped") for line in lines)
        assert not any("abandoning" in line.get("msg", "") for line in lines)
        assert committed_at_exit < n, "SIGTERM came after the stream, not during it"
        assert proc.returncode == 0, log.read_text()[-3000:]
        exactly_once(figures, n)


# --- 4: a second connector joins and leaves (rebalances) ----------------------------------


def _instance(settings: Settings, instance: str, port: int) -> Settings:
    data = settings.model_dump()
    data["kafka"]["instance_id"] = instance
    data["gateway"]["port"] = port
    return Settings(**data)


async def test_second_connector_joins_and_leaves_mid_stream(kafka_bootstrap: str) -> None:
    ports = [free_port(), free_port()]
    with (
        SandboxServer(chaos_sandbox(review_delay_max_ms=1500)) as sandbox,
        Balancer([f"http://127.0.0.1:{p}" for p in ports]) as lb,
    ):
        public = f"http://127.0.0.1:{lb.port}"
        settings = chaos_settings(
            kafka_bootstrap,
            sandbox.url,
            topics={"partitions": 6, "internal_partitions": 6},
            gateway={"port": ports[0], "public_url": public},
        )
        a = ConnectorApp(_instance(settings, "node-a", ports[0]), "all")
        b = ConnectorApp(_instance(settings, "node-b", ports[1]), "all")
        waves = (300, 300, 200)
        n = sum(waves)
        b_started = False
        try:
            await a.start()
            await produce(kafka_bootstrap, settings.topics.input, events(waves[0], "grp-1"))
            await wait_until(lambda: at_least(settings, 60), timeout=90, what="A deciding")
            joined_at = await decided(settings)
            await b.start()
            b_started = True

            async def b_assigned() -> bool:
                assert b.submitter is not None and b.submitter.consumer_or_none is not None
                return bool(b.submitter.consumer_or_none.assignment())

            await wait_until(b_assigned, timeout=90, what="B in the group")
            await produce(kafka_bootstrap, settings.topics.input, events(waves[1], "grp-2"))

            async def b_took_part() -> bool:
                assert b.submitter is not None
                return counted(b, "events_consumed") > 0 and await decided(settings) >= 360

            await wait_until(b_took_part, timeout=120, what="B submitting")
            left_at = await decided(settings)
            b_consumed = counted(b, "events_consumed")
            b_aborts, b_commits = transactions(b, "abort"), transactions(b, "commit")
            await b.stop()  # leaves the group cleanly, mid-stream
            b_started = False
            await produce(kafka_bootstrap, settings.topics.input, events(waves[2], "grp-3"))
            left = time.monotonic()
            await wait_until(
                lambda: settled(settings, n), timeout=240, interval=1, what="lag 0, all decided"
            )
            recovery = time.monotonic() - left
            a_alive = roles_alive(a)
            a_aborts, a_commits = transactions(a, "abort"), transactions(a, "commit")
        finally:
            if b_started:
                await b.stop()
            await a.stop()
        print(
            f"\ngroup-join-leave: events={n} decided_when_b_joined={joined_at} "
            f"decided_when_b_left={left_at} b_consumed={b_consumed} "
            f"aborted_transactions a={a_aborts} b={b_aborts} "
            f"committed_transactions a={a_commits} b={b_commits} a_roles_alive={a_alive}"
        )
        figures = await ledger(settings, sandbox.url, recovery_s=recovery)
        print(f"group-join-leave ledger: {figures.line()}")
        exactly_once(figures, n)
        assert b_consumed > 0, "B never took part"
        assert left_at < n, "B left after the stream, not during it"
        assert sum(a_aborts.values()) == 0 and sum(b_aborts.values()) == 0, "failed commits"
        assert all(a_alive.values()), a_alive


# --- 5: creates finishing out of order never move the commit past an unfinished one -------


class CommitSampler:
    """The group's committed offsets and the topic's end offsets, over long-lived clients
    (sampling often without a new connection each time)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self.group = group
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def __aenter__(self) -> CommitSampler:
        await self.admin.start()
        await self.consumer.start()
        self.consumer.assign(self.tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def committed(self) -> dict[int, int]:
        got = await self.admin.list_consumer_group_offsets(self.group, partitions=self.tps)
        return {tp.partition: meta.offset for tp, meta in got.items() if meta.offset >= 0}

    async def end(self) -> dict[int, int]:
        ends = await self.consumer.end_offsets(self.tps)
        return {tp.partition: off for tp, off in ends.items()}


async def test_commit_never_passes_an_uncreated_record_with_out_of_order_creates(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    # Uniform 1..250 ms per create with 16 in flight: later records of a partition often
    # finish before earlier ones. 4% of calls fail (500, no retry): the partition defers
    # from there while later records of the same batch are created already.
    options = SandboxOptions(
        preset_loops=(LOOP,), latency_ms=1, latency_max_ms=250, error_rate=0.04, seed=3
    )
    with SandboxServer(options) as sandbox:
        settings = run_settings(
            kafka_bootstrap,
            sandbox.url,
            batch={"max_records": 30, "linger_ms": 20},
            hitl={"max_in_flight": 16, "max_retries": 0, "circuit_failure_threshold": 1000},
        )
        await ensure_topics(settings, create=True)
        n = 400
        await produce(kafka_bootstrap, settings.topics.input, events(n, "ooo"))
        at = {
            (r.partition, r.offset): orjson.loads(r.value)["id"]
            for r in await read_all(kafka_bootstrap, settings.topics.input)
        }
        assert len(at) == n
        by_partition: dict[int, list[tuple[int, str]]] = collections.defaultdict(list)
        for (partition, offset), event_id in sorted(at.items()):
            by_partition[partition].append((offset, event_id))
        await connector_apps(settings, "submitter")

        samples = 0
        commits_seen: set[tuple[int, int]] = set()
        ahead_of_commit = 0  # samples where a later record was created past the commit
        violations: list[tuple[int, int, str]] = []
        sampler = CommitSampler(
            kafka_bootstrap, settings.kafka.group_id, settings.topics.input, len(by_partition)
        )
        async with sampler:
            end = await sampler.end()

            async def check_once() -> bool:
                nonlocal samples, ahead_of_commit
                # Offsets first, then the sandbox: whatever was created before the commit
                # was read is in the request list read after it.
                committed = await sampler.committed()
                requests = await asyncio.to_thread(sandbox_get, sandbox.url, "/sandbox/requests")
                created = {event_of(r) for r in requests["requests"]}
                samples += 1
                for partition, upto in committed.items():
                    commits_seen.add((partition, upto))
                    records = by_partition[partition]
                    violations.extend(
                        (partition, offset, event_id)
                        for offset, event_id in records
                        if offset < upto and event_id not in created
                    )
                    ahead_of_commit += any(
                        offset >= upto and event_id in created for offset, event_id in records
                    )
                return all(committed.get(p, 0) >= e for p, e in end.items())

            took = await wait_until(check_once, timeout=180, interval=0.02, what="all committed")
        requests = sandbox_get(sandbox.url, "/sandbox/requests")["requests"]
        stats = sandbox_get(sandbox.url, "/sandbox/stats")
        # The sandbox stores a request after its latency: list order = completion order.
        where = {event_id: coord for coord, event_id in at.items()}
        last: dict[int, int] = {}
        overtaken = 0
        for r in requests:
            partition, offset = where[event_of(r)]
            if offset < last.get(partition, -1):
                overtaken += 1
            last[partition] = max(offset, last.get(partition, -1))
        print(
            f"\nout-of-order: events={n} samples={samples} distinct_commits_seen="
            f"{len(commits_seen)} creates_finished_before_an_earlier_one={overtaken} "
            f"failed_creates={stats['errors_injected']} "
            f"idempotent_replays={stats['idempotent_replays']} "
            f"samples_with_creates_past_the_commit={ahead_of_commit} "
            f"commits_past_an_uncreated_record={len(violations)} took_s={took:.1f}"
        )
        figures = await ledger(settings, sandbox.url, recovery_s=took)
        print(f"out-of-order ledger: {figures.line()}")
        assert figures.events_in == n and figures.lost == 0
        assert figures.requests == n and figures.duplicate_requests == 0
        assert overtaken > 0, "no create finished out of order: the scenario did not happen"
        assert len(commits_seen) > 6, "too few commits observed to mean anything"
        assert not violations, f"commit passed records not yet created: {violations[:5]}"


def _scrape(port: int, name: str) -> float:
    """One sample of a metric from a connector's ``/metrics`` (summed over labels)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and (line[len(name)] in " {")
    )


@pytest.mark.slow
async def test_second_connector_joins_then_is_sigkilled_mid_stream(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """B (a process) joins A's group and is SIGKILLed with creates and a transaction open: its
    partitions move back to A after the session timeout; the idempotency key absorbs the
    re-creates and the tombstone check any second decision."""
    ports = [free_port(), free_port()]
    with (
        SandboxServer(
            chaos_sandbox(review_delay_max_ms=1500, latency_ms=20, latency_max_ms=150)
        ) as sandbox,
        Balancer([f"http://127.0.0.1:{p}" for p in ports]) as lb,
    ):
        public = f"http://127.0.0.1:{lb.port}"
        settings = chaos_settings(
            kafka_bootstrap,
            sandbox.url,
            topics={"partitions": 6, "internal_partitions": 6},
            gateway={"port": ports[0], "public_url": public},
            hitl={"max_in_flight": 2},
        )
        a = ConnectorApp(_instance(settings, "node-a", ports[0]), "all")
        waves = (300, 300, 200)
        n = sum(waves)
        proc: subprocess.Popen[bytes] | None = None
        try:
            await a.start()
            await produce(kafka_bootstrap, settings.topics.input, events(waves[0], "kill-1"))
            await wait_until(lambda: at_least(settings, 60), timeout=90, what="A deciding")
            proc = connector_process(settings, "node-b", ports[1], public, tmp_path)
            b_log = tmp_path / "node-b.log"

            async def b_assigned() -> bool:
                lines = b_log.read_text().splitlines() if b_log.exists() else []
                return any(
                    line.startswith("{")
                    and orjson.loads(line).get("msg", "").startswith("submitter assigned ['")
                    for line in lines
                )

            await wait_until(b_assigned, timeout=90, what="B in the group")
            await produce(kafka_bootstrap, settings.topics.input, events(waves[1], "kill-2"))

            async def b_took_part() -> bool:
                try:
                    consumed = await asyncio.to_thread(
                        _scrape, ports[1], "hitl_connector_events_consumed_total"
                    )
                except httpx.TransportError:
                    return False
                return consumed > 0

            await wait_until(b_took_part, timeout=120, what="B submitting")
            b_consumed = await asyncio.to_thread(
                _scrape, ports[1], "hitl_connector_events_consumed_total"
            )
            killed_at = await decided(settings)
            proc.send_signal(signal.SIGKILL)
            await _exit_code(proc, 10)
            await produce(kafka_bootstrap, settings.topics.input, events(waves[2], "kill-3"))
            killed = time.monotonic()
            await wait_until(
                lambda: settled(settings, n), timeout=240, interval=1, what="lag 0, all decided"
            )
            recovery = time.monotonic() - killed
            a_alive = roles_alive(a)
            a_aborts, a_commits = transactions(a, "abort"), transactions(a, "commit")
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                await _exit_code(proc, 10)
            await a.stop()
        stats = sandbox_get(sandbox.url, "/sandbox/stats")
        print(
            f"\ngroup-join-sigkill: events={n} b_consumed={b_consumed:.0f} "
            f"decided_when_b_killed={killed_at} aborted_transactions_a={a_aborts} "
            f"committed_transactions_a={a_commits} idempotent_replays="
            f"{stats['idempotent_replays']} a_roles_alive={a_alive}"
        )
        figures = await ledger(settings, sandbox.url, recovery_s=recovery)
        print(f"group-join-sigkill ledger: {figures.line()}")
        exactly_once(figures, n)
        assert b_consumed > 0, "B never took part"
        assert killed_at < n, "B was killed after the stream, not during it"
        assert sum(a_aborts.values()) == 0, "failed commits on the surviving connector"
        assert all(a_alive.values()), a_alive
