"""Admin endpoints under ``/sandbox/``: inspect, configure and reset the sandbox.

No auth, no rate limit, not counted as API calls, plain JSON (no HITL envelope):

* ``GET  /sandbox/requests[?status=&loop_id=&api_key_id=]`` → ``{"requests": [...]}``
* ``GET  /sandbox/requests/{id}`` → ``{"request": {...}}``
* ``GET  /sandbox/stats`` → counters (see ``stats``), incl. ``webhooks`` and reviewer counts
* ``POST /sandbox/requests/{id}/respond`` ``{"response_data": <value>}`` → ``{"request":
  {...}}``: answer by hand (400 invalid answer, 409 not pending/claimed, 404 unknown id)
* ``GET  /sandbox/deliveries[?since=&request_id=&event=]`` → ``{"deliveries": [{ts,
  request_id, event, url, attempt, status, error}]}`` (recent attempts, bounded log)
* ``GET  /sandbox/webhooks`` → ``{"webhooks": [...]}`` every registered webhook (no secrets)
* ``GET  /sandbox/calls[?since=<epoch>]`` → ``{"calls": [{ts, method, endpoint, style, status,
  api_key_id}]}``
* ``POST /sandbox/loops`` ``{"id"?, "name"?, "api_key"?}`` → 201 ``{"loop": {...},
  "owner_key_id"}`` (shared by every key unless ``api_key`` names the owner; 200 with the
  existing loop if ``id`` is taken)
* ``GET  /sandbox/config`` / ``PUT /sandbox/config`` (partial JSON of runtime options)
* ``POST /sandbox/reset[?loops=true]`` → clears requests, idempotency keys, registered
  webhooks, scheduled answers/timeouts, pending deliveries, stats, calls and rate-limit
  windows; keeps the configuration (and loops unless ``loops=true``).
* ``GET  /sandbox/ui`` → the reviewer page (HTML, see ``ui``): answer requests by hand.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hitl_sandbox.answers import AnswerError
from hitl_sandbox.app import Sandbox, json_response
from hitl_sandbox.options import RUNTIME_FIELDS
from hitl_sandbox.reviewer import NotAnswerable
from hitl_sandbox.ui import ui_page


def _bad(msg: str, data: Any = None) -> Response:
    return json_response(400, {"error": True, "msg": msg, "data": data})


def admin_routes(sandbox: Sandbox) -> list[Route]:
    state = sandbox.state

    async def list_requests(request: Request) -> Response:
        q = request.query_params
        filters = {k: q.get(k) for k in ("status", "loop_id", "api_key_id")}
        records = [
            r.admin()
            for r in state.requests.values()
            if (filters["status"] is None or r.status == filters["status"])
            and (filters["loop_id"] is None or r.loop_id == filters["loop_id"])
            and (filters["api_key_id"] is None or r.key_id == filters["api_key_id"])
        ]
        return json_response(200, {"requests": records})

    async def get_request(request: Request) -> Response:
        record = state.requests.get(request.path_params["request_id"])
        if record is None:
            return json_response(404, {"error": True, "msg": "Request not found"})
        return json_response(200, {"request": record.admin()})

    async def stats(request: Request) -> Response:
        s = state.stats
        counts = state.status_counts()
        body = {
            "creates": s.creates,
            "requests_total": len(state.requests),
            "pending": counts["pending"],
            "by_status": counts,
            "cancels": s.cancels,
            "api_calls_total": sum(sum(v.values()) for v in s.api_calls.values()),
            "api_calls": s.api_calls,
            "rate_limited": s.rate_limited,
            "idempotent_replays": s.idempotent_replays,
            "unknown_fields": s.unknown_fields,
            "errors_injected": s.errors_injected,
            "loops": len(state.loops),
            "auto_reviewed": s.auto_reviewed,
            "answered_by_hand": s.answered_by_hand,
            "timeouts": s.timeouts,
            "claims": s.claims,
            "escalations": s.escalations,
            "webhooks": {**asdict(s.webhooks), **sandbox.dispatcher.backlog()},
            "scheduled_reviews": len(sandbox.reviewer.timers),
        }
        return json_response(200, body)

    async def respond(request: Request) -> Response:
        record = state.requests.get(request.path_params["request_id"])
        if record is None:
            return json_response(404, {"error": True, "msg": "Request not found"})
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _bad("Invalid request body")
        if not isinstance(body, dict) or "response_data" not in body:
            return _bad('Body must be {"response_data": <value>}')
        try:
            sandbox.reviewer.respond(record, body["response_data"])
        except NotAnswerable as exc:
            return json_response(409, {"error": True, "msg": str(exc)})
        except AnswerError as exc:
            return _bad(
                str(exc), {"field": "response_data", "response_type": record.body["response_type"]}
            )
        return json_response(200, {"request": record.admin()})

    async def deliveries(request: Request) -> Response:
        q = request.query_params
        since = float(q.get("since", "0") or 0)
        request_id, event = q.get("request_id"), q.get("event")
        rows = [
            {
                "ts": ts,
                "request_id": rid,
                "event": ev,
                "url": url,
                "attempt": attempt,
                "status": status,
                "error": err,
            }
            for ts, rid, ev, url, attempt, status, err in state.deliveries
            if ts >= since
            and (request_id is None or rid == request_id)
            and (event is None or ev == event)
        ]
        return json_response(200, {"deliveries": rows})

    async def webhooks(request: Request) -> Response:
        hooks = [{**h.public(), "api_key_id": h.key_id} for h in state.webhooks.values()]
        return json_response(200, {"webhooks": hooks})

    async def calls(request: Request) -> Response:
        since = float(request.query_params.get("since", "0") or 0)
        rows = [
            {
                "ts": ts,
                "method": method,
                "endpoint": endpoint,
                "style": style,
                "status": status,
                "api_key_id": key_id,
            }
            for ts, method, endpoint, style, status, key_id in state.calls
            if ts >= since
        ]
        return json_response(200, {"calls": rows})

    async def create_loop(request: Request) -> Response:
        raw = await request.body()
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            return _bad("Invalid request body")
        if not isinstance(body, dict):
            return _bad("Invalid request body")
        existing = state.loops.get(body.get("id") or "")
        if existing is not None:
            return json_response(200, {"loop": existing.public(), "owner_key_id": existing.owner})
        api_key = body.get("api_key")
        loop = state.add_loop(
            sandbox.clock(),
            loop_id=body.get("id") or None,
            owner=sandbox.key_id(api_key) if api_key else None,
            name=body.get("name") or "Sandbox loop",
            description=body.get("description") or "",
            icon=body.get("icon") or "🧪",
        )
        return json_response(201, {"loop": loop.public(), "owner_key_id": loop.owner})

    def config_body() -> dict[str, Any]:
        body = sandbox.options.model_dump(mode="json")
        body["outage_until"] = sandbox.faults.outage_until or None
        return body

    async def get_config(request: Request) -> Response:
        return json_response(200, config_body())

    async def put_config(request: Request) -> Response:
        try:
            patch = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _bad("Invalid request body")
        if not isinstance(patch, dict):
            return _bad("Invalid request body")
        fixed = sorted(set(patch) - RUNTIME_FIELDS)
        if fixed:
            return _bad("Not changeable at runtime", {"fields": fixed})
        try:
            sandbox.reconfigure(patch)
        except ValidationError as exc:
            return _bad("Invalid configuration", orjson.loads(exc.json()))
        return json_response(200, config_body())

    async def reset(request: Request) -> Response:
        sandbox.reset(drop_loops=request.query_params.get("loops") == "true")
        return json_response(200, {"reset": True})

    return [
        Route("/sandbox/requests", list_requests, methods=["GET"]),
        Route("/sandbox/requests/{request_id}", get_request, methods=["GET"]),
        Route("/sandbox/requests/{request_id}/respond", respond, methods=["POST"]),
        Route("/sandbox/deliveries", deliveries, methods=["GET"]),
        Route("/sandbox/webhooks", webhooks, methods=["GET"]),
        Route("/sandbox/stats", stats, methods=["GET"]),
        Route("/sandbox/calls", calls, methods=["GET"]),
        Route("/sandbox/loops", create_loop, methods=["POST"]),
        Route("/sandbox/config", get_config, methods=["GET"]),
        Route("/sandbox/config", put_config, methods=["PUT"]),
        Route("/sandbox/reset", reset, methods=["POST"]),
        Route("/sandbox/ui", ui_page, methods=["GET"]),
    ]
