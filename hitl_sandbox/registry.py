"""Webhook registration: ``POST``/``GET {/v1/api,/v1}/webhooks`` (hitl-api §4.1, "future API").

Body ``{"url", "events": [...], "secret"?, "loop_id"?}`` (``type``/``enabled`` of the global
page are accepted and ignored) → 201 ``{"error": false, "msg": "Webhook created successfully",
"data": {id, url, events, loop_id, type, enabled, has_secret, created_at}}``. The secret is
never echoed. ``GET`` lists the caller's webhooks as ``data = {webhooks: [...], count}``.
These are API calls: they go through the normal pipeline (auth, rate limit, faults, stats).
Delivery to the registered URLs is ``webhooks.WebhookDispatcher``'s job.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hitl_sandbox.app import Caller, Sandbox, error, invalid, ok


def _problem(body: Any) -> Response | None:
    if not isinstance(body, dict):
        return error(400, "Invalid request body")
    url = body.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return invalid("url", "url must be a valid http(s) URL")
    events = body.get("events")
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(e, str) and e for e in events)
    ):
        return invalid("events", "events must be a non-empty array of event names")
    for name in ("secret", "loop_id"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            return invalid(name, f"{name} must be a non-empty string")
    return None


def webhook_routes(sandbox: Sandbox) -> list[Route]:
    state = sandbox.state

    async def create(request: Request, caller: Caller) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return error(400, "Invalid request body")
        problem = _problem(body)
        if problem is not None:
            return problem
        loop_id = body.get("loop_id")
        if loop_id is not None:
            loop = state.loops.get(loop_id)
            if loop is None:
                return error(404, "Loop not found")
            if loop.owner not in (None, caller.key_id):
                return error(403, "Access denied to this loop")
        hook = state.add_webhook(
            sandbox.clock(),
            key_id=caller.key_id,
            url=body["url"],
            events=tuple(body["events"]),
            secret=body.get("secret"),
            loop_id=loop_id,
        )
        return ok(201, "Webhook created successfully", hook.public())

    async def list_hooks(request: Request, caller: Caller) -> Response:
        hooks = [h.public() for h in state.webhooks_by_key.get(caller.key_id, ())]
        return ok(200, "Webhooks retrieved successfully", {"webhooks": hooks, "count": len(hooks)})

    routes = []
    for prefix, style in (("/v1/api", "g2"), ("/v1", "g1")):
        for method, handler in (("POST", create), ("GET", list_hooks)):
            run = sandbox.endpoint(method, "/webhooks", style, handler)
            routes.append(Route(f"{prefix}/webhooks", run, methods=[method]))
    return routes
