"""The sandbox's HITL.sh API routes (both path styles) and the per-call pipeline.

Every API call goes through ``Sandbox.call`` in this order:

1. latency (if configured);
2. outage → 503 ``Service temporarily unavailable`` + ``Retry-After`` — answered "at the edge":
   before auth, not counted toward the rate limit, no ``X-RateLimit-*`` headers;
3. auth → 401 (no key to count against, so not counted either);
4. rate limit: **every** authenticated call counts, including idempotent replays, 4xx and the
   429s themselves; over the limit → 429 with the documented body;
5. error rate → 500 ``Internal server error`` (counted, nothing changed);
6. the endpoint itself.

``Idempotency-Key`` is ignored by default (HITL.sh documents none). Only with
``honour_idempotency_key`` (a kinder-than-documented option): successful creates are
remembered per (API key, idempotency key); a repeat returns the stored 201 body byte for byte
(whatever its body) and creates nothing. Failed creates are not remembered.

Authenticated responses carry ``X-RateLimit-Limit/Remaining/Reset`` when a limit is set.
Every call (any status) is counted in stats and appended to the call log. Admin routes live
in ``admin.py``, webhook registration in ``registry.py``; ``server.py`` assembles the app and
runs it. ``Sandbox.start``/``stop`` run the reviewer's and the webhook dispatcher's
background tasks (the server's lifespan calls them).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hitl_sandbox.faults import FaultInjector
from hitl_sandbox.options import SandboxOptions
from hitl_sandbox.ratelimit import FixedWindowLimiter
from hitl_sandbox.responses import JSON, DroppedResponse, error, invalid, json_response, ok
from hitl_sandbox.reviewer import Reviewer
from hitl_sandbox.state import STATUSES, SandboxState, iso, sort_requests, stable_id
from hitl_sandbox.validation import (
    DOCUMENTED_FIELDS,
    PRIORITIES,
    unknown_fields,
    validate_create_request,
)
from hitl_sandbox.webhooks import WebhookDispatcher

Clock = Callable[[], float]
SORTS = ("created_at_desc", "created_at_asc", "priority_desc", "status_asc")
PERMISSIONS = ["loops:read", "loops:write", "requests:read", "requests:write"]
__all__ = ["Caller", "Clock", "Sandbox", "error", "invalid", "json_response", "ok"]


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str


Handler = Callable[[Request, Caller], Awaitable[Response]]


class Sandbox:
    """Options, store, limiter, fault injector, reviewer and webhook dispatcher."""

    def __init__(self, options: SandboxOptions, clock: Clock = time.time) -> None:
        self.clock = clock
        self.options = options
        self.state = SandboxState(
            options.loop_members, options.call_log_size, options.delivery_log_size
        )
        self.dispatcher = WebhookDispatcher(self.state, options, clock)
        self.reviewer = Reviewer(self.state, options, self.dispatcher, clock)
        self.limiter = FixedWindowLimiter(
            options.rate_limit_calls, options.rate_limit_window_seconds, clock
        )
        self.faults = FaultInjector(options, clock())
        self._key_ids: dict[str, str] = {}
        for loop_id in options.preset_loops:
            self.state.add_loop(clock(), loop_id=loop_id, name=f"Preset {loop_id}", preset=True)

    def reconfigure(self, patch: dict[str, Any]) -> SandboxOptions:
        """Apply runtime option changes (already restricted to ``RUNTIME_FIELDS``)."""
        new = SandboxOptions.model_validate({**self.options.model_dump(), **patch})
        if new.rate_limit_window_seconds != self.limiter.window_seconds:
            self.limiter.window_seconds = new.rate_limit_window_seconds
            self.limiter.reset()
        self.limiter.calls = new.rate_limit_calls
        self.faults.configure(new, self.clock(), outage_changed="outage_seconds" in patch)
        self.dispatcher.configure(new)
        self.reviewer.configure(new)
        self.options = new
        return new

    def start(self) -> None:
        """Start the background tasks on the running (the server's) event loop."""
        self.dispatcher.start()
        self.reviewer.start()

    async def stop(self) -> None:
        """Reviewer first (no new events), then the dispatcher; safe to call twice."""
        await self.reviewer.stop()
        await self.dispatcher.stop()

    def reset(self, *, drop_loops: bool = False) -> None:
        self.reviewer.clear()
        self.dispatcher.clear()
        self.state.reset(drop_loops=drop_loops)
        self.limiter.reset()

    def key_id(self, api_key: str) -> str:
        found = self._key_ids.get(api_key)
        if found is None:
            found = self._key_ids[api_key] = stable_id("key", api_key)
        return found

    def authenticate(self, request: Request) -> str | Response:
        header = request.headers.get("authorization")
        if not header:
            return error(401, "API key required")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return error(401, "Missing or invalid authorization header")
        if self.options.api_keys and key not in self.options.api_keys:
            return error(401, "Invalid API key")
        return self.key_id(key)

    def endpoint(
        self, method: str, template: str, style: str, handler: Handler
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            response, key_id, arrived = await self.call(request, handler)
            self.state.record_call(arrived, method, template, style, response.status_code, key_id)
            return response

        return run

    async def call(self, request: Request, handler: Handler) -> tuple[Response, str | None, float]:
        """Run the pipeline; returns the response, the caller's key id and the arrival time
        (after injected latency: the instant the rate limiter counted the call)."""
        delay = self.faults.latency_seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        now = self.clock()
        stats = self.state.stats
        retry_after = self.faults.outage_retry_after(now)
        if retry_after is not None:
            stats.bump(stats.errors_injected, "outage_503")
            headers = {"Retry-After": retry_after}
            return error(503, "Service temporarily unavailable", headers=headers), None, now
        auth = self.authenticate(request)
        if isinstance(auth, Response):
            return auth, None, now
        decision = self.limiter.hit(auth, now)
        if decision is not None and not decision.allowed:
            headers = decision.headers()
            if self.options.rate_limit_retry_after:
                headers["Retry-After"] = (
                    formatdate(decision.reset, usegmt=True)
                    if self.options.outage_retry_after_http_date
                    else str(max(0, math.ceil(decision.reset - now)))
                )
            data = {
                "usage_count": decision.used,
                "usage_limit": decision.limit,
                "remaining": 0,
                "reset_at": iso(decision.reset),
            }
            return error(429, "API rate limit exceeded", data, headers), auth, now
        if self.faults.inject_error():
            stats.bump(stats.errors_injected, "error_500")
            response = error(500, "Internal server error")
        else:
            response = await handler(request, Caller(auth))
        if decision is not None:
            response.headers.update(decision.headers())
        return response, auth, now

    # ---- requests -------------------------------------------------------------------------

    async def create_request(self, request: Request, caller: Caller) -> Response:
        loop = self.state.loops.get(request.path_params["loop_id"])
        if loop is None:
            return error(404, "Loop not found")
        if loop.owner not in (None, caller.key_id):
            return error(403, "Only loop creators can create requests")
        raw = await request.body()
        stats = self.state.stats
        idem = request.headers.get("idempotency-key") or None
        if idem is not None and self.options.honour_idempotency_key:
            replay = self.state.idempotency.get((caller.key_id, idem))
            if replay is not None:
                stats.idempotent_replays += 1
                return Response(replay, 201, media_type=JSON)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return error(400, "Invalid request body")
        if isinstance(body, dict):
            for name in unknown_fields(body):
                stats.bump(stats.unknown_fields, name)
        problem = validate_create_request(body)
        if problem is not None:
            return invalid(problem.field, problem.issue, problem.msg)
        text = body["request_text"]
        if self.faults.rejects(text):
            stats.bump(stats.errors_injected, "reject_400")
            return error(400, self.options.reject_msg, self.options.reject_data)
        if not loop.members:
            return error(400, "No active members found in the loop")
        documented = {k: v for k, v in body.items() if k in DOCUMENTED_FIELDS}
        record = self.state.add_request(
            self.clock(),
            key_id=caller.key_id,
            loop=loop,
            body=documented,
            idempotency_key=idem,
            timeout_scale=self.options.timeout_scale,
        )
        self.reviewer.created(record)
        members = len(loop.members)
        payload = orjson.dumps(
            {
                "error": False,
                "msg": "Request created and broadcasted successfully",
                "data": {
                    "request_id": record.id,
                    "status": record.status,
                    "processing_type": body["processing_type"],
                    "type": body["type"],
                    "priority": body["priority"],
                    "timeout_at": iso(record.timeout_at),
                    "broadcasted_to": members,
                    "notifications_sent": members,
                    "polling_url": f"/v1/api/requests/{record.id}",
                },
            }
        )
        if idem is not None and self.options.honour_idempotency_key:
            self.state.idempotency[(caller.key_id, idem)] = payload
        if self.faults.drops_response(text):
            if self.options.ambiguous_answer == "500":
                stats.bump(stats.errors_injected, "500_after_create")
                return error(500, "Internal server error")
            stats.bump(stats.errors_injected, "dropped_after_create")
            return DroppedResponse()
        return Response(payload, 201, media_type=JSON)

    def _own_request(self, request: Request, caller: Caller) -> Any:
        record = self.state.requests.get(request.path_params["request_id"])
        if record is None:
            return error(404, "Request not found")
        if record.key_id != caller.key_id:
            return error(403, "Access denied to this request")
        return record

    async def get_request(self, request: Request, caller: Caller) -> Response:
        record = self._own_request(request, caller)
        if isinstance(record, Response):
            return record
        return ok(200, "Request retrieved successfully", {"request": record.public()})

    async def cancel_request(self, request: Request, caller: Caller) -> Response:
        record = self._own_request(request, caller)
        if isinstance(record, Response):
            return record
        cancellable = ("pending", "claimed") if self.options.kind_cancel_claimed else ("pending",)
        if record.status not in cancellable:  # G2: "Only pending requests can be cancelled"
            return error(400, "Request cannot be cancelled in current state")
        now = self.clock()
        record.previous_status, record.status = record.status, "cancelled"
        record.cancelled_at = record.updated_at = now
        self.state.stats.cancels += 1
        refunded = record.refunded = (
            self.options.refund_on_cancel and record.previous_status == "pending"
        )
        if refunded:
            self.limiter.refund(caller.key_id)
        reason = f"{record.previous_status.capitalize()} request cancelled"
        data = {
            "request_id": record.id,
            "status": "cancelled",
            "cancelled_at": iso(now),
            "previous_status": record.previous_status,
            "refund_info": {"refunded": refunded, "reason": reason},
        }
        self.reviewer.cancelled(record)
        return ok(200, "Request cancelled successfully", data)

    async def list_requests(self, request: Request, caller: Caller) -> Response:
        q = request.query_params
        status, priority, loop_id = q.get("status"), q.get("priority"), q.get("loop_id")
        if status is not None and status not in STATUSES:
            return invalid("status", f"status must be one of: {', '.join(STATUSES)}")
        if priority is not None and priority not in PRIORITIES:
            return invalid("priority", f"priority must be one of: {', '.join(PRIORITIES)}")
        paging = _paging(q)
        if isinstance(paging, Response):
            return paging
        sort, limit, offset = paging
        records = [
            r
            for r in self.state.by_key.get(caller.key_id, ())
            if (status is None or r.status == status)
            and (priority is None or r.body["priority"] == priority)
            and (loop_id is None or r.loop_id == loop_id)
        ]
        page = sort_requests(records, sort)[offset : offset + limit]
        has_more = offset + len(page) < len(records)
        data = {
            "requests": [r.summary() for r in page],
            "count": len(page),
            "total": len(records),
            "has_more": has_more,
            "pagination": {
                "limit": limit,
                "offset": offset,
                "next_offset": offset + len(page) if has_more else None,
            },
        }
        return ok(200, "Requests retrieved successfully", data)

    # ---- loops and test -------------------------------------------------------------------

    def _visible_loop(self, request: Request, caller: Caller) -> Any:
        loop = self.state.loops.get(request.path_params["loop_id"])
        if loop is None:
            return error(404, "Loop not found")
        if loop.owner not in (None, caller.key_id):
            return error(403, "Access denied to this loop")
        return loop

    async def create_loop(self, request: Request, caller: Caller) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return error(400, "Invalid request body")
        if not isinstance(body, dict):
            return error(400, "Invalid request body")
        for name in ("name", "icon"):
            if body.get(name) is None:
                return invalid(name, "Field is required", "Invalid request body")
        name, icon, description = body["name"], body["icon"], body.get("description", "")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            return error(400, "Loop name must be between 1 and 100 characters")
        if not isinstance(icon, str) or len(icon) > 100:
            return invalid("icon", "icon must be at most 100 characters")
        if not isinstance(description, str) or len(description) > 500:
            return invalid("description", "description must be at most 500 characters")
        loop = self.state.add_loop(
            self.clock(), owner=caller.key_id, name=name, description=description, icon=icon
        )
        data = {
            "loop": loop.public(),
            "invite_code": loop.invite_code,
            "qr_code_base64": "",
            "qr_code_url": f"https://api.hitl.sh/qr/{loop.invite_code}.png",
            "join_url": f"https://my.hitl.sh/join/{loop.invite_code}",
        }
        return ok(201, "Loop created successfully", data)

    async def list_loops(self, request: Request, caller: Caller) -> Response:
        loops = [
            loop.public()
            for loop in self.state.loops.values()
            if loop.owner in (None, caller.key_id)
        ]
        return ok(200, "Loops retrieved successfully", {"loops": loops, "count": len(loops)})

    async def get_loop(self, request: Request, caller: Caller) -> Response:
        loop = self._visible_loop(request, caller)
        if isinstance(loop, Response):
            return loop
        return ok(200, "Loop retrieved successfully", {"loop": loop.public()})

    async def list_loop_requests(self, request: Request, caller: Caller) -> Response:
        loop = self._visible_loop(request, caller)
        if isinstance(loop, Response):
            return loop
        records = [r for r in self.state.by_key.get(caller.key_id, ()) if r.loop_id == loop.id]
        q = request.query_params
        if "limit" in q or "offset" in q or "sort" in q:
            # Undocumented for this endpoint: honoured like GET requests' (a service that pages
            # costs the caller more calls than one that answers everything, so tests pay them).
            paging = _paging(q)
            if isinstance(paging, Response):
                return paging
            sort, limit, offset = paging
            records = sort_requests(records, sort)[offset : offset + limit]
        page = [r.public() for r in records]
        data = {"loop_id": loop.id, "requests": page, "count": len(page)}
        return ok(200, "Requests retrieved successfully", data)

    async def test_key(self, request: Request, caller: Caller) -> Response:
        decision = self.limiter.peek(caller.key_id)
        rate = (
            {"limit": None, "remaining": None, "reset_at": None}
            if decision is None
            else {
                "limit": decision.limit,
                "remaining": decision.remaining,
                "reset_at": iso(decision.reset),
            }
        )
        data = {
            "api_key_id": caller.key_id,
            "user_id": stable_id("user", caller.key_id),
            "email": f"{caller.key_id[:8]}@sandbox.hitl.local",
            "account_status": "active",
            "rate_limit": rate,
            "permissions": PERMISSIONS,
        }
        return ok(200, "API key is valid", data)

    def api_routes(self) -> list[Route]:
        # Hot routes first: the router tries routes in order.
        table: list[tuple[str, str, Handler]] = [
            ("POST", "/loops/{loop_id}/requests", self.create_request),
            ("GET", "/requests/{request_id}", self.get_request),
            ("GET", "/requests", self.list_requests),
            ("DELETE", "/requests/{request_id}", self.cancel_request),
            ("POST", "/loops", self.create_loop),
            ("GET", "/loops", self.list_loops),
            ("GET", "/loops/{loop_id}", self.get_loop),
            ("GET", "/loops/{loop_id}/requests", self.list_loop_requests),
        ]
        routes = [
            Route("/v1/test", self.endpoint("GET", "/test", "test", self.test_key), methods=["GET"])
        ]
        for prefix, style in (("/v1/api", "g2"), ("/v1", "g1")):
            for method, path, handler in table:
                template = path.replace("{loop_id}", "{id}").replace("{request_id}", "{id}")
                run = self.endpoint(method, template, style, handler)
                routes.append(Route(prefix + path, run, methods=[method]))
        return routes


def _paging(q: Mapping[str, str]) -> tuple[str, int, int] | Response:
    """``sort``, ``limit`` and ``offset`` of a list call, or the 400 naming the bad one."""
    sort = q.get("sort", "created_at_desc")
    limit, offset = _int_param(q.get("limit"), 50), _int_param(q.get("offset"), 0)
    if sort not in SORTS:
        return invalid("sort", f"sort must be one of: {', '.join(SORTS)}")
    if limit is None or not 1 <= limit <= 100:
        return invalid("limit", "limit must be between 1 and 100")
    if offset is None or offset < 0:
        return invalid("offset", "offset must be a non-negative integer")
    return sort, limit, offset


def _int_param(raw: str | None, default: int) -> int | None:
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        return None
