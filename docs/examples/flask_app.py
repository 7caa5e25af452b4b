"""HITL.sh in a Flask app with hitl-kafka-connector's public API (the seed's example, done right).

    pip install hitl-kafka-connector flask
    HITL_WEBHOOK_SECRET=<secret> HITL_API_KEY=<key> python flask_app.py   # :8000

The receiver checks the signature on the raw body before parsing anything (both documented
headers, several comma-separated secrets for rotation, constant time, no crash when the
header is missing), reads every documented payload shape, and matches the reviewer's answer
to the loop's options. It answers 401 for a bad or missing signature, 400 for a body that
is not JSON or not a usable request event, and 200 otherwise, including events that are not
about a request (so HITL.sh does not retry them). Store the decision before returning 200:
HITL.sh retries only deliveries that were not answered 2xx.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from flask import Flask, Response, jsonify, request

from connector import (
    Answer,
    HitlClient,
    HitlSettings,
    Ignored,
    NormalizedCallback,
    SignatureCheck,
    interpret,
    normalize_webhook,
    verify_signature,
)

# The options of the requests you create; answers are matched by value, then by label.
OPTIONS = [
    {"value": "approved", "label": "Approve"},
    {"value": "rejected", "label": "Reject"},
    {"value": "needs_changes", "label": "Needs changes"},
]

OnDecision = Callable[[NormalizedCallback, Answer | None], None]


def log_decision(callback: NormalizedCallback, answer: Answer | None) -> None:
    """Replace with your own handling (the seed's approve_content / reject_content)."""
    decision = answer.decision if answer else None
    print(f"{callback.request_id}: {callback.status} {decision}", file=sys.stderr)


def create_app(secrets: Sequence[str], on_decision: OnDecision = log_decision) -> Flask:
    """The app; ``secrets`` are every webhook secret currently in use."""
    app = Flask(__name__)

    @app.post("/webhooks/hitl")
    def hitl_webhook() -> tuple[Response, int]:
        body = request.get_data()  # the raw bytes: the signature covers them exactly
        if verify_signature(body, dict(request.headers), secrets) is not SignatureCheck.VALID:
            return jsonify(error="invalid or missing signature"), 401
        try:
            event = normalize_webhook(json.loads(body))
        except (ValueError, RecursionError) as exc:  # not JSON, or MalformedPayload
            return jsonify(error=str(exc)), 400
        if isinstance(event, Ignored):
            return jsonify(status="ignored", reason=event.reason), 200
        answer = None
        if event.terminal:  # completed, timeout or cancelled
            answer = interpret(
                "single_select", OPTIONS, event.status, event.response_data, event.default_response
            )
        on_decision(event, answer)
        return jsonify(status="ok", **_summary(event, answer)), 200

    return app


def _summary(event: NormalizedCallback, answer: Answer | None) -> dict[str, Any]:
    return {
        "request_id": event.request_id,
        "event": event.event,
        "request_status": event.status,
        "decision": answer.decision if answer else None,
        "decided_by": answer.decided_by if answer else None,
        "reviewer": event.reviewer,
    }


async def submit_for_review(
    text: str,
    content_id: str,
    loop_id: str,
    *,
    callback_url: str | None = None,
    settings: HitlSettings | None = None,
) -> str:
    """Create a review request (the seed's submit_content_for_review); returns its id.

    ``Idempotency-Key: content_id`` makes a retried submit return the same request only on
    a service that honours the key; HITL.sh documents none, so a second submit may be a
    second request (the connector itself looks requests up instead, see docs/operations.md).
    In a long-running app, start one ``HitlClient`` at startup and share it (it is pooled,
    paced to the key's rate limit, and retried).
    """
    settings = settings or HitlSettings(api_key=os.environ["HITL_API_KEY"])
    body: dict[str, Any] = {
        "processing_type": "time-sensitive",
        "type": "markdown",
        "priority": "medium",
        "request_text": text[:2000],
        "response_type": "single_select",
        "response_config": {"options": OPTIONS},
        "default_response": "rejected",
        "timeout_seconds": 3600,
        "platform": "api",
        "context": {"content_id": content_id},
    }
    if callback_url:
        body["callback_url"] = callback_url
    async with HitlClient(settings) as client:
        created = await client.create_request(loop_id, body, idempotency_key=content_id)
    return created.request_id


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "submit":  # python flask_app.py submit ID "text"
        print(asyncio.run(submit_for_review(sys.argv[3], sys.argv[2], os.environ["HITL_LOOP_ID"])))
    else:
        secrets = [s.strip() for s in os.environ["HITL_WEBHOOK_SECRET"].split(",") if s.strip()]
        create_app(secrets).run(host="127.0.0.1", port=8000)
