"""The decision path end to end: sandbox reviewer → webhooks/polling → gateway → resolver.

Real broker, real sandbox and gateway over HTTP, the connector in-process with every role.
Each HITL request must end as exactly one decision record joined to its event.
"""

from __future__ import annotations

import collections
import statistics
from datetime import datetime
from typing import Any

import orjson
import pytest

from connector.app import ConnectorApp
from connector.config import Settings
from hitl_sandbox import SandboxOptions, SandboxServer
from tests.integration.harness import (
    WEBHOOK_SECRET,
    counted,
    decision_settings,
    event_of,
    lookup_calls,
    offsets,
    produce,
    read_all,
    sandbox_get,
    source_of,
    wait_until,
    webhook_ack_quantile,
    webhook_outcomes,
)

pytestmark = pytest.mark.kafka

LOOP = "loop-test"
SECRET = WEBHOOK_SECRET


def events(n: int, prefix: str) -> list[tuple[bytes, bytes]]:
    return [
        (f"k-{prefix}-{i}".encode(), orjson.dumps({"id": f"{prefix}-{i}", "content": f"post {i}"}))
        for i in range(n)
    ]


def pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def reviewer(**overrides: Any) -> SandboxOptions:
    base: dict[str, Any] = {
        "preset_loops": (LOOP,),
        "auto_review": True,
        "review_delay_min_ms": 20,
        "review_delay_max_ms": 300,
        "webhook_secret": SECRET,
        "webhook_retry_scale": 0.01,
        "seed": 7,
    }
    base.update(overrides)
    return SandboxOptions(**base)


async def run_and_check(
    bootstrap: str, sandbox: SandboxServer, settings: Settings, app: ConnectorApp, n: int
) -> dict[str, Any]:
    """Produce n events, wait for n decisions, check each is joined right; return figures."""
    items = events(n, settings.kafka.group_id)
    await produce(bootstrap, settings.topics.input, items)

    async def decided() -> bool:
        snap = await offsets(
            bootstrap, f"{settings.kafka.group_id}-resolver", settings.topics.callbacks
        )
        if not snap.done:
            return False
        return len(await read_all(bootstrap, settings.topics.output)) >= n

    took = await wait_until(decided, timeout=240, interval=1.0, what=f"{n} decisions")
    decisions = [orjson.loads(r.value) for r in await read_all(bootstrap, settings.topics.output)]
    keys = {r.key for r in await read_all(bootstrap, settings.topics.output)}
    requests = {r["id"]: r for r in sandbox_get(sandbox.url, "/sandbox/requests")["requests"]}
    by_request = collections.Counter(d["request_id"] for d in decisions)
    stats = sandbox_get(sandbox.url, "/sandbox/stats")
    assert len(requests) == n
    assert set(by_request) == set(requests), "a request without a decision, or a stray one"
    assert max(by_request.values()) == 1, "a request decided twice"
    assert keys == {k for k, _ in items}
    source_offsets = {(d["source"]["partition"], d["source"]["offset"]) for d in decisions}
    assert len(source_offsets) == n
    for d in decisions:
        req = requests[d["request_id"]]
        assert d["event_id"] == event_of(req)
        assert d["status"] == req["status"]
        if d["status"] == "completed":
            assert d["decided_by"] == "human"
            assert d["decision"] in {"approved", "rejected", "needs_changes"}
    e2e = [
        d["latency"]["end_to_end_seconds"] for d in decisions if d["latency"]["end_to_end_seconds"]
    ]
    return {
        "decisions": len(decisions),
        "seconds": took,
        "api_calls": stats["api_calls_total"],
        "api_calls_per_decision": stats["api_calls_total"] / n,
        "duplicate_requests": len(requests) - len({source_of(r) for r in requests.values()}),
        "lookup_calls": lookup_calls(stats),
        "via": collections.Counter(d["via"] for d in decisions),
        "e2e_p50": statistics.median(e2e) if e2e else None,
        "webhooks": stats.get("webhooks"),
        "gateway": webhook_outcomes(app),
    }


@pytest.mark.parametrize(
    ("style", "signature", "mode"),
    [
        ("nested", "sha256", "required"),
        ("flat", "plain", "required"),
        ("seed", "plain", "accept-unsigned"),
        ("data_response", "none", "accept-unsigned"),
        ("flat", "none", "accept-any"),
    ],
)
async def test_every_payload_and_signature_style_gives_one_decision_each(
    kafka_bootstrap: str, connector_apps: Any, style: str, signature: str, mode: str
) -> None:
    options = reviewer(webhook_payload_style=style, webhook_signature=signature)
    with SandboxServer(options) as sandbox:
        settings = decision_settings(kafka_bootstrap, sandbox.url, gateway={"signature": mode})
        app = await connector_apps(settings, "all")
        figures = await run_and_check(kafka_bootstrap, sandbox, settings, app, 300)
        print(f"\ndecision-path[{style}/{signature}/{mode}]: {figures}")
        assert figures["via"]["webhook"] >= 1


async def test_5000_events_with_the_auto_reviewer(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    with SandboxServer(
        reviewer(webhook_payload_style="nested", webhook_signature="sha256")
    ) as sandbox:
        settings = decision_settings(
            kafka_bootstrap, sandbox.url, gateway={"signature": "required"}
        )
        app = await connector_apps(settings, "all")
        figures = await run_and_check(kafka_bootstrap, sandbox, settings, app, 5000)
        # Webhook received by the gateway → decision record committed (decided_at).
        callbacks = [
            orjson.loads(r.value)
            for r in await read_all(kafka_bootstrap, settings.topics.callbacks)
        ]
        received = {c["request_id"]: c["received_ts"] for c in callbacks}
        outputs = [
            orjson.loads(r.value) for r in await read_all(kafka_bootstrap, settings.topics.output)
        ]
        to_output = sorted(
            datetime.fromisoformat(d["decided_at"].replace("Z", "+00:00")).timestamp()
            - received[d["request_id"]]
            for d in outputs
        )
        rate = 5000 / figures["seconds"]
        print(
            f"\ndecision-path[5000]: {figures} webhook_rate={rate:.0f}/s "
            f"gateway_ack_s p50<={webhook_ack_quantile(app, 0.5)} "
            f"p99<={webhook_ack_quantile(app, 0.99)} "
            f"webhook_to_output_ms p50={pct(to_output, 0.5) * 1000:.0f} "
            f"p99={pct(to_output, 0.99) * 1000:.0f}"
        )
        assert figures["api_calls_per_decision"] <= 1.05


async def test_dropped_webhooks_are_recovered_by_polling(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    with SandboxServer(reviewer(webhook_drop_share=0.2)) as sandbox:
        settings = decision_settings(kafka_bootstrap, sandbox.url)
        app = await connector_apps(settings, "all")
        figures = await run_and_check(kafka_bootstrap, sandbox, settings, app, 500)
        print(f"\ndecision-path[20% dropped]: {figures}")
        assert figures["via"]["poll"] >= 50
        assert figures["api_calls_per_decision"] <= 1.25


async def test_duplicated_and_reordered_webhooks_still_one_decision(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    options = reviewer(webhook_duplicate_share=0.2, webhook_reorder_share=0.2, claim_events=True)
    with SandboxServer(options) as sandbox:
        settings = decision_settings(kafka_bootstrap, sandbox.url)
        app = await connector_apps(settings, "all")
        figures = await run_and_check(kafka_bootstrap, sandbox, settings, app, 500)
        print(f"\ndecision-path[20% duplicated+reordered]: {figures}")
        assert counted(app, "callbacks", result="duplicate") > 0


async def test_timeout_gives_the_default_response(
    kafka_bootstrap: str, connector_apps: Any
) -> None:
    options = reviewer(auto_review=False, timeout_scale=0.002)
    with SandboxServer(options) as sandbox:
        settings = decision_settings(
            kafka_bootstrap, sandbox.url, review={"timeout_seconds": {"medium": 900}}
        )
        await connector_apps(settings, "all")
        await produce(kafka_bootstrap, settings.topics.input, events(5, "to"))

        async def five() -> bool:
            return len(await read_all(kafka_bootstrap, settings.topics.output)) >= 5

        await wait_until(five, timeout=60, what="timeout decisions")
        decisions = [
            orjson.loads(r.value) for r in await read_all(kafka_bootstrap, settings.topics.output)
        ]
        assert len(decisions) == 5
        for d in decisions:
            assert (d["status"], d["decided_by"], d["decision"]) == (
                "timeout",
                "timeout_default",
                "rejected",
            )
