"""Webhook bodies in each documented payload style, and their signature headers.

Styles (hitl-api §4.3): ``nested`` = P1 (``data.request``, ``data.loop``, ``data.reviewer``),
``flat`` = P2 (per-request callback: top-level ``request_id`` … ``response_by`` object),
``seed`` = P4 (``data.decision`` = the canonical answer, e.g. the selected option *value*),
``data_response`` = P5 (``data.response_data`` + ``data.response_by_user``).
``request.escalated`` has no documented payload; it uses the ``request.claimed`` shape.
Signatures (§4.4): ``sha256`` = S1 ``X-HITL-Signature-256: sha256=<hex>``, ``plain`` = S2
``X-HITL-Signature: <hex>``; HMAC-SHA256 of the exact body bytes, keyed by the secret.
Pure: no I/O; the caller supplies the time.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from hitl_sandbox.state import LoopRecord, RequestRecord, iso

COMPLETED, CLAIMED, ESCALATED = "request.completed", "request.claimed", "request.escalated"
TIMEOUT, CANCELLED = "request.timeout", "request.cancelled"
TERMINAL_EVENTS = frozenset({COMPLETED, TIMEOUT, CANCELLED})  # what callback_url receives
EVENTS = (CLAIMED, ESCALATED, COMPLETED, TIMEOUT, CANCELLED)


def signature_headers(body: bytes, secret: str | None, style: str) -> dict[str, str]:
    """The signature header for ``body`` (none when unsigned or without a secret)."""
    if secret is None or style == "none":
        return {}
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if style == "sha256":
        return {"X-HITL-Signature-256": f"sha256={digest}"}
    return {"X-HITL-Signature": digest}


def build_payload(
    style: str, event: str, record: RequestRecord, loop: LoopRecord | None, now: float
) -> dict[str, Any]:
    """The JSON body of ``event`` for ``record`` in ``style``."""
    if style == "flat":
        return _flat(event, record)
    data = {"seed": _seed, "data_response": _data_response}.get(style, _nested)(event, record, loop)
    return {"event": event, "timestamp": iso(now), "data": data}


def _person(record: RequestRecord) -> dict[str, Any] | None:
    return dict(record.reviewer) if record.reviewer else None


def _claim_fields(record: RequestRecord) -> dict[str, Any]:
    return {"claimed_by": _person(record), "claimed_at": iso(record.claimed_at)}


def _nested(event: str, record: RequestRecord, loop: LoopRecord | None) -> dict[str, Any]:
    loop_info = {
        "id": record.loop_id,
        "name": loop.name if loop else None,
        "creator_id": loop.creator_id if loop else None,
    }
    reviewer = {k: v for k, v in (record.reviewer or {}).items() if k != "name"} or None
    if event == CANCELLED:
        request = {
            "id": record.id,
            "loop_id": record.loop_id,
            "status": record.status,
            "previous_status": record.previous_status,
            "cancelled_at": iso(record.cancelled_at),
            "created_at": iso(record.created_at),
            "updated_at": iso(record.updated_at),
        }
        reason = f"{(record.previous_status or 'pending').capitalize()} request cancelled"
        refund = {"refunded": record.refunded, "reason": reason}
        return {"request": request, "loop": loop_info, "refund_info": refund}
    request = record.summary()
    if event == TIMEOUT:
        request.update(
            previous_status=record.previous_status,
            default_response=record.body["default_response"],
        )
        return {"request": request, "loop": loop_info}
    out: dict[str, Any] = {"request": request, "loop": loop_info, "reviewer": reviewer}
    if event in (CLAIMED, ESCALATED):
        request["claimed_by"] = record.claimed_by
        request["claimed_at"] = iso(record.claimed_at)
        out["estimated_completion"] = None
    return out


def _flat(event: str, record: RequestRecord) -> dict[str, Any]:
    answered = record.response_by is not None
    out: dict[str, Any] = {
        "event": event,
        "request_id": record.id,
        "loop_id": record.loop_id,
        "status": record.status,
        "response_data": record.response_data,
        "response_by": _person(record) if answered else None,
        "response_at": iso(record.response_at),
        "response_time_seconds": record.response_time_seconds,
        "created_at": iso(record.created_at),
    }
    if event in (CLAIMED, ESCALATED):
        out.update(_claim_fields(record))
    return out


def _seed(event: str, record: RequestRecord, loop: LoopRecord | None) -> dict[str, Any]:
    reviewer_id = record.reviewer["user_id"] if record.reviewer else None
    if event == COMPLETED:
        return {
            "request_id": record.id,
            "decision": record.answer,
            "reviewer_id": reviewer_id,
            "completed_at": iso(record.response_at),
        }
    if event in (CLAIMED, ESCALATED):  # the documented request.assigned shape
        return {
            "request_id": record.id,
            "reviewer_id": reviewer_id,
            "claimed_at": iso(record.claimed_at),
            "status": record.status,
        }
    if event == TIMEOUT:
        return {
            "request_id": record.id,
            "loop_id": record.loop_id,
            "status": record.status,
            "decision": record.response_data,  # null as documented (kind option: the default)
            "reviewer_id": None,
            "timed_out_at": iso(record.updated_at),
        }
    return {
        "request_id": record.id,
        "loop_id": record.loop_id,
        "status": record.status,
        "previous_status": record.previous_status,
        "cancelled_at": iso(record.cancelled_at),
    }


def _data_response(event: str, record: RequestRecord, loop: LoopRecord | None) -> dict[str, Any]:
    answered = record.response_by is not None
    out: dict[str, Any] = {
        "request_id": record.id,
        "loop_id": record.loop_id,
        "status": record.status,
        "response_data": record.response_data,
        "response_by_user": _person(record) if answered else None,
        "response_at": iso(record.response_at),
        "response_time_seconds": record.response_time_seconds,
    }
    if event in (CLAIMED, ESCALATED):
        out.update(_claim_fields(record))
    return out
