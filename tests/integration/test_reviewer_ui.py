"""The sandbox reviewer page in a real headless Chromium (Debian's ``chromium``, driven by
Playwright's async API so the connector keeps running in the test's event loop).

End to end: events → connector → sandbox requests → the page → a click → webhook → gateway →
resolver → the decision record on the output topic. A screenshot is kept in
``test-artifacts/reviewer-ui.png``. Skipped only when ``/usr/bin/chromium`` is absent
(``make test`` installs it with ``scripts/ensure_chromium.sh``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hitl_sandbox import SandboxOptions, SandboxServer
from tests.integration.harness import API_KEY, decision_settings, produce, read_all, wait_until
from tests.integration.test_decision_path import LOOP, SECRET

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} missing (run scripts/ensure_chromium.sh)"
)


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    """A fresh page in headless Chromium; page errors fail the test."""
    from playwright.async_api import async_playwright

    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = await browser.new_page(viewport={"width": 1100, "height": 900})
            tab.set_default_timeout(15_000)
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            yield tab
        finally:
            await browser.close()
    assert not errors, errors


async def requests_by_event(url: str, status: str | None = None) -> dict[str, Any]:
    params = {"status": status} if status else {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        body = (await client.get("/sandbox/requests", params=params)).json()
    return {r["context"]["connector"]["event_id"]: r for r in body["requests"]}


def option(value: Any) -> str:
    """Selector of an answer button by the value it sends."""
    return f"button[data-value={json.dumps(json.dumps(value))}]"


@pytest.mark.kafka
async def test_answer_on_the_page_becomes_a_decision_record(
    kafka_bootstrap: str, connector_apps: Any, page: Any
) -> None:
    options = SandboxOptions(preset_loops=(LOOP,), webhook_secret=SECRET, webhook_retry_scale=0.01)
    with SandboxServer(options) as sandbox:
        settings = decision_settings(kafka_bootstrap, sandbox.url)
        await connector_apps(settings, "all")
        events = [
            {
                "id": "ui-1",
                "content": "Is this <b>safe</b>?",
                "priority": "high",
                "ai_analysis": {"risk_score": 0.42, "confidence": 0.6, "flags": ["borderline"]},
                "metadata": {"source": "forum", "author": {"id": "u-17"}},
            },
            {
                "id": "ui-2",
                "content": "<script>window.pwned = 1</script>Second post",
                "priority": "low",
                "metadata": {"source": "chat"},
            },
        ]
        await produce(
            kafka_bootstrap,
            settings.topics.input,
            [(e["id"].encode(), orjson.dumps(e)) for e in events],
        )

        async def both_pending() -> bool:
            return {"ui-1", "ui-2"} <= set(await requests_by_event(sandbox.url, "pending"))

        await wait_until(both_pending, timeout=60, what="two pending requests")

        await page.goto(f"{sandbox.url}/sandbox/ui")
        card1 = page.locator('article[data-event-id="ui-1"]')
        card2 = page.locator('article[data-event-id="ui-2"]')
        await card1.wait_for()
        await card2.wait_for()
        # Text is shown as text: the markup is visible, not parsed.
        assert await card1.locator(".text").text_content() == "Is this <b>safe</b>?"
        assert await card1.locator(".text b").count() == 0
        assert await card2.locator(".text").text_content() == (
            "<script>window.pwned = 1</script>Second post"
        )
        assert await page.evaluate("window.pwned") is None
        # Priority, loop and context.
        assert (await card1.locator(".badge").first.text_content()) == "high"
        head = await card1.locator(".head").inner_text()
        assert f"loop {LOOP}" in head and "age " in head
        context = await card1.locator(".ctx").inner_text()
        for text in (
            "AI analysis",
            "risk_score",
            "0.42",
            "borderline",
            "Metadata",
            "author.id",
            "u-17",
            "event_id",
        ):
            assert text in context, text
        # High priority first; buttons per option, accessible.
        assert await page.locator("article.card").first.get_attribute("data-event-id") == "ui-1"
        labels = await card1.locator(".actions button").all_text_contents()
        assert labels == ["Approve", "Reject", "Needs changes"]
        approve = card1.locator(option("approved"))
        assert (await approve.get_attribute("aria-label") or "").startswith("Approve")

        await approve.click()
        await page.locator("#flash", has_text="Answered").wait_for()
        assert "Answered: Approve" in await card1.inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "reviewer-ui.png"), full_page=True)

        async def decided() -> bool:
            records = await read_all(kafka_bootstrap, settings.topics.output)
            return any(orjson.loads(r.value)["event_id"] == "ui-1" for r in records)

        await wait_until(decided, timeout=60, what="the decision record of ui-1")
        decisions = [
            orjson.loads(r.value) for r in await read_all(kafka_bootstrap, settings.topics.output)
        ]
        assert len(decisions) == 1
        (decision,) = decisions
        assert decision["event_id"] == "ui-1"
        assert decision["decision"] == "approved"
        assert decision["decided_by"] == "human"
        # ui-2 is untouched, and the answered card leaves the page.
        assert set(await requests_by_event(sandbox.url, "pending")) == {"ui-2"}
        await card1.wait_for(state="detached")
        assert await card2.is_visible()


async def create(
    client: httpx.AsyncClient, text: str, rtype: str, config: Any, default: Any
) -> str:
    """Create a request straight through the sandbox API; returns its id."""
    body = {
        "processing_type": "deferred",
        "type": "markdown",
        "priority": "medium",
        "request_text": text,
        "response_type": rtype,
        "response_config": config,
        "default_response": default,
        "platform": "api",
        "context": {"connector": {"event_id": rtype}},
    }
    response = await client.post(f"/v1/api/loops/{LOOP}/requests", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["data"]["request_id"])


async def test_every_response_type_can_be_answered_on_the_page(page: Any) -> None:
    """No broker: the page's controls per response type, checked against the sandbox."""
    with SandboxServer(SandboxOptions(preset_loops=(LOOP,))) as sandbox:
        await page.goto(f"{sandbox.url}/sandbox/ui")
        await page.get_by_text("No pending requests").wait_for()
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=sandbox.url, headers=headers, timeout=10) as client:
            ids = {
                "boolean": await create(
                    client,
                    "Safe?",
                    "boolean",
                    {"true_label": "Safe", "false_label": "Unsafe"},
                    False,
                ),
                "rating": await create(
                    client, "Rate", "rating", {"scale_min": 1, "scale_max": 5}, 3
                ),
                "number": await create(
                    client, "Count", "number", {"min_value": 0, "max_value": 100}, 0
                ),
                "text": await create(client, "Why?", "text", {"max_length": 200}, "n/a"),
                "multi_select": await create(
                    client, "Tags", "multi_select", {"options": ["spam", "nsfw", "ok"]}, []
                ),
            }
            cards = {k: page.locator(f'article[data-request-id="{v}"]') for k, v in ids.items()}
            for card in cards.values():
                await card.wait_for()  # picked up by polling

            await cards["boolean"].locator(option(False)).click()
            await cards["rating"].locator("input").fill("4")
            await cards["rating"].locator("button").click()
            await cards["number"].locator("input").fill("42")
            await cards["number"].locator("button").click()
            await cards["text"].locator("textarea").fill("Looks <fine>")
            await cards["text"].locator("button").click()
            await cards["multi_select"].get_by_label("spam").check()
            await cards["multi_select"].get_by_label("ok").check()
            await cards["multi_select"].locator("button").click()
            for card in cards.values():
                await card.wait_for(state="detached")
            await page.get_by_text("No pending requests").wait_for()

            answers = {}
            for kind, request_id in ids.items():
                record = (await client.get(f"/sandbox/requests/{request_id}")).json()["request"]
                assert record["status"] == "completed", kind
                answers[kind] = record["response_data"]
        assert answers == {
            "boolean": False,
            "rating": 4,
            "number": 42,
            "text": "Looks <fine>",
            "multi_select": ["spam", "ok"],
        }
