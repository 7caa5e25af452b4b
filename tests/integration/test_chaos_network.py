"""Network faults on the connector's two links, through the real TCP fault proxy
(``tests/faultproxy.py``): connector ↔ HITL (the sandbox) and connector ↔ broker (the session
broker's ``PROXIED`` listener). Latency, then a blackhole (longer than the timeouts), then
resets, then healed: nothing lost, no duplicate request, no crash, back to no lag.

Everything is real: the broker, the sandbox over HTTP, the proxy's sockets. The test's own
readers and producers use the broker's direct listener, so they see the truth while the
connector's link is broken.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from connector.config import Settings
from hitl_sandbox import SandboxOptions, SandboxServer
from tests.faultproxy import FaultProxy
from tests.integration.harness import (
    lookup_calls,
    offsets,
    produce,
    run_settings,
    sandbox_get,
    wait_until,
)
from tests.integration.ledger import ledger
from tests.integration.test_chaos_hitl import (
    RSS_GROWTH_LIMIT,
    Watch,
    all_done,
    attempts_by_key,
    events,
    hitl_settings,
    sandbox_port,
)

pytestmark = [pytest.mark.kafka, pytest.mark.chaos, pytest.mark.slow]

LOOP = "loop-test"


def _host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(f"//{address}")
    assert parts.hostname is not None and parts.port is not None, address
    return parts.hostname, parts.port


def crashed(app: Any) -> list[str]:
    """Role tasks of ``app`` that ended (they only end on stop or failure)."""
    return [name for name, task in app._tasks.items() if task.done()]


async def test_hitl_link_latency_blackhole_reset(kafka_bootstrap: str, connector_apps: Any) -> None:
    with SandboxServer(SandboxOptions(preset_loops=(LOOP,))) as sandbox:
        async with FaultProxy("127.0.0.1", sandbox_port(sandbox.url), capture=True) as proxy:
            settings = hitl_settings(kafka_bootstrap, f"http://{proxy.address}")
            limit = settings.hitl.max_in_flight
            read_timeout = settings.hitl.read_timeout_seconds
            app = await connector_apps(settings, "submitter")
            phases: dict[str, float] = {}
            async with Watch(app, settings, sandbox.url) as watch:
                await produce(kafka_bootstrap, settings.topics.input, events(40, "pass"))
                await wait_until(lambda: all_done(settings), timeout=60, what="warm-up")

                await proxy.latency(300)
                await produce(kafka_bootstrap, settings.topics.input, events(40, "slow"))
                phases["latency"] = await wait_until(
                    lambda: all_done(settings), timeout=90, what="done under latency"
                )

                await proxy.blackhole()
                hole_start = time.time()
                await produce(kafka_bootstrap, settings.topics.input, events(40, "hole"))
                await asyncio.sleep(8)  # the fault's duration, not an assertion
                hole_end = time.time()
                await proxy.heal()
                phases["blackhole_recovery"] = await wait_until(
                    lambda: all_done(settings), timeout=120, what="recovery after blackhole"
                )

                # Resets while creates are on the wire (300 ms each way): every open
                # connection is cut with an RST, and every new one for 4 s.
                await proxy.latency(300)
                await produce(kafka_bootstrap, settings.topics.input, events(40, "reset"))
                await asyncio.sleep(1.0)
                await proxy.reset()
                await asyncio.sleep(4)  # the fault's duration
                await proxy.heal()
                healed = time.monotonic()
                await wait_until(lambda: all_done(settings), timeout=120, what="recovery")
                recovered = time.monotonic() - healed
            attempts = attempts_by_key(proxy)
            in_hole = {
                key: [t for t in times if hole_start <= t < hole_end]
                for key, times in attempts.items()
            }
            retried_in_hole = [k for k, ts in in_hole.items() if len(ts) > 1]
            gaps = [b - a for k in retried_in_hole for a, b in itertools.pairwise(in_hole[k])]
            stats = sandbox_get(sandbox.url, "/sandbox/stats")
            print(
                f"\nhitl link: latency_phase={phases['latency']:.1f}s "
                f"blackhole_recovery={phases['blackhole_recovery']:.1f}s "
                f"attempts_in_blackhole={sum(map(len, in_hole.values()))} "
                f"keys_retried_in_blackhole={len(retried_in_hole)} "
                f"min_gap_same_key={min(gaps, default=float('nan')):.2f}s/"
                f"read_timeout={read_timeout}s "
                f"max_attempts_per_key={max(map(len, attempts.values()))} "
                f"dropped_bytes={proxy.stats.dropped_bytes} "
                f"reset_connections={proxy.stats.reset_connections} "
                f"max_in_flight={watch.max_in_flight}/{limit} "
                f"proxy_peak_connections={proxy.stats.peak_active} "
                f"rss_growth={watch.rss_growth / 2**20:.1f}MiB "
                f"idempotent_replays={stats['idempotent_replays']} "
                f"extra_api_calls={lookup_calls(stats)} "
                f"commit_samples={len(watch.samples)} recovery={recovered:.1f}s"
            )
            figures = await ledger(settings, sandbox.url, recovery_s=recovered)
            print(f"hitl link ledger: {figures.line()}")
            n = 160
            assert figures.events_in == n and figures.lost == 0
            assert figures.duplicate_requests == 0 and figures.requests == n
            assert not crashed(app)
            assert proxy.stats.dropped_bytes > 0, "the blackhole saw no traffic"
            assert proxy.stats.reset_connections > 0, "no connection was reset"
            # A create whose answer the blackhole swallowed may exist: it is not sent again
            # until a lookup (after the heal) has not found it.
            assert in_hole and sum(map(len, in_hole.values())) > 0, "no create met the blackhole"
            assert retried_in_hole == [], "a create was sent again while its outcome was unknown"
            assert gaps == [] and read_timeout > 0
            assert stats["idempotent_replays"] == 0 and lookup_calls(stats) >= 1
            assert watch.max_in_flight <= limit
            assert watch.rss_growth < RSS_GROWTH_LIMIT
            assert await watch.commits_past_a_gap() == []


def _through(settings: Settings, bootstrap: str) -> Settings:
    """The same run (topics, group) seen through another bootstrap address."""
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": bootstrap})
    return settings.model_copy(update={"kafka": kafka})


async def test_broker_link_latency_blackhole_reset(
    kafka_bootstrap: str, kafka_proxied_listener: Any, connector_apps: Any
) -> None:
    bound_host, bound_port = _host_port(kafka_proxied_listener.bound)
    adv_host, adv_port = _host_port(kafka_proxied_listener.advertised)
    with SandboxServer(SandboxOptions(preset_loops=(LOOP,))) as sandbox:
        async with FaultProxy(bound_host, bound_port, host=adv_host, port=adv_port) as proxy:
            proxied = run_settings(
                kafka_proxied_listener.advertised,
                sandbox.url,
                kafka={
                    "request_timeout_ms": 5_000,
                    "session_timeout_ms": 10_000,
                    "transaction_timeout_ms": 15_000,
                },
                batch={"max_batch_seconds": 4.0, "linger_ms": 20},
            )
            direct = _through(proxied, kafka_bootstrap)
            topic = direct.topics.input
            app = await connector_apps(proxied, "submitter")
            phases: dict[str, float] = {}
            await produce(kafka_bootstrap, topic, events(50, "pass"))
            phases["pass"] = await wait_until(lambda: all_done(direct), timeout=60, what="warm")

            await proxy.latency(300)
            await produce(kafka_bootstrap, topic, events(50, "slow"))
            phases["latency"] = await wait_until(
                lambda: all_done(direct), timeout=120, what="done under latency"
            )

            await proxy.blackhole()
            await produce(kafka_bootstrap, topic, events(50, "hole"))
            # Longer than request (5 s) and session (10 s) timeouts: the group member is
            # expired and every in-flight request times out.
            await asyncio.sleep(15)
            committed_in_hole = await offsets(kafka_bootstrap, direct.kafka.group_id, topic)

            await proxy.reset()
            await produce(kafka_bootstrap, topic, events(50, "reset"))
            await asyncio.sleep(5)

            await proxy.heal()
            healed = time.monotonic()
            await wait_until(lambda: all_done(direct), timeout=180, what="recovery")
            recovered = time.monotonic() - healed
            snap = await offsets(kafka_bootstrap, direct.kafka.group_id, topic)
            lag = snap.total_end - snap.total_committed
            stats = sandbox_get(sandbox.url, "/sandbox/stats")
            print(
                f"\nbroker link: warm={phases['pass']:.1f}s latency_phase="
                f"{phases['latency']:.1f}s committed_at_blackhole_end="
                f"{committed_in_hole.total_committed}/{committed_in_hole.total_end} "
                f"dropped_bytes={proxy.stats.dropped_bytes} "
                f"reset_connections={proxy.stats.reset_connections} "
                f"connections={proxy.stats.accepted} lag_after={lag} "
                f"idempotent_replays={stats['idempotent_replays']} recovery={recovered:.1f}s"
            )
            figures = await ledger(direct, sandbox.url, recovery_s=recovered)
            print(f"broker link ledger: {figures.line()}")
            n = 200
            assert figures.events_in == n and figures.lost == 0
            assert figures.duplicate_requests == 0 and figures.requests == n
            assert not crashed(app), "a role crashed"
            assert lag == 0
            assert proxy.stats.dropped_bytes > 0 and proxy.stats.reset_connections > 0

            # Shutting down while the broker is unreachable: the stop ends, within its
            # deadline, without an exception (nothing is left to commit: lag is 0).
            await proxy.reset()
            stopping = time.monotonic()
            await app.stop()
            stop_took = time.monotonic() - stopping
            print(f"stop with the broker link down: {stop_took:.1f}s")
            assert stop_took < 2 * proxied.batch.shutdown_deadline_seconds
