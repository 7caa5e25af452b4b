"""Joining one callback record with its request: the decision, escalation or unmatched record.

Pure apart from the table it reads and marks. For a terminal callback whose request is in
the table it returns the decision record and the request's tombstone (written in the same
transaction), and forgets the request at once, so a duplicate in the same batch yields
nothing. A callback whose request is unknown either was resolved already (dropped, counted)
or must wait (the submitter's transaction may not be visible yet).
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from connector.config import TopicSettings
from connector.hitl.payloads import NormalizedCallback, normalize_webhook
from connector.metrics import Metrics
from connector.records import (
    SCHEMA_DECISION,
    OutRecord,
    RequestEntry,
    base_headers,
    decision_value,
    dumps,
    iso_now,
)
from connector.resolver.answers import interpret
from connector.resolver.table import RequestTable

log = logging.getLogger(__name__)

SCHEMA_ESCALATION: Final = "hitl.escalation.v1"
# Progress published on the escalations topic, each with its own ``kind``: a claim (someone
# took the request) is not an escalation.
PROGRESS_KIND: Final = {"claimed": "claim", "assigned": "assignment", "escalated": "escalation"}
NON_TERMINAL_JOINED: Final = frozenset(PROGRESS_KIND)


@dataclass(slots=True)
class JoinStats:
    """What joining produced in one batch; counted in Prometheus once its transaction commits."""

    decisions: dict[tuple[str | None, str, str], int] = field(default_factory=dict)
    escalations: int = 0
    duplicates: int = 0
    unmatched: dict[str, int] = field(default_factory=dict)
    ignored: int = 0
    unmatched_choices: dict[str, int] = field(default_factory=dict)  # by response type
    e2e_seconds: list[tuple[str, float]] = field(default_factory=list)
    human_seconds: list[tuple[str, float]] = field(default_factory=list)

    def unmatched_reason(self, reason: str) -> None:
        self.unmatched[reason] = self.unmatched.get(reason, 0) + 1

    def observe(self, m: Metrics) -> None:
        decided = 0
        for (decision, decided_by, via), n in self.decisions.items():
            m.decisions.labels(m.decision_label(decision), decided_by, via).inc(n)
            decided += n
        if decided:
            m.callbacks.labels("decided").inc(decided)
        for result, n in (
            ("duplicate", self.duplicates),
            ("escalation", self.escalations),
            ("ignored", self.ignored),
            ("unmatched", sum(self.unmatched.values())),
        ):
            if n:
                m.callbacks.labels(result).inc(n)
        for reason, n in self.unmatched.items():
            m.unmatched.labels(reason).inc(n)
        for kind, n in self.unmatched_choices.items():
            m.unmatched_choices.labels(kind).inc(n)
        for loop, seconds in self.e2e_seconds:
            m.decision_latency.labels(m.loop_label(loop)).observe(seconds)
        for loop, seconds in self.human_seconds:
            m.human_response.labels(m.loop_label(loop)).observe(seconds)


@dataclass(frozen=True, slots=True)
class ParsedCallback:
    request_id: str
    callback: NormalizedCallback
    via: str
    token_event_id: str | None
    received_ts: float | None


class Wait:
    """The request is not in the table yet: keep the callback and try again later."""


WAIT: Final = Wait()


def parse_callback_value(value: bytes | None) -> ParsedCallback | None:
    """A ``hitl.callbacks`` value, or None when it cannot be read (untrusted input)."""
    if value is None:
        return None
    try:
        data: Any = orjson.loads(value)
        if not isinstance(data, dict):
            return None
        if data.get("callback") is None and isinstance(data.get("raw"), str):
            callback = _renormalized(data)  # a kept delivery, replayed once its cause is fixed
            data["request_id"] = callback.request_id
        else:
            callback = NormalizedCallback.from_json(data["callback"])
        token = data.get("token_event_id")
        received = data.get("received_ts")
        return ParsedCallback(
            request_id=str(data["request_id"]),
            callback=callback,
            via=str(data.get("via") or "webhook"),
            token_event_id=str(token) if token is not None else None,
            received_ts=float(received) if isinstance(received, int | float) else None,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error):
        return None


def _renormalized(data: dict[str, Any]) -> NormalizedCallback:
    """The raw body of a kept delivery (``gateway.sink.unusable_value``), normalized now.
    Raises ``ValueError`` (incl. ``MalformedPayload``) when it still cannot be used."""
    raw = data["raw"]
    body = base64.b64decode(raw, validate=True) if data.get("raw_encoding") == "base64" else raw
    result = normalize_webhook(orjson.loads(body))
    if not isinstance(result, NormalizedCallback):
        raise ValueError(result.reason)
    return result


class Joiner:
    """Turns callbacks into output records against the request table."""

    def __init__(self, topics: TopicSettings, table: RequestTable) -> None:
        self._topics = topics
        self._table = table
        self.batch = JoinStats()  # the batch in progress

    def take_batch(self) -> JoinStats:
        """The counts of the batch in progress, to be counted once its transaction commits."""
        batch, self.batch = self.batch, JoinStats()
        return batch

    def count(self, batch: JoinStats, metrics: Metrics | None) -> None:
        """A batch was committed: count it."""
        if metrics is not None:
            batch.observe(metrics)

    def commit_stats(self, metrics: Metrics | None) -> None:
        """The batch in progress is done (committed, or nothing to commit): count it."""
        self.count(self.take_batch(), metrics)

    def discard_stats(self) -> None:
        """The batch was aborted: it will be joined again."""
        self.batch = JoinStats()

    def unmatched(self, key: bytes | None, value: bytes | None, reason: str) -> OutRecord:
        request_id = key.decode("utf-8", "replace") if key else None
        log.warning(
            "callback to unmatched: %s", reason, extra={"request_id": request_id, "reason": reason}
        )
        self.batch.unmatched_reason(reason)
        headers = [("error.reason", reason.encode())]
        return OutRecord(self._topics.unmatched, key, value, headers)

    def join(
        self, partition: int, key: bytes | None, value: bytes | None, now: float | None = None
    ) -> list[OutRecord] | Wait:
        parsed = parse_callback_value(value)
        if parsed is None:
            return [self.unmatched(key, value, "unreadable")]
        entry = self._table.get(partition, parsed.request_id)
        if entry is None:
            if self._table.was_resolved(parsed.request_id):
                self.batch.duplicates += 1
                return []
            return WAIT
        if parsed.token_event_id is not None and parsed.token_event_id != entry.event_id:
            # A callback URL issued for one event cannot answer another event's request.
            return [self.unmatched(key, value, "token_mismatch")]
        now = time.time() if now is None else now
        status = parsed.callback.status
        if parsed.callback.terminal:
            self._table.resolve(partition, parsed.request_id)
            return self._decision(entry, parsed, now)
        if status in NON_TERMINAL_JOINED and self._topics.escalations:
            self.batch.escalations += 1
            return [self._escalation(entry, parsed, now)]
        self.batch.ignored += 1
        return []

    def _decision(self, entry: RequestEntry, parsed: ParsedCallback, now: float) -> list[OutRecord]:
        cb = parsed.callback
        answer = interpret(
            entry.response_type, entry.options, cb.status, cb.response_data, entry.default_response
        )
        ts = entry.source.timestamp_ms
        e2e = None if not ts or ts <= 0 else round(now - ts / 1000, 6)
        human = cb.response_time_seconds
        value = decision_value(
            event_id=entry.event_id,
            request_id=entry.request_id,
            loop_id=entry.loop_id,
            status=cb.status,
            decision=answer.decision,
            response=answer.response,
            raw_response=answer.raw_response,
            decided_by=answer.decided_by,
            via=parsed.via,
            source=entry.source,
            submitted_at=entry.submitted_at,
            decided_at=iso_now(now),
            reviewer=cb.reviewer,
            response_time_seconds=human,
            end_to_end_seconds=e2e,
        )
        tp = entry.traceparent.encode() if entry.traceparent else None
        headers = base_headers(
            SCHEMA_DECISION, event_id=entry.event_id, request_id=entry.request_id, traceparent=tp
        )
        key = entry.key if entry.key is not None else entry.event_id.encode()
        log.debug(
            "decision",
            extra={
                "event_id": entry.event_id,
                "request_id": entry.request_id,
                "decision": answer.decision,
                "via": parsed.via,
            },
        )
        if answer.unmatched:
            kind = entry.response_type
            self.batch.unmatched_choices[kind] = self.batch.unmatched_choices.get(kind, 0) + 1
            log.warning(
                "answer names %d choice(s) matching no option sent; kept in response",
                answer.unmatched,
                extra={"request_id": entry.request_id, "event_id": entry.event_id},
            )
        label = (answer.decision, answer.decided_by, parsed.via)
        self.batch.decisions[label] = self.batch.decisions.get(label, 0) + 1
        if e2e is not None:
            self.batch.e2e_seconds.append((entry.loop_id, e2e))
        if human is not None:
            self.batch.human_seconds.append((entry.loop_id, human))
        tombstone = OutRecord(
            self._topics.requests,
            entry.request_id.encode(),
            None,
            base_headers("hitl.request.tombstone.v1", request_id=entry.request_id),
        )
        return [OutRecord(self._topics.output, key, dumps(value), headers), tombstone]

    def _escalation(self, entry: RequestEntry, parsed: ParsedCallback, now: float) -> OutRecord:
        assert self._topics.escalations is not None
        cb = parsed.callback
        value = {
            "schema": SCHEMA_ESCALATION,
            "kind": PROGRESS_KIND.get(cb.status, "escalation"),
            "event": cb.event,
            "status": cb.status,
            "event_id": entry.event_id,
            "request_id": entry.request_id,
            "loop_id": entry.loop_id,
            "reviewer": cb.reviewer,
            "occurred_at": cb.occurred_at,
            "observed_at": iso_now(now),
            "via": parsed.via,
            "source": entry.source.as_json(),
        }
        headers = base_headers(
            SCHEMA_ESCALATION, event_id=entry.event_id, request_id=entry.request_id
        )
        key = entry.key if entry.key is not None else entry.event_id.encode()
        return OutRecord(self._topics.escalations, key, dumps(value), headers)
