"""The gateway's authentication and keep-don't-drop rules, on the ASGI app with a recording
sink (the seam; the hostile suite runs the same cases over HTTP against Kafka)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from connector.gateway.app import GatewayApp, GatewayConfig, Unusable
from connector.hitl.signing import sign
from connector.hitl.tokens import make_callback_token
from connector.metrics import Metrics

SECRET = b"whsec"
TOKENS = (b"tok-new", b"tok-old")


class RecordingSink:
    def __init__(self) -> None:
        self.published: list[tuple[str, str | None]] = []
        self.kept: list[tuple[bytes, Unusable, str | None, str | None]] = []

    async def publish(
        self, request_id: str, callback: dict[str, Any], payload: Any, token_event_id: str | None
    ) -> None:
        self.published.append((request_id, token_event_id))

    async def publish_unusable(
        self, raw: bytes, unusable: Unusable, *, request_id: str | None, token_event_id: str | None
    ) -> None:
        self.kept.append((raw, unusable, request_id, token_event_id))

    def ready(self) -> bool:
        return True


def call(app: GatewayApp, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], orjson.loads(sent[1]["body"])


def completed(rid: str, status: str = "completed") -> bytes:
    return orjson.dumps({"event": "request.completed", "request_id": rid, "status": status})


def app_with(**config: Any) -> tuple[GatewayApp, RecordingSink]:
    sink = RecordingSink()
    base: dict[str, Any] = {"secrets": (SECRET,), "token_secrets": TOKENS}
    return GatewayApp(GatewayConfig(**{**base, **config}), sink, metrics=Metrics()), sink


def outcomes(app: GatewayApp) -> dict[str, int]:
    """Webhook outcomes from the app's Prometheus registry."""
    assert app.metrics is not None
    out: dict[str, int] = {}
    for metric in app.metrics.registry.collect():
        if metric.name == "hitl_connector_webhooks_received":
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    out[sample.labels["outcome"]] = int(sample.value)
    return out


def signed(body: bytes, secret: bytes = SECRET) -> dict[str, str]:
    return {"x-hitl-signature-256": "sha256=" + sign(body, secret)}


def test_default_mode_refuses_unsigned_and_wrongly_signed_on_the_webhook_path() -> None:
    app, sink = app_with()
    body = completed("r1")
    assert call(app, "/webhooks/hitl", body, {})[0] == 401
    assert call(app, "/webhooks/hitl", body, signed(body, b"x"))[0] == 401
    assert call(app, "/webhooks/hitl", body, signed(body)) == (200, {"status": "accepted"})
    assert sink.published == [("r1", None)]


@pytest.mark.parametrize(
    ("mode", "unsigned", "wrong"), [("accept-unsigned", 200, 401), ("accept-any", 200, 200)]
)
def test_modes_that_accept_unsigned_deliveries(mode: str, unsigned: int, wrong: int) -> None:
    app, _ = app_with(signature_mode=mode)
    body = completed("r1")
    assert call(app, "/webhooks/hitl", body, {})[0] == unsigned
    assert call(app, "/webhooks/hitl", body, signed(body, b"x"))[0] == wrong


def test_callback_path_trusts_its_token_and_counts_an_unverifiable_signature() -> None:
    app, sink = app_with(secrets=())  # no webhook secret at all: nothing can verify
    body = completed("r2")
    path = "/webhooks/hitl/cb/" + make_callback_token("ev-2", TOKENS[1])  # rotated: old verifies
    assert call(app, path, body, signed(body, b"hitl-has-another"))[0] == 200
    assert outcomes(app)["unverified_signature"] == 1
    assert call(app, path, body, {})[0] == 200
    retired = "/webhooks/hitl/cb/" + make_callback_token("ev-2", b"tok-retired")
    assert call(app, retired, body, {})[0] == 401
    assert sink.published == [("r2", "ev-2"), ("r2", "ev-2")]


def test_token_and_signature_mode_requires_both_on_the_callback_path() -> None:
    app, _ = app_with(callback_signature="token-and-signature")
    body = completed("r3")
    path = "/webhooks/hitl/cb/" + make_callback_token("ev-3", TOKENS[0])
    assert call(app, path, body, {})[0] == 401
    assert call(app, path, body, signed(body, b"x"))[0] == 401
    assert call(app, path, body, signed(body))[0] == 200


@pytest.mark.parametrize(
    ("body", "reason", "request_id"),
    [
        (b"{not json", "invalid_json", None),
        (b'{"event": "request.completed"}', "malformed", None),
        (b'{"event": "review.completed", "request_id": "r4"}', "unknown_event", "r4"),
        (completed("r5", "answered"), "unknown_status", "r5"),
        (completed("r6", "claimed"), "unknown_status", "r6"),
    ],
)
def test_authenticated_but_unusable_is_kept_with_raw_bytes_and_answered_200(
    body: bytes, reason: str, request_id: str | None
) -> None:
    app, sink = app_with()
    status, answer = call(
        app, "/webhooks/hitl", body, {**signed(body), "content-type": "text/plain"}
    )
    assert (status, answer) == (200, {"status": "kept", "reason": reason})
    [(raw, unusable, rid, token)] = sink.kept
    assert (raw, unusable.reason, rid, token) == (body, reason, request_id, None)
    assert unusable.detail and not sink.published
    assert outcomes(app)[f"kept_{reason}"] == 1
