"""Normalizing what HITL.sh tells us about a request into one ``NormalizedCallback``.

Owns: reading every documented webhook payload shape (``hitl-api.md`` §4.3: P1 nested
``data.request``, P2/P3 flat, P4 ``data`` with ``decision``, P5 ``data`` with ``response_data``,
P6 flat id plus ``data.request``) and every polled request object (GET ``data.request`` or
``data``, list items), with the field precedence of §7 item 11. Non-request events (``loop.*``,
``user.*``, ``system.*``, ``api_key.*``) come back as ``Ignored``; unknown events, unknown
statuses and request events that cannot be used raise ``MalformedPayload`` (with a ``reason``:
the gateway keeps such a delivery, it does not drop it). Nothing else is raised, and work is
bounded: only fixed paths are read, and the one walk (the nesting check of carried values) is
iterative.
Does not own: signatures (``hitl.signing``), turning an answer into a decision
(``resolver.answers``), or JSON parsing of the body (the gateway).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final

MAX_ID_CHARS: Final = 256
# Carried values deeper than this are refused: orjson cannot re-serialize ~255 levels, and no
# documented answer is more than two levels deep.
MAX_VALUE_DEPTH: Final = 64
_MAX_TEXT: Final = 256
TERMINAL_STATUSES: Final = frozenset({"completed", "timeout", "cancelled"})
KNOWN_STATUSES: Final = TERMINAL_STATUSES | {"pending", "claimed", "assigned", "escalated"}
# Documented event families that are not about a request's progress (acknowledged, dropped).
_OTHER_FAMILIES: Final = ("loop.", "user.", "system.", "api_key.", "webhook.")
_STATUS_ALIASES: Final = {"timed_out": "timeout", "canceled": "cancelled"}
_STATUS_WORD: Final = re.compile(r"[a-z][a-z0-9_]{0,39}")
# Request events we know; anything else under ``request.`` is ignored, not an error.
_EVENT_STATUS: Final = {
    "request.created": "pending",
    "request.claimed": "claimed",
    "request.assigned": "assigned",
    "request.completed": "completed",
    "request.cancelled": "cancelled",
    "request.timeout": "timeout",
    "request.timed_out": "timeout",
    "request.escalated": "escalated",
}
# When it happened: answer/cancel times first, then progress times (``timeout_at`` is the
# deadline, so it counts only for a timed-out request).
_DONE_KEYS: Final = ("response_at", "completed_at", "cancelled_at")
_PROGRESS_KEYS: Final = ("assigned_at", "claimed_at", "escalated_at")


class MalformedPayload(ValueError):
    """A request payload we cannot use; the message names the problem. ``reason`` is the
    bounded label the gateway keeps it under (``malformed``, ``unknown_event``,
    ``unknown_status``)."""

    reason: str = "malformed"


class UnknownEvent(MalformedPayload):
    """An event the connector does not know (neither a request event nor a documented family)."""

    reason = "unknown_event"


class UnknownStatus(MalformedPayload):
    """A status the connector does not know, or a terminal event whose status contradicts it."""

    reason = "unknown_status"


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed delivery that is not about a request's progress (acknowledge, drop)."""

    reason: str
    event: str | None = None


@dataclass(frozen=True, slots=True)
class NormalizedCallback:
    """What a webhook or a poll says about one request, in one shape."""

    request_id: str
    event: str
    status: str
    response_data: Any = None
    reviewer: dict[str, Any] | None = None
    occurred_at: str | None = None
    response_time_seconds: float | None = None
    default_response: Any = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "event": self.event,
            "status": self.status,
            "response_data": self.response_data,
            "reviewer": self.reviewer,
            "occurred_at": self.occurred_at,
            "response_time_seconds": self.response_time_seconds,
            "default_response": self.default_response,
        }

    @classmethod
    def from_json(cls, d: Any) -> NormalizedCallback:
        """Read back ``to_json`` output; raises ``MalformedPayload`` if it is not that."""
        if not isinstance(d, dict):
            raise MalformedPayload("normalized callback must be a JSON object")
        request_id = _request_id(d.get("request_id"), "request_id")
        status = _status(d.get("status"), "status")
        if status is None:
            raise MalformedPayload("normalized callback has no status")
        event = d.get("event")
        if not isinstance(event, str) or not event or len(event) > _MAX_TEXT:
            raise MalformedPayload("normalized callback has no usable event")
        reviewer = d.get("reviewer")
        return cls(
            request_id=request_id,
            event=event,
            status=status,
            response_data=_carried(d.get("response_data"), "response_data"),
            reviewer=_reviewer_from([reviewer]) if isinstance(reviewer, dict) else None,
            occurred_at=_text(d.get("occurred_at")),
            response_time_seconds=_seconds(d.get("response_time_seconds")),
            default_response=_carried(d.get("default_response"), "default_response"),
        )


def _obj(value: Any, where: str) -> dict[str, Any] | None:
    """``value`` as an object; absent/null → None; any other type is malformed."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MalformedPayload(f"{where} must be an object, got {type(value).__name__}")
    return value


def _first(*pairs: tuple[dict[str, Any] | None, str]) -> tuple[Any, str]:
    """The first non-null ``container[key]`` and its name (the ``??`` chain of §7 item 11)."""
    for container, key in pairs:
        if container is not None:
            value = container.get(key)
            if value is not None:
                return value, key
    return None, ""


def _request_id(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**MAX_ID_CHARS:
        value = str(value)
    if not isinstance(value, str):
        got = "nothing" if value is None else type(value).__name__
        raise MalformedPayload(f"{where}: request id must be a string or integer, got {got}")
    if not value.strip():
        raise MalformedPayload(f"{where}: request id is empty")
    if len(value) > MAX_ID_CHARS:
        raise MalformedPayload(f"{where}: request id is longer than {MAX_ID_CHARS} characters")
    if not value.isprintable():
        raise MalformedPayload(f"{where}: request id contains control characters")
    return value


def _status(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedPayload(f"{where} must be a string, got {type(value).__name__}")
    word = value.strip().lower().replace("-", "_").replace(" ", "_")[:_MAX_TEXT]
    word = _STATUS_ALIASES.get(word, word)
    if not _STATUS_WORD.fullmatch(word):
        raise MalformedPayload(f"{where} {value[:40]!r} is not a request status")
    return word


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists/objects deeper than ``limit`` (iterative, linear)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _carried(value: Any, where: str) -> Any:
    """A value passed through as sent, once its nesting is known to be serializable."""
    if _depth_exceeds(value, MAX_VALUE_DEPTH):
        raise MalformedPayload(f"{where} nests deeper than {MAX_VALUE_DEPTH} levels")
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= _MAX_TEXT else None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _person(value: Any) -> dict[str, str]:
    """Reviewer fields from a user id/email string or a ``{user_id|id, name, email}`` object."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**64:
        value = str(value)
    if isinstance(value, str):
        text = _text(value.strip())
        if text is None:
            return {}
        return {"email": text} if "@" in text else {"id": text}
    if not isinstance(value, dict):
        return {}
    person: dict[str, str] = {}
    ident = value.get("user_id", value.get("id"))
    if isinstance(ident, int) and not isinstance(ident, bool) and abs(ident) < 10**64:
        ident = str(ident)
    for key, raw in (("id", ident), ("name", value.get("name")), ("email", value.get("email"))):
        text = _text(raw.strip()) if isinstance(raw, str) else None
        if text is not None:
            person[key] = text
    return person


def _reviewer_from(sources: list[Any]) -> dict[str, Any] | None:
    """Merge reviewer fields in precedence order, skipping a source that names someone else
    (a different id or email than already known), so two people are never mixed."""
    reviewer: dict[str, Any] = {}
    for source in sources:
        if source is None:
            continue
        person = _person(source)
        if reviewer and any(
            k in reviewer and reviewer[k] != person[k] for k in ("id", "email") if k in person
        ):
            continue
        for key, value in person.items():
            reviewer.setdefault(key, value)
    return reviewer or None


def _occurred(*containers: dict[str, Any] | None, keys: tuple[str, ...]) -> str | None:
    for container in containers:
        if container is None:
            continue
        for key in keys:
            text = _text(container.get(key))
            if text is not None:
                return text
    return None


def _event_for(status: str) -> str:
    return f"request.{status}"


def _occurred_keys(status: str, *tail: str) -> tuple[str, ...]:
    deadline = ("timeout_at",) if status == "timeout" else ()
    created = ("created_at",) if status == "pending" else ()
    return (*_DONE_KEYS, *deadline, *_PROGRESS_KEYS, *created, *tail)


def normalize_webhook(payload: Any) -> NormalizedCallback | Ignored:
    """One webhook/callback body (already JSON-decoded) → ``NormalizedCallback`` or ``Ignored``.

    Raises ``MalformedPayload`` for a request event without a usable request id, status or
    container of the wrong type.
    """
    if not isinstance(payload, dict):
        raise MalformedPayload(f"payload must be a JSON object, got {type(payload).__name__}")
    event = payload.get("event")
    if event is not None and not isinstance(event, str):
        raise MalformedPayload(f"event must be a string, got {type(event).__name__}")
    event_status: str | None = None
    if event is not None:
        name = event.strip().lower()
        if name.startswith(_OTHER_FAMILIES):
            return Ignored(f"event {event[:80]!r} is not about a request", event[:_MAX_TEXT])
        if name not in _EVENT_STATUS:
            raise UnknownEvent(f"unknown event {event[:80]!r}")
        event, event_status = name, _EVENT_STATUS[name]

    data = _obj(payload.get("data"), "data")
    request = _obj(data.get("request"), "data.request") if data is not None else None

    raw_id, id_key = _first((payload, "request_id"), (data, "request_id"), (request, "id"))
    if raw_id is None:
        raise MalformedPayload(
            "no request id (looked for request_id, data.request_id, data.request.id)"
        )
    where = {"request_id": "request_id", "id": "data.request.id"}[id_key]
    request_id = _request_id(raw_id, where)

    raw_status, _ = _first((payload, "status"), (data, "status"), (request, "status"))
    status = _status(raw_status, "status")
    if status is not None and status not in KNOWN_STATUSES:
        raise UnknownStatus(f"unknown status {status!r} (event {event or 'none'})")
    if event_status in TERMINAL_STATUSES and status is not None and status not in TERMINAL_STATUSES:
        # A terminal event is judged by its name: a progress status under it is a contradiction
        # (kept, not read as progress, which would drop the decision).
        raise UnknownStatus(f"status {status!r} contradicts event {event}")
    if status is None or (event_status == "escalated" and status not in TERMINAL_STATUSES):
        # The payload's own status wins (§7 item 11), except that an escalation stays visible
        # as a status unless the request has meanwhile ended.
        status = event_status
    if status is None:
        raise MalformedPayload("no event and no status: cannot tell what happened")

    response_data, _ = _first(
        (payload, "response_data"), (data, "response_data"), (request, "response_data")
    )
    if response_data is None and data is not None:
        response_data = data.get("decision")  # P4, the seed's shape
    default_response, _ = _first(
        (payload, "default_response"), (data, "default_response"), (request, "default_response")
    )
    reviewer = _reviewer_from(
        [
            payload.get("response_by"),
            data and data.get("response_by"),
            data and data.get("response_by_user"),
            request and request.get("response_by"),
            request and request.get("response_by_user"),
            data and data.get("reviewer"),
            data and data.get("reviewer_id"),
            request and request.get("claimed_by"),
            data and data.get("claimed_by"),
        ]
    )
    occurred_at = _occurred(payload, keys=("timestamp", *_DONE_KEYS)) or _occurred(
        data, request, keys=_occurred_keys(status)
    )
    seconds, _ = _first(
        (payload, "response_time_seconds"),
        (data, "response_time_seconds"),
        (request, "response_time_seconds"),
    )
    return NormalizedCallback(
        request_id=request_id,
        event=event if event is not None else _event_for(status),
        status=status,
        response_data=_carried(response_data, "response_data"),
        reviewer=reviewer,
        occurred_at=occurred_at,
        response_time_seconds=_seconds(seconds),
        default_response=_carried(default_response, "default_response"),
    )


def normalize_request_object(obj: Any) -> NormalizedCallback:
    """A polled request → ``NormalizedCallback`` (event derived from its status).

    Accepts the GET envelope (``{"data": {"request": {...}}}``), its ``data`` or
    ``data.request``, the first-loop page's flat ``data``, and list items. Raises
    ``MalformedPayload`` when there is no usable id or status.
    """
    if not isinstance(obj, dict):
        raise MalformedPayload(f"request object must be a JSON object, got {type(obj).__name__}")
    # Unwrap at most two levels (envelope → data → request); fixed work, no recursion.
    for wrapper in ("data", "request"):
        if obj.get("id") is None and obj.get("request_id") is None:
            inner = obj.get(wrapper)
            if isinstance(inner, dict):
                obj = inner
    raw_id, id_key = _first((obj, "id"), (obj, "request_id"))
    request_id = _request_id(raw_id, id_key or "id")
    status = _status(obj.get("status"), "status")
    if status is None:
        raise MalformedPayload("request object has no status")
    return NormalizedCallback(
        request_id=request_id,
        event=_event_for(status),
        status=status,
        response_data=_carried(obj.get("response_data"), "response_data"),
        reviewer=_reviewer_from(
            [obj.get("response_by"), obj.get("response_by_user"), obj.get("claimed_by")]
        ),
        occurred_at=_occurred(obj, keys=_occurred_keys(status, "updated_at")),
        response_time_seconds=_seconds(obj.get("response_time_seconds")),
        default_response=_carried(obj.get("default_response"), "default_response"),
    )


def request_id_hint(payload: Any) -> str | None:
    """Best effort: the request id a body names, for keying a delivery that cannot be used
    (so a replay lands on the request's partition). ``None`` unless it is a clean id."""
    if not isinstance(payload, dict):
        return None
    data = payload.get("data")
    data = data if isinstance(data, dict) else None
    request = data.get("request") if data is not None else None
    request = request if isinstance(request, dict) else None
    raw, _ = _first((payload, "request_id"), (data, "request_id"), (request, "id"))
    if isinstance(raw, int) and not isinstance(raw, bool) and abs(raw) < 10**64:
        raw = str(raw)
    if isinstance(raw, str) and 0 < len(raw) <= MAX_ID_CHARS and raw.isprintable():
        return raw
    return None
