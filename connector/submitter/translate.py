"""Turning a validated event into a HITL.sh create-request body. Pure: no I/O.

Sends only documented create fields (hitl-api.md §2.2). Text over the limit is cut with a
visible marker; the caller counts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from connector.config import ReviewSettings
from connector.records import SourceRef
from connector.response_types import effective_config
from connector.submitter.events import ContentEvent

TRUNCATION_MARKER: Final = "\n\n[… truncated by hitl-connector: {n} characters omitted]"
IMAGE_PLACEHOLDER: Final = "Please review this image."


@dataclass(frozen=True, slots=True)
class CreateBody:
    body: dict[str, Any]
    truncated: bool


class _SafeDict(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _render_text(event: ContentEvent, review: ReviewSettings) -> str:
    if review.text_template:
        fields = _SafeDict(
            content=event.content,
            id=event.event_id,
            content_type=event.content_type,
            priority=event.priority,
            metadata=event.metadata or {},
            flags=", ".join(event.flags),
        )
        return review.text_template.format_map(fields)
    return event.content or IMAGE_PLACEHOLDER


def _cut(text: str, limit: int) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    # The marker's length depends on the omitted count; two passes settle it.
    keep = limit - len(TRUNCATION_MARKER.format(n=len(text)))
    marker = TRUNCATION_MARKER.format(n=len(text) - keep)
    keep = limit - len(marker)
    return text[:keep] + TRUNCATION_MARKER.format(n=len(text) - keep), True


def response_config(review: ReviewSettings) -> dict[str, Any]:
    """The ``response_config`` sent with every request (``connector.response_types``)."""
    return effective_config(review.response_type, review.response_config, review.options)


def build_create_body(
    event: ContentEvent,
    review: ReviewSettings,
    source: SourceRef,
    *,
    callback_url: str | None = None,
    platform_version: str | None = None,
    response_cfg: dict[str, Any] | None = None,
) -> CreateBody:
    """The create-request body for ``event``, exactly as documented.

    ``response_cfg``: ``response_config(review)`` computed once by a caller building many
    bodies (it is shared between them, so nobody may change it afterwards).
    """
    text, truncated = _cut(_render_text(event, review), review.max_text_chars)
    if not text.strip():
        text = IMAGE_PLACEHOLDER
    cfg = response_cfg if response_cfg is not None else response_config(review)
    if review.response_type == "editable_text" and "draft_text" not in cfg:
        cfg = {**cfg, "draft_text": text}  # the reviewer edits the request's own text
    context: dict[str, Any] = {
        "connector": {
            "event_id": event.event_id,
            "topic": source.topic,
            "partition": source.partition,
            "offset": source.offset,
        }
    }
    if event.ai_analysis is not None:
        context["ai_analysis"] = event.ai_analysis
    if event.metadata is not None:
        context["metadata"] = event.metadata
    body: dict[str, Any] = {
        "processing_type": review.processing_type,
        "type": event.hitl_type,
        "priority": event.priority,
        "request_text": text,
        "response_type": review.response_type,
        "response_config": cfg,
        "default_response": review.default_response,
        "platform": review.platform,
        "context": context,
    }
    if review.processing_type == "time-sensitive":
        body["timeout_seconds"] = review.timeout_seconds.get(event.priority, 3600)  # type: ignore[call-overload]
    if event.media_url is not None:  # image, file, video, audio: their URL field
        body[f"{event.hitl_type}_url"] = event.media_url
        if event.hitl_type == "file":
            body.update({k: v for k, v in event.file_fields.items() if v is not None})
    if callback_url:
        body["callback_url"] = callback_url
    if platform_version:
        body["platform_version"] = platform_version
    return CreateBody(body, truncated)
