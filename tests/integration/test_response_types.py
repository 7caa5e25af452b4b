"""Every documented response type end to end: the create passes the sandbox's documented
validation (required config per type), and each answer, raw and structured, becomes the
right ``response`` / ``decision``.

Real broker, real sandbox (auto-reviewer) over HTTP, every role of the connector in-process.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from hitl_sandbox import SandboxServer
from hitl_sandbox.answers import parse_answer
from tests.integration.harness import (
    decision_settings,
    produce,
    read_all,
    sandbox_get,
    sandbox_put_config,
    wait_until,
)
from tests.integration.test_decision_path import reviewer

pytestmark = pytest.mark.kafka

# response_type -> (review settings, expected decision for a canonical answer)
TYPES: dict[str, dict[str, Any]] = {
    "single_select": {"response_type": "single_select", "default_response": "rejected"},
    "multi_select": {
        "response_type": "multi_select",
        "options": [
            {"value": "spam", "label": "Spam"},
            {"value": "abuse", "label": "Abuse"},
            {"value": "ok", "label": "Fine"},
        ],
        "default_response": [],
    },
    "rating": {"response_type": "rating", "default_response": 1},
    "number": {
        "response_type": "number",
        "response_config": {"min_value": 0, "max_value": 500, "decimal_places": 2},
        "default_response": 0,
    },
    "text": {"response_type": "text", "default_response": "no answer"},
    "boolean": {"response_type": "boolean", "default_response": False},
    "editable_text": {"response_type": "editable_text", "default_response": ""},
}


def expected(response_type: str, config: dict[str, Any], response_data: Any) -> Any:
    answer = parse_answer(response_type, config, response_data)
    return float(answer) if response_type in ("rating", "number") else answer


@pytest.mark.parametrize("response_type", list(TYPES))
async def test_each_response_type_raw_and_structured(
    kafka_bootstrap: str, connector_apps: Any, response_type: str
) -> None:
    with SandboxServer(reviewer(response_data_style="raw")) as sandbox:
        settings = decision_settings(kafka_bootstrap, sandbox.url, review=TYPES[response_type])
        await connector_apps(settings, "all")
        run = settings.kafka.group_id
        total = 0
        for style in ("raw", "structured"):
            await asyncio.to_thread(sandbox_put_config, sandbox.url, response_data_style=style)
            items = [
                (
                    f"{run}-{style}-{i}".encode(),
                    orjson.dumps({"id": f"{style}-{i}", "content": f"post {i}"}),
                )
                for i in range(4)
            ]
            await produce(kafka_bootstrap, settings.topics.input, items)
            total += len(items)

            async def decided(n: int = total) -> bool:
                return len(await read_all(kafka_bootstrap, settings.topics.output)) >= n

            await wait_until(decided, timeout=90, what=f"{total} {response_type} decisions")
        records = await asyncio.to_thread(sandbox_get, sandbox.url, "/sandbox/requests")
        requests = {r["id"]: r for r in records["requests"]}
        stats = await asyncio.to_thread(sandbox_get, sandbox.url, "/sandbox/stats")
        decisions = [
            orjson.loads(r.value) for r in await read_all(kafka_bootstrap, settings.topics.output)
        ]
    assert len(requests) == total == len(decisions), stats
    styles = set()
    for d in decisions:
        req = requests[d["request_id"]]
        config = req["response_config"]
        assert req["status"] == d["status"] == "completed"
        want = expected(response_type, config, req["response_data"])
        styles.add(type(req["response_data"]).__name__)
        assert d["response"] == want, (req["response_data"], d["response"])
        if response_type == "single_select":
            assert d["decision"] == want
        if response_type == "editable_text":
            assert config["draft_text"].startswith("post ")
    print(f"\nresponse type {response_type}: {len(decisions)} decisions, response_data {styles}")
    # Both styles were seen where they differ (text answers are plain strings in both).
    if response_type != "text":
        assert "dict" in styles and len(styles) == 2
