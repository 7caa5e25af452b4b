"""HTTP response helpers shared by the sandbox's routes: JSON, the HITL envelope, a dropped 201."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

JSON = "application/json"


def json_response(status: int, content: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, JSON)


def ok(status: int, msg: str, data: Any) -> Response:
    return json_response(status, {"error": False, "msg": msg, "data": data})


def error(
    status: int, msg: str, data: Any = None, headers: dict[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {"error": True, "msg": msg}
    if data is not None:
        body["data"] = data
    return json_response(status, body, headers)


def invalid(field: str, issue: str, msg: str = "Validation failed") -> Response:
    return error(400, msg, {"field": field, "issue": issue})


class DroppedResponse(Response):
    """Starts a 201 and closes the connection mid-body: an ambiguous success."""

    def __init__(self) -> None:
        super().__init__(status_code=201)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", JSON.encode()), (b"content-length", b"4096")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        # Returning now leaves the response incomplete; the server closes the connection.
