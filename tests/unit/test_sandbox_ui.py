"""The sandbox reviewer page (``GET /sandbox/ui``): served as HTML, self-contained, and never
puts request data into the page as HTML. The real browser run is in
``tests/integration/test_reviewer_ui.py``."""

from __future__ import annotations

import re

import httpx

from hitl_sandbox import SandboxOptions, create_app
from hitl_sandbox.ui import PAGE

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


def script() -> str:
    match = re.search(r"<script>(.*)</script>", PAGE, re.S)
    assert match is not None
    return match.group(1)


def test_the_page_loads_nothing_from_elsewhere() -> None:
    assert not re.search(r"(?i)\b(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", PAGE)  # no URLs at all
    assert "@import" not in PAGE
    assert "url(" not in PAGE
    # src/href only inside the script (request images) or as a data: URL (the blank favicon).
    static = PAGE.replace(script(), "")
    for attr in re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", static):
        assert attr.startswith("data:"), attr
    # Every fetch goes to this origin's /sandbox/ API.
    targets = re.findall(r"fetch\(\s*([^,)]+)", script())
    assert targets
    assert all(t.strip().startswith('"/sandbox/') for t in targets), targets


def test_the_render_path_only_uses_text_nodes_and_attributes() -> None:
    code = script()
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "DOMParser",
        "createContextualFragment",
        "srcdoc",
    ):
        assert sink not in code, sink
    assert "textContent" in code
    # Every card attribute goes through setAttribute (values are escaped by the DOM).
    assert "setAttribute(k," in code


async def test_route_serves_the_page_without_request_data() -> None:
    app = create_app(SandboxOptions(preset_loops=("loop-ui",)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        created = await client.post(
            "/v1/api/loops/loop-ui/requests",
            headers={"Authorization": "Bearer k"},
            json={
                "processing_type": "deferred",
                "type": "markdown",
                "priority": "high",
                "request_text": HOSTILE,
                "response_type": "single_select",
                "response_config": {"options": [{"value": "approved", "label": "Approve"}]},
                "default_response": "approved",
                "platform": "api",
            },
        )
        assert created.status_code == 201
        page = await client.get("/sandbox/ui")
        listed = await client.get("/sandbox/requests", params={"status": "pending"})
        wrong_method = await client.post("/sandbox/ui")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert page.text == PAGE
    assert "alert(" not in page.text  # data arrives as JSON, rendered with textContent
    assert listed.json()["requests"][0]["request_text"] == HOSTILE  # what the page fetches
    assert wrong_method.status_code == 405
