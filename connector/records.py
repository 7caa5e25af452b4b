"""Record shapes the connector writes to Kafka, and their headers (design §3).

Owns: the JSON layout of decision, request-table and DLQ records, header names, time
formatting. Does not own: parsing input events (``submitter.events``) or Kafka I/O.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

Headers = list[tuple[str, bytes]]

SCHEMA_DECISION: Final = "hitl.decision.v1"
SCHEMA_REQUEST: Final = "hitl.request.v1"
SCHEMA_CALLBACK: Final = "hitl.callback.v1"
SCHEMA_DLQ: Final = "hitl.dlq.v1"

H_CONTENT_TYPE: Final = "content-type"
H_SCHEMA: Final = "hitl-schema"
H_EVENT_ID: Final = "hitl-event-id"
H_REQUEST_ID: Final = "hitl-request-id"
H_TRACEPARENT: Final = "traceparent"

# DLQ reason tokens are a stable contract for operators' filters and alerts.
REASON_INVALID_JSON: Final = "invalid_json"
REASON_INVALID_UTF8: Final = "invalid_utf8"
REASON_SCHEMA: Final = "schema"
REASON_TOO_LARGE: Final = "too_large"
REASON_NO_LOOP: Final = "no_loop"
REASON_HITL_REJECTED: Final = "hitl_rejected"
DLQ_REASONS: Final = (
    REASON_INVALID_JSON,
    REASON_INVALID_UTF8,
    REASON_SCHEMA,
    REASON_TOO_LARGE,
    REASON_NO_LOOP,
    REASON_HITL_REJECTED,
)

_JSON: Final = b"application/json"


def dumps(value: Any) -> bytes:
    """Serialize a record value (orjson; non-str dict keys allowed, at a cost only then:
    ``OPT_NON_STR_KEYS`` makes every call about twice as slow)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: a non-str key (or a type it cannot write)
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


_seconds: dict[int, str] = {}  # epoch second → "YYYY-MM-DDTHH:MM:SS" (a few recent ones)


def _iso(second: int, micros: int) -> str:
    """``datetime.isoformat`` of a UTC instant with ``Z``; the date part is cached per second
    (the submit path formats two timestamps per event: the record's and now)."""
    prefix = _seconds.get(second)
    if prefix is None:
        if len(_seconds) >= 64:
            _seconds.clear()
        prefix = _seconds[second] = datetime.fromtimestamp(second, UTC).isoformat()[:19]
    return f"{prefix}.{micros:06d}Z" if micros else f"{prefix}Z"


def iso_from_ms(timestamp_ms: int | None) -> str | None:
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    second, millis = divmod(timestamp_ms, 1000)
    return _iso(second, millis * 1000)


def epoch(text: object) -> float | None:
    """Epoch seconds of an ISO-8601 timestamp (``Z`` allowed, no offset read as UTC); None
    when absent or unreadable. Every timestamp the connector reads goes through here."""
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def iso_now(now: float) -> str:
    frac, whole = math.modf(now)  # rounded as datetime.fromtimestamp rounds
    micros = round(frac * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    if now < 0:
        return datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
    return _iso(int(whole), micros)


def key_to_text(key: bytes | None) -> str | None:
    """Record keys travel inside JSON as base64 so any bytes survive the round trip."""
    return None if key is None else base64.b64encode(key).decode("ascii")


def key_from_text(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


@dataclass(slots=True)
class SourceRef:
    """Where an input record came from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": iso_from_ms(self.timestamp_ms),
        }


@dataclass(slots=True)
class OutRecord:
    """One record to produce inside a checkpoint transaction."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


def base_headers(
    schema: str,
    *,
    event_id: str | None = None,
    request_id: str | None = None,
    traceparent: bytes | None = None,
) -> Headers:
    headers: Headers = [(H_CONTENT_TYPE, _JSON), (H_SCHEMA, schema.encode())]
    if event_id is not None:
        headers.append((H_EVENT_ID, event_id.encode("utf-8", "replace")))
    if request_id is not None:
        headers.append((H_REQUEST_ID, request_id.encode("utf-8", "replace")))
    if traceparent is not None:
        headers.append((H_TRACEPARENT, traceparent))
    return headers


def find_header(headers: Any, name: str) -> bytes | None:
    """The first header called ``name`` from an aiokafka header sequence, if any."""
    for key, value in headers or ():
        if key == name:
            return bytes(value) if value is not None else None
    return None


def dlq_record(
    topic: str,
    *,
    key: bytes | None,
    value: bytes | None,
    source: SourceRef,
    reason: str,
    detail: str,
    original_headers: Any = (),
    max_value_bytes: int | None = None,
) -> OutRecord:
    """The original key and value bytes unchanged, plus reason and source headers.

    A value over ``max_value_bytes`` cannot be produced at all (the producer's and the DLQ
    topic's size limits), so it is left out and ``error.value_omitted`` gives its size; the
    ``source.*`` headers still locate the original in the input topic.
    """
    headers: Headers = [(k, bytes(v)) for k, v in (original_headers or ()) if v is not None]
    headers += [
        ("error.reason", reason.encode()),
        ("error.detail", detail[:1000].encode("utf-8", "replace")),
        ("source.topic", source.topic.encode()),
        ("source.partition", str(source.partition).encode()),
        ("source.offset", str(source.offset).encode()),
        ("source.timestamp", str(source.timestamp_ms if source.timestamp_ms else "").encode()),
    ]
    if value is not None and max_value_bytes is not None and len(value) > max_value_bytes:
        headers.append(("error.value_omitted", str(len(value)).encode()))
        value = None
    if sum(len(k) + len(v) for k, v in headers) > 64 * 1024:
        # Original headers are untrusted and count against the same size limit.
        headers = [(k, v) for k, v in headers if k.startswith(("error.", "source."))]
    return OutRecord(topic, key, value, headers)


@dataclass(frozen=True, slots=True)
class RequestEntry:
    """A row of the ``hitl.requests`` table: what the resolver needs to answer a request."""

    request_id: str
    event_id: str
    key: bytes | None
    loop_id: str
    source: SourceRef
    response_type: str
    options: list[dict[str, str]]
    default_response: Any
    timeout_at: str | None
    submitted_at: str
    traceparent: str | None = None
    callback_token: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "request_id": self.request_id,
            "event_id": self.event_id,
            "key": key_to_text(self.key),
            "loop_id": self.loop_id,
            "source": self.source.as_json() | {"timestamp_ms": self.source.timestamp_ms},
            "response_type": self.response_type,
            "options": self.options,
            "default_response": self.default_response,
            "timeout_at": self.timeout_at,
            "submitted_at": self.submitted_at,
            "traceparent": self.traceparent,
            "callback_token": self.callback_token,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestEntry:
        src = data["source"]
        return cls(
            request_id=str(data["request_id"]),
            event_id=str(data["event_id"]),
            key=key_from_text(data.get("key")),
            loop_id=str(data["loop_id"]),
            source=SourceRef(
                str(src["topic"]),
                int(src["partition"]),
                int(src["offset"]),
                src.get("timestamp_ms"),
            ),
            response_type=str(data["response_type"]),
            options=list(data.get("options") or []),
            default_response=data.get("default_response"),
            timeout_at=data.get("timeout_at"),
            submitted_at=str(data["submitted_at"]),
            traceparent=data.get("traceparent"),
            callback_token=bool(data.get("callback_token", False)),
        )

    def to_record(self, topic: str) -> OutRecord:
        tp = self.traceparent.encode() if self.traceparent else None
        headers = base_headers(
            SCHEMA_REQUEST, event_id=self.event_id, request_id=self.request_id, traceparent=tp
        )
        # Keyed by request_id: co-partitioned with hitl.callbacks (same key, same partitioner).
        return OutRecord(topic, self.request_id.encode(), dumps(self.to_json()), headers)


def decision_value(
    *,
    event_id: str,
    request_id: str | None,
    loop_id: str | None,
    status: str,
    decision: Any,
    response: Any,
    raw_response: Any,
    decided_by: str,
    via: str,
    source: SourceRef,
    submitted_at: str | None,
    decided_at: str,
    reviewer: dict[str, Any] | None = None,
    response_time_seconds: float | None = None,
    end_to_end_seconds: float | None = None,
) -> dict[str, Any]:
    """The ``content.decisions`` value (schema ``hitl.decision.v1``)."""
    return {
        "schema": SCHEMA_DECISION,
        "event_id": event_id,
        "request_id": request_id,
        "loop_id": loop_id,
        "status": status,
        "decision": decision,
        "response": response,
        "raw_response": raw_response,
        "decided_by": decided_by,
        "via": via,
        "reviewer": reviewer,
        "source": source.as_json(),
        "submitted_at": submitted_at,
        "decided_at": decided_at,
        "response_time_seconds": response_time_seconds,
        "latency": {
            "end_to_end_seconds": end_to_end_seconds,
            "human_seconds": response_time_seconds,
        },
    }
