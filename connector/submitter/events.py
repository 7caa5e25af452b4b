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


class InvalidEvent(Exception):
    """The event can never become a HITL request; it goes to the DLQ with ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ContentEvent:
    """A validated input event, already mapped to HITL's vocabulary."""

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
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(REASON_SCHEMA, f"{name} must be a string, got {type(value).__name__}")
    return value


def _opt_obj(obj: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidEvent(REASON_SCHEMA, f"{name} must be an object, got {type(value).__name__}")
    return value


def _event_id(obj: dict[str, Any], key: bytes | None, source: SourceRef) -> str:
    raw = obj.get("id")
    if isinstance(raw, bool) or (raw is not None and not isinstance(raw, str | int)):
        raise InvalidEvent(
            REASON_SCHEMA, f"id must be a string or integer, got {type(raw).__name__}"
        )
    if raw is not None and str(raw).strip():
        event_id = str(raw).strip()
    elif key:
        try:
            event_id = key.decode("utf-8")
        except UnicodeDecodeError:
            event_id = key.hex()
    else:
        event_id = f"{source.topic}:{source.partition}:{source.offset}"
    where = "id" if raw is not None and str(raw).strip() else "id (from the record key)"
    return _safe_token(event_id, where)


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


def _check_analysis(analysis: dict[str, Any] | None) -> None:
    if analysis is None:
        return
    for name in ("confidence", "risk_score"):
        value = analysis.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidEvent(REASON_SCHEMA, f"ai_analysis.{name} must be a number")
        if not 0.0 <= float(value) <= 1.0:
            raise InvalidEvent(REASON_SCHEMA, f"ai_analysis.{name} must be between 0 and 1")
    flags = analysis.get("flags")
    if flags is not None and (
        not isinstance(flags, list) or not all(isinstance(f, str) for f in flags)
    ):
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
    if not isinstance(obj, dict):
        raise InvalidEvent(REASON_SCHEMA, f"value must be a JSON object, got {type(obj).__name__}")

    event_id = _event_id(obj, key, source)
    content = _opt_str(obj, "content")
    if content is None:
        content = _opt_str(obj, "text")
    content_type = (_opt_str(obj, "content_type") or "text").lower()
    hitl_type = CONTENT_TYPES.get(content_type)
    if hitl_type is None:
        raise InvalidEvent(
            REASON_SCHEMA,
            f"content_type {content_type!r} is not one of {', '.join(CONTENT_TYPES)}",
        )
    media_url = None
    if hitl_type in MEDIA_TYPES:
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
    elif content is None or not content.strip():
        raise InvalidEvent(REASON_SCHEMA, "content (or text) is required and must not be empty")
    raw_priority = (_opt_str(obj, "priority") or "medium").lower()
    priority = PRIORITIES.get(raw_priority)
    if priority is None:
        raise InvalidEvent(
            REASON_SCHEMA,
            f"priority {raw_priority!r} is not one of low, normal, medium, high, critical",
        )
    analysis = _opt_obj(obj, "ai_analysis")
    _check_analysis(analysis)
    loop_id = _opt_str(obj, "loop_id")
    return ContentEvent(
        event_id=event_id,
        content=content or "",
        content_type=content_type,
        hitl_type=hitl_type,
        priority=priority,
        loop_id=_safe_token(loop_id.strip(), "loop_id") if loop_id and loop_id.strip() else None,
        image_url=media_url if hitl_type == "image" else None,
        ai_analysis=analysis,
        metadata=_opt_obj(obj, "metadata"),
        media_url=media_url,
        file_fields=(
            {"file_type": _opt_str(obj, "file_type"), "file_name": _opt_str(obj, "file_name")}
            if hitl_type == "file"
            else {}
        ),
    )
