"""Lost webhooks are found in minutes: 20 % of webhooks dropped, the default budget of 100
calls an hour, realistic review delays — with time scaled down by ``SCALE`` (the sandbox's rate
window, review delays and the connector's reconciler timings all divided by it).

Real broker, real sandbox (auto-reviewer, webhook drops) over HTTP, every role of the
connector in-process. Measures, per human decision, the time from the reviewer's answer
(the sandbox's ``response_at``) to the decision record (``decided_at``), and the API calls
per decision (every authenticated call the sandbox counted). Targets: p99 ≤ 10 min scaled,
calls per decision ≤ 1.25.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from datetime import datetime
from typing import Any

import orjson
import pytest

from hitl_sandbox import SandboxOptions, SandboxServer
from tests.integration.harness import (
    decision_settings,
    produce,
    read_all,
    sandbox_get,
    wait_until,
)

pytestmark = pytest.mark.kafka

LOOP = "loop-lost"
SECRET = "whsec-lost"
SCALE = 60.0  # one hour of the scenario takes 60 s (at x120 one real second of Kafka and
# scheduling overhead counted two scenario minutes; one CI run in three went over 600 s)
WINDOW = int(3600 / SCALE)
RATE_PER_HOUR = 70  # events an hour: most of the 100-call budget (creates + polls)
HOURS = 2.0
# Realistic human review: 1 to 30 minutes after the request is created.
REVIEW_MIN_S, REVIEW_MAX_S = 60.0, 1800.0


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def test_lost_webhooks_reach_the_output_within_ten_minutes_scaled(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    options = SandboxOptions(
        preset_loops=(LOOP,),
        auto_review=True,
        review_delay_min_ms=REVIEW_MIN_S / SCALE * 1000,
        review_delay_max_ms=REVIEW_MAX_S / SCALE * 1000,
        webhook_secret=SECRET,
        webhook_drop_share=0.2,
        webhook_retry_scale=1 / SCALE,
        rate_limit_calls=100,
        rate_limit_window_seconds=WINDOW,
        timeout_scale=1 / SCALE,
        seed=20,
    )
    with SandboxServer(options) as sandbox:
        settings = decision_settings(
            kafka_bootstrap,
            sandbox.url,
            hitl={"rate_limit_calls": 100, "rate_limit_window_seconds": WINDOW},
            gateway={"secrets": [SECRET]},
            loops={"default": LOOP},
            resolver={
                "reconcile_interval_seconds": 60 / SCALE,
                "reconcile_grace_seconds": 120 / SCALE,
                "reconcile_repoll_seconds": 900 / SCALE,
                "reconcile_max_wait_seconds": None,
            },
        )
        await connector_apps(settings, "all")
        n = int(RATE_PER_HOUR * HOURS)
        gap = 3600 / SCALE / RATE_PER_HOUR
        run = settings.kafka.group_id
        started = time.monotonic()
        for i in range(n):
            event = {"id": f"{run}-{i}", "content": f"post {i}"}
            await produce(
                kafka_bootstrap, settings.topics.input, [(f"k{i}".encode(), orjson.dumps(event))]
            )
            await asyncio.sleep(max(0.0, started + (i + 1) * gap - time.monotonic()))

        async def decided() -> bool:
            return len(await read_all(kafka_bootstrap, settings.topics.output)) >= n

        # On a timeout the assertions below say what is missing.
        with contextlib.suppress(AssertionError):
            await wait_until(decided, timeout=3600 / SCALE * 3, interval=1.0, what="decisions")
        decisions = [
            orjson.loads(r.value) for r in await read_all(kafka_bootstrap, settings.topics.output)
        ]
        listed = await asyncio.to_thread(sandbox_get, sandbox.url, "/sandbox/requests")
        stats = await asyncio.to_thread(sandbox_get, sandbox.url, "/sandbox/stats")
    requests = {r["id"]: r for r in listed["requests"]}
    by_request = collections.Counter(d["request_id"] for d in decisions)
    statuses = collections.Counter(r["status"] for r in requests.values())
    assert len(by_request) == n and max(by_request.values()) == 1, (
        len(by_request),
        len(requests),
        dict(statuses),
        collections.Counter(d["via"] for d in decisions),
        stats,
    )
    delays: list[float] = []
    polled: list[float] = []
    for d in decisions:
        req = requests[d["request_id"]]
        assert req["status"] == "completed", req["status"]
        delay = (_epoch(d["decided_at"]) - _epoch(req["response_at"])) * SCALE
        delays.append(delay)
        if d["via"] == "poll":
            polled.append(delay)
    calls = stats["api_calls_total"] / n
    via = collections.Counter(d["via"] for d in decisions)
    p99 = pct(delays, 0.99)
    print(
        f"\nlost webhooks (x{SCALE:.0f} time, {n} events at {RATE_PER_HOUR}/h, review "
        f"{REVIEW_MIN_S / 60:.0f}-{REVIEW_MAX_S / 60:.0f} min, 20% dropped): via {dict(via)}; "
        f"answer->output p50 {pct(delays, 0.5):.0f}s p99 {p99:.0f}s max {max(delays):.0f}s "
        f"(scenario seconds); polled p50 {pct(polled, 0.5) if polled else 0:.0f}s "
        f"p95 {pct(polled, 0.95) if polled else 0:.0f}s; calls/decision {calls:.3f}; "
        f"api calls {stats['api_calls_total']}; 429s {stats.get('rate_limited_total', 'n/a')}"
    )
    assert via["poll"] >= 1, "some webhooks were dropped: the sweep must have found them"
    assert p99 <= 600, f"p99 answer->output {p99:.0f} s (scenario time) is over 10 minutes"
    assert calls <= 1.25
