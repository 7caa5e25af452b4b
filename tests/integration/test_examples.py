"""The Flask and Django examples in docs/examples/, run as users run them.

Flask through its test client and over a real HTTP server (werkzeug, plus a full round trip
with the sandbox signing its own deliveries); Django through its test client.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from werkzeug.serving import make_server

from connector import Answer, NormalizedCallback, sign
from connector.config import HitlSettings
from hitl_sandbox import SandboxOptions, SandboxServer
from tests.integration.harness import API_KEY

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
SECRET = "whsec-current"
OLD_SECRET = "whsec-previous"

# P1 (nested, the API reference's shape) and P4 (the seed's shape).
NESTED = {
    "event": "request.completed",
    "timestamp": "2026-11-27T10:04:05Z",
    "data": {
        "request": {
            "id": "65f1aa",
            "status": "completed",
            "response_data": "Approve",
            "response_by": "65f1rev",
            "response_time_seconds": 245.5,
        },
        "reviewer": {"user_id": "65f1rev", "email": "rev@example.com"},
    },
}
SEED = {
    "event": "request.completed",
    "data": {"request_id": "req_abc123", "decision": "rejected", "reviewer_id": "rev_1"},
}


def _load(name: str) -> ModuleType:
    """Import an example file as a module (registered, so Django can find its urlconf)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _signed(
    payload: Any, secret: str = SECRET, *, plain: bool = False
) -> tuple[bytes, dict[str, str]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    if plain:  # S2, the seed's header
        return body, {"X-HITL-Signature": sign(body, secret), "Content-Type": "application/json"}
    return body, {
        "X-HITL-Signature-256": f"sha256={sign(body, secret)}",
        "Content-Type": "application/json",
    }


Seen = list[tuple[NormalizedCallback, Answer | None]]


@pytest.fixture
def flask_app() -> Iterator[tuple[Any, Seen]]:
    seen: Seen = []
    app = _load("flask_app").create_app(
        [SECRET, OLD_SECRET], lambda cb, ans: seen.append((cb, ans))
    )
    yield app, seen


def test_flask_signed_delivery_is_normalized_and_matched_to_an_option(
    flask_app: tuple[Any, Seen],
) -> None:
    app, seen = flask_app
    client = app.test_client()
    body, headers = _signed(NESTED)
    response = client.post("/webhooks/hitl", data=body, headers=headers)
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "request_id": "65f1aa",
        "event": "request.completed",
        "request_status": "completed",
        "decision": "approved",
        "decided_by": "human",
        "reviewer": {"id": "65f1rev", "email": "rev@example.com"},
    }
    ((callback, answer),) = seen
    assert callback.response_time_seconds == 245.5 and answer is not None
    assert answer.raw_response == "Approve"

    # The seed's shape and header, signed with the previous secret (rotation).
    body, headers = _signed(SEED, OLD_SECRET, plain=True)
    response = client.post("/webhooks/hitl", data=body, headers=headers)
    assert response.status_code == 200
    assert response.get_json()["decision"] == "rejected"


def test_flask_rejects_forged_missing_and_garbage(flask_app: tuple[Any, Seen]) -> None:
    app, seen = flask_app
    client = app.test_client()
    body, headers = _signed(NESTED, "not-the-secret")
    assert client.post("/webhooks/hitl", data=body, headers=headers).status_code == 401
    assert client.post("/webhooks/hitl", data=json.dumps(NESTED)).status_code == 401
    tampered = json.dumps(NESTED).replace("Approve", "Reject").encode()
    _, good_headers = _signed(NESTED)
    assert client.post("/webhooks/hitl", data=tampered, headers=good_headers).status_code == 401
    for garbage in (b"{not json", b"\xff\xfe", b'{"event": "request.completed"}', b"[1, 2]"):
        body, headers = _signed(garbage)
        response = client.post("/webhooks/hitl", data=body, headers=headers)
        assert response.status_code == 400, garbage
        assert response.get_json()["error"]
    body, headers = _signed({"event": "loop.member_joined", "data": {"loop": {"id": "l"}}})
    response = client.post("/webhooks/hitl", data=body, headers=headers)
    assert response.status_code == 200 and response.get_json()["status"] == "ignored"
    assert seen == []


@pytest.fixture
def flask_server(flask_app: tuple[Any, Seen]) -> Iterator[tuple[str, Seen]]:
    app, seen = flask_app
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_flask_over_real_http(flask_server: tuple[str, Seen]) -> None:
    url, seen = flask_server
    with httpx.Client(base_url=url, timeout=10) as http:
        body, headers = _signed(NESTED)
        ok = http.post("/webhooks/hitl", content=body, headers=headers)
        assert ok.status_code == 200 and ok.json()["decision"] == "approved"
        body, headers = _signed(NESTED, "forged")
        assert http.post("/webhooks/hitl", content=body, headers=headers).status_code == 401
        body, headers = _signed(b"garbage")
        assert http.post("/webhooks/hitl", content=body, headers=headers).status_code == 400
    assert [cb.request_id for cb, _ in seen] == ["65f1aa"]


async def test_flask_round_trip_with_the_sandbox(flask_server: tuple[str, Seen]) -> None:
    """submit_for_review creates a request; the sandbox's reviewer answers; the signed
    callback reaches the Flask app and comes out as the option's value."""
    url, seen = flask_server
    options = SandboxOptions(
        preset_loops=("loop-test",),
        auto_review=True,
        review_delay_min_ms=50,
        review_delay_max_ms=100,
        answer_mix={"Needs changes": 1.0},
        webhook_secret=SECRET,
        webhook_payload_style="flat",
        # The example's resubmit relies on the key: only a kinder-than-documented service.
        honour_idempotency_key=True,
    )
    example = _load("flask_app")
    with SandboxServer(options) as sandbox:
        settings = HitlSettings(base_url=f"{sandbox.url}/v1", api_key=API_KEY)
        request_id = await example.submit_for_review(
            "Is this fine?",
            "c-1",
            "loop-test",
            callback_url=f"{url}/webhooks/hitl",
            settings=settings,
        )
        again = await example.submit_for_review(
            "Is this fine?", "c-1", "loop-test", settings=settings
        )
        assert again == request_id  # Idempotency-Key: the content id (honoured here)
        deadline = time.monotonic() + 15
        while not seen and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    ((callback, answer),) = seen
    assert callback.request_id == request_id and callback.status == "completed"
    assert answer is not None and answer.decision == "needs_changes"


@pytest.fixture(scope="module")
def django_client() -> Any:
    _load("django_app")
    from django.test import Client, override_settings

    with override_settings(HITL_WEBHOOK_SECRETS=[SECRET, OLD_SECRET]):
        yield Client(HTTP_HOST="localhost")


def _django_post(client: Any, body: bytes, headers: dict[str, str]) -> Any:
    return client.post(
        "/webhooks/hitl", data=body, content_type="application/json", headers=headers
    )


def test_django_signed_forged_and_garbage(django_client: Any) -> None:
    body, headers = _signed(SEED, plain=True)
    ok = _django_post(django_client, body, headers)
    assert ok.status_code == 200
    assert ok.json() == {
        "status": "ok",
        "request_id": "req_abc123",
        "event": "request.completed",
        "request_status": "completed",
        "decision": "rejected",
        "decided_by": "human",
        "reviewer": {"id": "rev_1"},
    }
    body, headers = _signed(NESTED, OLD_SECRET)
    assert _django_post(django_client, body, headers).json()["decision"] == "approved"
    body, headers = _signed(SEED, "forged")
    assert _django_post(django_client, body, headers).status_code == 401
    assert _django_post(django_client, json.dumps(SEED).encode(), {}).status_code == 401
    body, headers = _signed(b"{not json")
    assert _django_post(django_client, body, headers).status_code == 400
    body, headers = _signed({"event": "request.completed", "data": {"request_id": None}})
    assert _django_post(django_client, body, headers).status_code == 400
    assert django_client.get("/webhooks/hitl").status_code == 405
