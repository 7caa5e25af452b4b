"""One micro-batch of the submit path: classify records, create HITL requests, plan the commit.

A batch is one fetch. Every record gets exactly one outcome:

- ``dlq``       invalid event or permanent HITL rejection → DLQ record with the reason;
- ``policy``    the auto-decision policy decided → decision record;
- ``created``   a HITL request exists → ``hitl.requests`` row;
- ``deferred``  HITL could not be asked now (rate limit, outage, circuit open, deadline).

A partition commits only up to its first deferred record; it then seeks back there and pauses
until HITL can be asked again. Creates that succeeded *after* a gap still write their
``hitl.requests`` row (so the request is never orphaned) but not their offset: when they come
again, ``recovery`` hands back the request already created, without an API call.

Before any create leaves, the batch's journal entries are written (``journal``) and records
that may exist on HITL.sh already are looked up (``recovery``): an event gets at most one
request whatever process dies when, against HITL.sh as documented (no idempotency key).

This module performs HTTP calls through the client but no Kafka I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from connector.config import (
    BatchSettings,
    HitlSettings,
    LoopSettings,
    PolicySettings,
    ReviewSettings,
    TopicSettings,
)
from connector.errors import HitlAmbiguousError, HitlPermanentError, HitlRetriableError
from connector.records import (
    H_TRACEPARENT,
    REASON_HITL_REJECTED,
    REASON_NO_LOOP,
    SCHEMA_DECISION,
    OutRecord,
    RequestEntry,
    SourceRef,
    base_headers,
    decision_value,
    dlq_record,
    dumps,
    find_header,
    iso_now,
)
from connector.response_types import sent_options
from connector.submitter.events import ContentEvent, InvalidEvent, parse_event
from connector.submitter.journal import JournalEntry
from connector.submitter.recovery import Adopted, Recovery, Sought
from connector.submitter.routing import Policy, choose_loop
from connector.submitter.translate import build_create_body, response_config

log = logging.getLogger(__name__)


class Created(Protocol):
    request_id: str
    timeout_at: str | None


class CreateClient(Protocol):
    async def create_request(
        self,
        loop_id: str,
        body: dict[str, Any],
        *,
        idempotency_key: str,
        deadline: float | None = None,
    ) -> Created: ...


class JournalWriter(Protocol):
    async def record(self, entries: Iterable[JournalEntry]) -> None: ...


class InputRecord(Protocol):
    """The parts of an aiokafka ConsumerRecord the batch reads."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(slots=True)
class Outcome:
    kind: str  # dlq | policy | created | deferred
    records: list[OutRecord] = field(default_factory=list)
    reason: str | None = None
    retry_after: float | None = None
    truncated: bool = False


@dataclass(slots=True)
class PartitionPlan:
    """What one partition of the batch commits, and where it resumes."""

    commit_offset: int | None
    seek_to: int | None
    retry_after: float | None
    outputs: list[OutRecord]


@dataclass(slots=True)
class BatchStats:
    consumed: int = 0
    created: int = 0
    policy: int = 0
    dlq: dict[str, int] = field(default_factory=dict)
    deferred: int = 0
    truncated: int = 0
    policy_decisions: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Pending:
    record: InputRecord
    source: SourceRef
    event: ContentEvent
    loop_id: str
    body: dict[str, Any]
    truncated: bool
    sought: Sought


class BatchProcessor:
    """Turns a fetched batch into per-partition commit plans."""

    def __init__(
        self,
        client: CreateClient,
        recovery: Recovery,
        *,
        batch: BatchSettings,
        hitl: HitlSettings,
        loops: LoopSettings,
        review: ReviewSettings,
        policy: PolicySettings,
        topics: TopicSettings,
        callback_url_for: Callable[[str], str | None] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        journal: JournalWriter | None = None,
    ) -> None:
        self._client = client
        self.recovery = recovery
        self._batch = batch
        self._max_in_flight = hitl.max_in_flight
        self._platform_version = hitl.platform_version
        self._loops = loops
        self._review = review
        self._topics = topics
        self._journal = journal
        # The journal write for the next batch's likely offsets, started when the previous
        # batch ended: usually acknowledged before the next creates are ready to leave.
        self._ahead: asyncio.Future[None] | None = None
        self._callback_url_for = callback_url_for or (lambda _event_id: None)
        self._clock = clock
        self._monotonic = monotonic
        # Per-settings pieces of every body and request row, built once instead of per event.
        self._response_config = response_config(review)
        # The options as sent in response_config: answers are matched against these.
        self._options = sent_options(self._response_config)
        self._decide = Policy(policy).decide

    def _dlq(
        self,
        rec: InputRecord,
        source: SourceRef,
        reason: str,
        detail: str,
        event_id: str | None = None,
    ) -> Outcome:
        log.info(
            "event to DLQ: %s",
            reason,
            extra={
                "event_id": event_id,
                "reason": reason,
                "detail": detail[:200],
                "source": f"{source.topic}-{source.partition}@{source.offset}",
            },
        )
        out = dlq_record(
            self._topics.dlq,
            key=rec.key,
            value=rec.value,
            source=source,
            reason=reason,
            detail=detail,
            original_headers=rec.headers,
            max_value_bytes=self._batch.dlq_max_value_bytes,
        )
        return Outcome("dlq", [out], reason=reason)

    def _policy(
        self, rec: InputRecord, source: SourceRef, event: ContentEvent, now: float, at: str
    ) -> Outcome | None:
        """The policy's decision record, or None when a person decides. ``now`` (epoch) and
        ``at`` (its ISO form) are the batch's: formatting them once per batch, not per event."""
        decided = self._decide(event)
        if decided is None:
            return None
        ts = rec.timestamp
        value = decision_value(
            event_id=event.event_id,
            request_id=None,
            loop_id=None,
            status="auto",
            decision=decided.decision,
            response=decided.decision,
            raw_response={"policy": decided.reason},
            decided_by="policy",
            via="policy",
            source=source,
            submitted_at=None,
            decided_at=at,
            end_to_end_seconds=round(now - ts / 1000, 6) if ts and ts > 0 else None,
        )
        headers = base_headers(
            SCHEMA_DECISION,
            event_id=event.event_id,
            traceparent=find_header(rec.headers, H_TRACEPARENT) if rec.headers else None,
        )
        key = rec.key if rec.key is not None else event.event_id.encode()
        out = OutRecord(self._topics.output, key, dumps(value), headers)
        return Outcome("policy", [out], decided.decision)

    def classify(
        self, rec: InputRecord, now: float | None = None, at: str | None = None
    ) -> Outcome | _Pending:
        """Everything that needs no network: validation, policy, routing, the body. ``now``
        and ``at`` (its ISO form) default to the clock's time."""
        if now is None or at is None:
            now = self._clock()
            at = iso_now(now)
        source = SourceRef(rec.topic, rec.partition, rec.offset, rec.timestamp)
        try:
            event = parse_event(rec.value, rec.key, source, max_bytes=self._batch.max_event_bytes)
        except InvalidEvent as exc:
            return self._dlq(rec, source, exc.reason, exc.detail)
        decided = self._policy(rec, source, event, now, at)
        if decided is not None:
            return decided
        loop_id = choose_loop(event, self._loops)
        if loop_id is None:
            return self._dlq(
                rec,
                source,
                REASON_NO_LOOP,
                "no loop_id on the event, no routing rule matched and loops.default is unset",
                event.event_id,
            )
        built = build_create_body(
            event,
            self._review,
            source,
            callback_url=self._callback_url_for(event.event_id),
            platform_version=self._platform_version,
            response_cfg=self._response_config,
        )
        coord = (rec.topic, rec.partition)
        ts = rec.timestamp if isinstance(rec.timestamp, int) else -1
        sought = Sought(coord, rec.offset, loop_id, self.recovery.ident(coord, rec.offset, ts))
        # The identity a lookup matches on, scoped to this deployment and source record.
        built.body["context"]["connector"].update(
            group=self.recovery.group, timestamp=ts, ident=sought.ident
        )
        return _Pending(rec, source, event, loop_id, built.body, built.truncated, sought)

    async def _create(
        self, part: Any, p: _Pending, blocked: dict[Any, float | None], deadline: float
    ) -> Outcome:
        if part in blocked:  # an earlier record of this partition is deferred already
            return Outcome("deferred", retry_after=blocked[part])
        try:
            created = await self._client.create_request(
                p.loop_id, p.body, idempotency_key=p.sought.ident, deadline=deadline
            )
        except HitlPermanentError as exc:
            detail = f"HITL {exc.status}: {exc.msg or exc}"
            return self._dlq(p.record, p.source, REASON_HITL_REJECTED, detail, p.event.event_id)
        except HitlAmbiguousError as exc:
            # It may exist now: it is looked up, never sent again blindly, when it comes back.
            self.recovery.ambiguous(p.sought)
            blocked.setdefault(part, exc.retry_after)
            return Outcome("deferred", retry_after=exc.retry_after)
        except HitlRetriableError as exc:
            blocked.setdefault(part, exc.retry_after)
            return Outcome("deferred", retry_after=exc.retry_after)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "HITL request created",
                extra={"event_id": p.event.event_id, "request_id": created.request_id},
            )
        adopted = Adopted(created.request_id, created.timeout_at)
        self.recovery.created(p.sought, adopted)
        return self._created(p, adopted)

    def _created(self, p: _Pending, adopted: Adopted) -> Outcome:
        entry = RequestEntry(
            request_id=adopted.request_id,
            event_id=p.event.event_id,
            key=p.record.key,
            loop_id=p.loop_id,
            source=p.source,
            response_type=self._review.response_type,
            options=self._options,
            default_response=self._review.default_response,
            timeout_at=adopted.timeout_at,
            submitted_at=iso_now(self._clock()),
            traceparent=_text(find_header(p.record.headers, H_TRACEPARENT)),
            callback_token="callback_url" in p.body,
        )
        return Outcome("created", [entry.to_record(self._topics.requests)], truncated=p.truncated)

    async def _prepare(
        self,
        pending: list[tuple[Any, int, _Pending]],
        results: dict[tuple[Any, int], Outcome],
        deadline: float,
    ) -> list[tuple[Any, int, _Pending]]:
        """Adopt what exists already, journal the rest; returns what is left to create."""
        try:
            adopted = await self.recovery.resolve([p.sought for _, _, p in pending], deadline)
        except HitlRetriableError as exc:
            log.warning("lookup of possibly created records failed (%s); deferring them", exc)
            for tp, i, _ in pending:
                results[(tp, i)] = Outcome("deferred", retry_after=exc.retry_after)
            return []
        todo = []
        for tp, i, p in pending:
            found = adopted.get(p.sought.ident)
            if found is None:
                todo.append((tp, i, p))
            else:
                results[(tp, i)] = self._created(p, found)
        ranges: dict[tuple[str, int], tuple[int, int]] = {}
        for _, _, p in todo:
            first, end = ranges.get(p.sought.coord, (p.sought.offset, p.sought.offset + 1))
            ranges[p.sought.coord] = (min(first, p.sought.offset), max(end, p.sought.offset + 1))
        try:
            await self._journaled(ranges)
        except Exception as exc:  # noqa: BLE001 - any Kafka failure: nothing may leave
            log.warning("submit journal not written (%s); deferring the creates", exc)
            for tp, i, _ in todo:
                results[(tp, i)] = Outcome("deferred", retry_after=1.0)
            return []
        return todo

    async def _journaled(self, ranges: dict[tuple[str, int], tuple[int, int]]) -> None:
        """Return once ``ranges`` are in an acknowledged journal record; raises if not."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            try:
                await ahead  # bounded: Journal.record times out
            except Exception as exc:  # noqa: BLE001 - written again below
                log.info("journal write ahead failed (%s); writing again", exc)
            else:
                if self.recovery.covers(ranges):
                    return
        entries = self.recovery.journal_entries(ranges)
        if self._journal is not None and entries:
            await self._journal.record(entries)

    async def release(self, coords: set[tuple[str, int]]) -> None:
        """Partitions leave (revoked, or a clean stop) with nothing in flight: write their
        journal records with every span settled, so their next owner searches nothing."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            with contextlib.suppress(Exception):
                await ahead
        self.recovery.settle_all()
        entries = self.recovery.entries_for(coords)
        try:
            if self._journal is not None and entries:
                await self._journal.record(entries)
        except Exception as exc:  # noqa: BLE001 - the next owner then searches; no harm
            log.info("submit journal not updated on release (%s)", exc)
        self.recovery.forget(coords)

    def _write_ahead(
        self, batch: dict[Any, list[InputRecord]], plans: dict[Any, PartitionPlan], created: bool
    ) -> None:
        """This batch's creates are over; when it had any, journal where the next batch will
        likely start (a batch the policy decided whole writes nothing: were a journal record
        written per batch, the policy path would pay a Kafka write per 500 events for creates
        that mostly never come; the first create after it waits for its journal write)."""
        self.recovery.settle_all()
        if self._journal is None or not created:
            return
        size = self._batch.max_records
        ranges: dict[tuple[str, int], tuple[int, int]] = {}
        for tp, records in batch.items():
            plan = plans[tp]
            start = plan.seek_to if plan.seek_to is not None else records[-1].offset + 1
            ranges[(records[0].topic, records[0].partition)] = (start, start + size)
        entries = self.recovery.journal_entries(ranges)
        ahead = self._ahead = asyncio.ensure_future(self._journal.record(entries))
        ahead.add_done_callback(_retrieve)

    async def process(
        self, batch: dict[Any, list[InputRecord]], stats: BatchStats
    ) -> dict[Any, PartitionPlan]:
        """Classify, create concurrently (bounded, all partitions at once), plan commits."""
        deadline = self._monotonic() + self._batch.max_batch_seconds
        blocked: dict[Any, float | None] = {}
        now = self._clock()
        at = iso_now(now)
        classify = self.classify
        classified = {tp: [classify(r, now, at) for r in records] for tp, records in batch.items()}
        pending = [
            (tp, i, o)
            for tp, outcomes in classified.items()
            for i, o in enumerate(outcomes)
            if isinstance(o, _Pending)
        ]
        results: dict[tuple[Any, int], Outcome] = {}
        created = bool(pending)
        if pending:
            pending = await self._prepare(pending, results, deadline)
        if pending:
            await self._create_all(pending, results, blocked, deadline)
        plans: dict[Any, PartitionPlan] = {}
        for tp, outcomes in classified.items():
            final = [
                results[(tp, i)] if isinstance(o, _Pending) else o for i, o in enumerate(outcomes)
            ]
            plans[tp] = self._plan(batch[tp], final, stats)
        self._write_ahead(batch, plans, created)
        return plans

    async def _create_all(
        self,
        pending: list[tuple[Any, int, _Pending]],
        results: dict[tuple[Any, int], Outcome],
        blocked: dict[Any, float | None],
        deadline: float,
    ) -> None:
        """At most ``hitl.max_in_flight`` creates at once, by a fixed pool of workers.

        A pool instead of one task per record: a task (and a semaphore wait) per event was a
        visible share of the CPU per event. Workers take records in offset order per
        partition from one shared iterator, so earlier records of a partition always start
        first — the ``blocked`` check relies on that.
        """
        queue = iter(pending)

        async def worker() -> None:
            for tp, i, p in queue:
                results[(tp, i)] = await self._create(tp, p, blocked, deadline)

        size = min(self._max_in_flight, len(pending))
        workers = [asyncio.ensure_future(worker()) for _ in range(size)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            # One worker failed (or we were cancelled): stop the others; nothing commits.
            for w in workers:
                w.cancel()
            raise

    @staticmethod
    def _plan(
        records: Sequence[InputRecord], outcomes: Sequence[Outcome], stats: BatchStats
    ) -> PartitionPlan:
        outputs: list[OutRecord] = []
        gap: int | None = None
        retry_after: float | None = None
        commit: int | None = None
        for rec, out in zip(records, outcomes, strict=True):
            if out.kind == "deferred":
                stats.deferred += 1
                if gap is None:
                    gap, retry_after = rec.offset, out.retry_after
                continue
            if gap is not None:
                # Past the gap: keep created requests (adopted, not recreated, when they come
                # again), drop the rest; those records are processed again after the seek.
                if out.kind == "created":
                    outputs.extend(out.records)
                continue
            outputs.extend(out.records)
            commit = rec.offset + 1
            stats.consumed += 1  # only committed records count; the rest come back
            if out.kind == "created":
                stats.created += 1
                stats.truncated += int(out.truncated)
            elif out.kind == "policy":
                stats.policy += 1
                label = out.reason or ""
                stats.policy_decisions[label] = stats.policy_decisions.get(label, 0) + 1
            elif out.kind == "dlq" and out.reason:
                stats.dlq[out.reason] = stats.dlq.get(out.reason, 0) + 1
        return PartitionPlan(commit, gap, retry_after, outputs)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a write-ahead's failure as seen: the next batch writes again and logs it."""
    if not future.cancelled():
        future.exception()


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("ascii", "replace")
