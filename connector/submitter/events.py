"""Parsing and validating input content events (design §3). Pure: no I/O.

Accepts the seed's shape (``content``, ``content_type: text``, ``priority: normal``,
``ai_analysis``, ``metadata``) and the documented fields. Every rejection raises
``InvalidEvent`` with a stable reason token and a detail naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from connector.records import (
    REASON_INVALID_JSON,
    REASON_INVALID_UTF8,
    REASON_SCHEMA,
    REASON_TOO_LARGE,
    SourceRef,
)

PRIORITIES: Final = {
    "low": "low",
    "normal": "medium",
    "medium": "medium",
    "high": "high",
    "critical": "critical",
}
CONTENT_TYPES: Final = {
    "text": "markdown",
    "markdown": "markdown",
    "image": "image",
    "file": "file",
    "video": "video",
    "audio": "audio",
}
MEDIA_TYPES: Final = ("image", "file", "video", "audio")  # each needs its <type>_url
MAX_URL_CHARS: Final = 2048
MAX_ID_CHARS: Final = 256
_SCORES: Final = ("confidence", "risk_score")


class InvalidEvent(Exception):
    """The event can never become a HITL request; it goes to the DLQ with ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class ContentEvent:
    """A validated input event, already mapped to HITL's vocabulary (not frozen: a frozen
    dataclass's ``__init__`` costs a visible share of the policy path's CPU per event)."""

    event_id: str
    content: str
    content_type: str  # the event's own word (text, markdown, image)
    hitl_type: str  # markdown | image
    priority: str  # low | medium | high | critical
    loop_id: str | None
    image_url: str | None  # for image events; media_url holds any media type's URL
    ai_analysis: dict[str, Any] | None
    metadata: dict[str, Any] | None
    media_url: str | None = None  # image_url, file_url, video_url or audio_url
    file_fields: dict[str, str | None] = field(default_factory=dict)  # file_type, file_name

    @property
    def flags(self) -> list[str]:
        flags = (self.ai_analysis or {}).get("flags") or []
        return [f for f in flags if isinstance(f, str)]

    def score(self, name: str) -> float | None:
        value = (self.ai_analysis or {}).get(name)
        return float(value) if isinstance(value, int | float) else None


def _opt_str(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None or type(value) is str:  # orjson gives exact types
        return value
    raise InvalidEvent(REASON_SCHEMA, f"{name} must be a string, got {type(value).__name__}")


def _opt_obj(obj: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = obj.get(name)
    if value is None or type(value) is dict:
        return value
    raise InvalidEvent(REASON_SCHEMA, f"{name} must be an object, got {type(value).__name__}")


def _event_id(obj: dict[str, Any], key: bytes | None, source: SourceRef) -> str:
    raw = obj.get("id")
    if type(raw) is str:
        event_id = raw.strip()
        if event_id:
            return _safe_token(event_id, "id")
    elif type(raw) is int:
        return str(raw)
    elif raw is not None:  # bool is not an id
        raise InvalidEvent(
            REASON_SCHEMA, f"id must be a string or integer, got {type(raw).__name__}"
        )
    if key:
        try:
            event_id = key.decode("utf-8")
        except UnicodeDecodeError:
            event_id = key.hex()
    else:
        event_id = f"{source.topic}:{source.partition}:{source.offset}"
    return _safe_token(event_id, "id (from the record key)")


def _safe_token(value: str, where: str) -> str:
    """``value`` if it may go into an HTTP header, URL or log line: at most ``MAX_ID_CHARS``
    characters, none of them a control, format or line/paragraph separator character (CR/LF
    in an id would otherwise add a header to the create request: it is the Idempotency-Key)."""
    if len(value) > MAX_ID_CHARS:
        raise InvalidEvent(REASON_SCHEMA, f"{where} is longer than {MAX_ID_CHARS} characters")
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        raise InvalidEvent(
            REASON_SCHEMA,
            f"{where} contains the control character U+{ord(bad):04X} at position "
            f"{value.index(bad)} (ids go into HTTP headers and URLs)",
        )
    return value


def _check_analysis(analysis: dict[str, Any]) -> None:
    # Exact types: values come from orjson, and bool (a subclass of int) is not a score.
    for name in _SCORES:
        value = analysis.get(name)
        if value is None:
            continue
        if type(value) is not float and type(value) is not int:
            raise InvalidEvent(REASON_SCHEMA, f"ai_analysis.{name} must be a number")
        if not 0.0 <= value <= 1.0:
            raise InvalidEvent(REASON_SCHEMA, f"ai_analysis.{name} must be between 0 and 1")
    flags = analysis.get("flags")
    if flags is not None:
        if type(flags) is not list:
            raise InvalidEvent(REASON_SCHEMA, "ai_analysis.flags must be a list of strings")
        for flag in flags:
            if type(flag) is not str:
                raise InvalidEvent(REASON_SCHEMA, "ai_analysis.flags must be a list of strings")


def parse_event(
    value: bytes | None, key: bytes | None, source: SourceRef, *, max_bytes: int
) -> ContentEvent:
    """Decode and validate one input record value."""
    if value is None:
        raise InvalidEvent(REASON_SCHEMA, "record has no value (tombstone)")
    if len(value) > max_bytes:
        raise InvalidEvent(REASON_TOO_LARGE, f"value is {len(value)} bytes, limit {max_bytes}")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent(REASON_INVALID_UTF8, "value is not valid UTF-8") from None
        raise InvalidEvent(REASON_INVALID_JSON, f"value is not JSON: {exc}") from None
    if type(obj) is not dict:
        raise InvalidEvent(REASON_SCHEMA, f"value must be a JSON object, got {type(obj).__name__}")

    event_id = _event_id(obj, key, source)
    content = _opt_str(obj, "content")
    if content is None:
        content = _opt_str(obj, "text")
    raw_type = _opt_str(obj, "content_type")
    content_type = "text" if not raw_type else raw_type.lower()
    hitl_type = CONTENT_TYPES.get(content_type)
    if hitl_type is None:
        raise InvalidEvent(
            REASON_SCHEMA,
            f"content_type {content_type!r} is not one of {', '.join(CONTENT_TYPES)}",
        )
    media_url = None
    if hitl_type in MEDIA_TYPES:
        media_url = _media_url(obj, hitl_type)
    elif content is None or not content.strip():
        raise InvalidEvent(REASON_SCHEMA, "content (or text) is required and must not be empty")
    raw_priority = _opt_str(obj, "priority")
    priority = "medium" if not raw_priority else PRIORITIES.get(raw_priority.lower())
    if priority is None:
        raise InvalidEvent(
            REASON_SCHEMA,
            f"priority {raw_priority.lower()!r} is not one of low, normal, medium, high, critical",  # type: ignore[union-attr]
        )
    analysis = _opt_obj(obj, "ai_analysis")
    if analysis is not None:
        _check_analysis(analysis)
    loop_id = _opt_str(obj, "loop_id")
    if loop_id is not None:
        loop_id = _safe_token(loop_id.strip(), "loop_id") if loop_id.strip() else None
    return ContentEvent(
        event_id,
        content or "",
        content_type,
        hitl_type,
        priority,
        loop_id,
        media_url if hitl_type == "image" else None,
        analysis,
        _opt_obj(obj, "metadata"),
        media_url,
        (
            {"file_type": _opt_str(obj, "file_type"), "file_name": _opt_str(obj, "file_name")}
            if hitl_type == "file"
            else {}
        ),
    )


def _media_url(obj: dict[str, Any], hitl_type: str) -> str:
    name = f"{hitl_type}_url"
    media_url = _opt_str(obj, name)
    if not media_url or not media_url.startswith(("http://", "https://")):
        raise InvalidEvent(REASON_SCHEMA, f"{hitl_type} events need an http(s) {name}")
    if len(media_url) > MAX_URL_CHARS or not media_url.isprintable() or " " in media_url:
        raise InvalidEvent(
            REASON_SCHEMA,
            f"{name} must be a URL of at most {MAX_URL_CHARS} characters "
            "without spaces or control characters",
        )
    return media_url
