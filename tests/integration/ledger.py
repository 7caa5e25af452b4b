"""The ledger checker every scenario ends with: where did each input record go?

``await ledger(settings, sandbox_url, recovery_s=...)`` reads the input, output, DLQ and
internal topics (``hitl.requests``, ``hitl.callbacks``) with read_committed, plus the
sandbox's requests, and counts:

- ``events_in``            input records (tombstones and invalid ones included);
- ``decisions_out``        records on the output topic;
- ``dlq``                  records on the DLQ topic;
- ``lost``                 input records with neither a HITL request (a sandbox request whose
                           ``context.connector`` names the record or its event id, or a
                           ``hitl.requests`` row), nor a decision record, nor a DLQ record;
- ``duplicate_requests``   sandbox requests beyond the first per source record (the
                           ``context.connector`` coordinates: the ``Idempotency-Key`` proves
                           nothing against a service that ignores it);
- ``duplicate_decisions``  decision records beyond the first per request id (per event id for
                           policy decisions, which have no request);
- ``undecided``            input records that reached neither a decision nor the DLQ (yet).

Input records are mapped to event ids exactly as the connector does
(``connector.submitter.events.parse_event``, falling back to ``topic:partition:offset`` for
records it rejects); DLQ records, decisions and table rows are mapped back to their input
record by their ``source.*`` headers / ``source`` coordinates.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import orjson

from connector.config import Settings
from connector.records import SourceRef
from connector.submitter.events import InvalidEvent, parse_event
from tests.integration.harness import event_of, header, read_all, sandbox_get, source_of

Coord = tuple[int, int]  # (partition, offset) on the input topic


@dataclass
class Ledger:
    events_in: int
    decisions_out: int
    dlq: int
    lost: int
    duplicate_requests: int
    duplicate_decisions: int
    undecided: int
    recovery_s: float | None = None
    requests: int = 0
    callbacks: int = 0
    dlq_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    lost_events: list[str] = field(default_factory=list)

    def line(self) -> str:
        recovery = "-" if self.recovery_s is None else f"{self.recovery_s:.1f}"
        return (
            f"events_in={self.events_in} decisions_out={self.decisions_out} dlq={self.dlq} "
            f"lost={self.lost} duplicate_requests={self.duplicate_requests} "
            f"duplicate_decisions={self.duplicate_decisions} recovery_s={recovery} "
            f"undecided={self.undecided}"
        )


def _json(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None


def _coord(source: Any, topic: str) -> Coord | None:
    if not isinstance(source, dict) or source.get("topic") != topic:
        return None
    try:
        return int(source["partition"]), int(source["offset"])
    except (KeyError, TypeError, ValueError):
        return None


def event_id_of(record: Any, max_bytes: int) -> str:
    """The event id the connector gives ``record`` (its fallback for records it rejects)."""
    source = SourceRef(record.topic, record.partition, record.offset, record.timestamp)
    try:
        return parse_event(record.value, record.key, source, max_bytes=max_bytes).event_id
    except InvalidEvent:
        return f"{source.topic}:{source.partition}:{source.offset}"


async def ledger(
    settings: Settings, sandbox_url: str, *, recovery_s: float | None = None
) -> Ledger:
    bootstrap = settings.kafka.bootstrap_servers
    topics = settings.topics
    inputs = await read_all(bootstrap, topics.input, timeout=30)
    outputs = await read_all(bootstrap, topics.output, timeout=30)
    dlq = await read_all(bootstrap, topics.dlq, timeout=30)
    table = await read_all(bootstrap, topics.requests, timeout=30)
    callbacks = await read_all(bootstrap, topics.callbacks, timeout=30)
    requests = sandbox_get(sandbox_url, "/sandbox/requests")["requests"]

    max_bytes = settings.batch.max_event_bytes
    event_ids = {(r.partition, r.offset): event_id_of(r, max_bytes) for r in inputs}

    dlq_at: set[Coord] = set()
    reasons: collections.Counter[str] = collections.Counter()
    for r in dlq:
        reasons[(header(r, "error.reason") or b"").decode()] += 1
        if (header(r, "source.topic") or b"").decode() != topics.input:
            continue
        try:
            dlq_at.add(
                (
                    int(header(r, "source.partition") or b""),
                    int(header(r, "source.offset") or b""),
                )
            )
        except ValueError:
            continue

    decided_at: set[Coord] = set()
    per_decision: collections.Counter[tuple[str, str]] = collections.Counter()
    for r in outputs:
        d = _json(r.value)
        if not isinstance(d, dict):
            continue
        if (coord := _coord(d.get("source"), topics.input)) is not None:
            decided_at.add(coord)
        if d.get("request_id"):
            per_decision["request", str(d["request_id"])] += 1
        else:
            per_decision["event", str(d.get("event_id"))] += 1

    requested_at: set[Coord] = set()
    requested_events: set[str] = set()
    for r in table:
        row = _json(r.value)  # tombstones (None) only remove rows already counted
        if isinstance(row, dict):
            if (coord := _coord(row.get("source"), topics.input)) is not None:
                requested_at.add(coord)
            if isinstance(row.get("event_id"), str):
                requested_events.add(row["event_id"])
    # One request per source record: counted by the source the connector put into each
    # request's context (not by Idempotency-Key, which HITL.sh as documented ignores).
    keys = collections.Counter(source_of(r) or event_of(r) for r in requests)
    requested_events |= {event_of(r) for r in requests}
    requested_at |= {(s[1], s[2]) for r in requests if (s := source_of(r)) and s[0] == topics.input}

    lost: list[str] = []
    undecided = 0
    for coord, event_id in event_ids.items():
        in_dlq = coord in dlq_at
        decided = coord in decided_at
        requested = coord in requested_at or event_id in requested_events
        if not (in_dlq or decided or requested):
            lost.append(event_id)
        if not (in_dlq or decided):
            undecided += 1

    return Ledger(
        events_in=len(inputs),
        decisions_out=len(outputs),
        dlq=len(dlq),
        lost=len(lost),
        duplicate_requests=sum(n - 1 for n in keys.values()),
        duplicate_decisions=sum(n - 1 for n in per_decision.values()),
        undecided=undecided,
        recovery_s=recovery_s,
        requests=len(requests),
        callbacks=len(callbacks),
        dlq_reasons=reasons,
        lost_events=lost,
    )
