"""At most one HITL request per source record, against HITL.sh as documented (no idempotency key).

Every request carries ``context.connector.ident``: a digest of (consumer group, topic,
partition, offset, record timestamp), the identity of its source record in this deployment
(the timestamp tells a re-created topic's records from the old ones at the same offsets).
The same digest is the ``Idempotency-Key`` (a second line of defence for a service that
honours it; no promise rests on it). Before a record is created, ``Recovery.resolve`` decides:

- its request is known (created by this process and not committed yet — a rewind after an
  aborted or fenced transaction, a record past a gap — or listed as adopted in the journal
  of a process that died) → adopt it, no API call;
- it may exist and is unknown — its offset lies in an open span of a dead process's journal
  not yet searched in this loop, or its create was ambiguous (timeout, reset, 5xx after it
  was sent) → search the loop once for every such record of every partition:
  ``GET loops/{id}/requests`` newest first, 100 per call, through the pacer (the calls count
  against the budget), until every span's fence (a request older than all its creates) is
  passed, or requests are older than the oldest span minus ``batch.lookup_skew_seconds``.
  Found → adopt; not found → create;
- otherwise → create.

Journal bookkeeping per partition (``journal``): ``journal_entries`` opens a span for a
batch's creates (written and acknowledged before they leave), ``created`` lists each new
request as adopted, ``settle`` closes the batch's spans once its creates are over (what was
made is listed; the rest was not sent), and ``committed`` drops what the commit covers.
A request whose ``context`` cannot be read is counted and reported, never fatal. This
module makes lookups but no Kafka I/O.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from connector.errors import HitlPermanentError
from connector.metrics import Metrics
from connector.records import epoch
from connector.submitter.journal import Coord, JournalEntry, Span

log = logging.getLogger(__name__)

PAGE = 100  # the documented maximum per list call
MAX_PAGES = 50  # per sweep; past it the sweep stops and its records are created


def source_identity(group: str, topic: str, partition: int, offset: int, timestamp: int) -> str:
    """Header-safe digest of a source record's identity in one deployment (consumer group).

    The record's timestamp tells a re-created topic's record from the old one at the same
    offset, so a reset topic is never handed the previous run's requests."""
    raw = orjson.dumps([group, topic, partition, offset, timestamp])
    return "hkc1-" + hashlib.sha256(raw).hexdigest()[:40]


class LookupClient(Protocol):
    async def list_loop_requests(
        self, loop_id: str, *, limit: int = PAGE, offset: int = 0, deadline: float | None = None
    ) -> list[dict[str, Any]]: ...


@dataclass(slots=True)
class Adopted:
    request_id: str
    timeout_at: str | None


@dataclass(slots=True)
class Sought:
    """One record to resolve: where it came from and which loop it would go to."""

    coord: Coord
    offset: int
    loop_id: str
    ident: str


class Recovery:
    """What may exist on HITL.sh already, and how to find it. One per submitter process."""

    def __init__(
        self,
        client: LookupClient | None,
        group: str,
        *,
        skew_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        default_loop: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = client
        self._recovered = metrics.recovered_requests if metrics is not None else None
        # Searched as soon as a dead process's spans are loaded (before any create), so a
        # partition whose records come late does not keep an old span open.
        self._default_loop = default_loop
        self.group = group
        self._skew = skew_seconds
        self._clock = clock
        self._known: dict[str, Adopted] = {}
        self._state: dict[Coord, JournalEntry] = {}  # spans and adopted requests per partition
        self._dirty: set[Coord] = set()  # resolved or adopted since the journal was written
        self._ambiguous: dict[str, tuple[Coord, int, str]] = {}  # ident → coord, offset, loop
        self._newest: dict[str, str] = {}  # loop → a request id that exists by now
        self.loaded: set[Coord] = set()

    # --- bookkeeping -------------------------------------------------------------------------

    def ident(self, coord: Coord, offset: int, timestamp: int) -> str:
        return source_identity(self.group, coord[0], coord[1], offset, timestamp)

    def _entry(self, coord: Coord) -> JournalEntry:
        entry = self._state.get(coord)
        if entry is None:
            entry = self._state[coord] = JournalEntry(coord[0], coord[1])
        return entry

    def load(
        self,
        entries: dict[Coord, JournalEntry],
        coords: Iterable[Coord],
        committed: dict[Coord, int] | None = None,
    ) -> None:
        """Take the journal's entries for newly assigned ``coords`` (none = nothing open)."""
        for coord in coords:
            self.loaded.add(coord)
            entry = entries.get(coord)
            if entry is None:
                continue
            self._state[coord] = entry
            for request_id, timeout_at, ident in entry.adopted.values():
                self._known[ident] = Adopted(request_id, timeout_at)
            upto = (committed or {}).get(coord)
            if upto is not None:
                self.committed({coord: upto})
            for span in entry.spans:
                log.info(
                    "submit journal: %s-%d offsets %d..%s may exist on HITL.sh since %.0f; they "
                    "are looked up before they are created",
                    coord[0],
                    coord[1],
                    span.first,
                    "end" if not entry.readable else span.end - 1,
                    span.since,
                )

    def forget(self, coords: Iterable[Coord]) -> None:
        """Partitions revoked: whoever gets them reads the journal again."""
        for coord in coords:
            self.loaded.discard(coord)
            self._dirty.discard(coord)
            entry = self._state.pop(coord, None)
            if entry is not None:
                for _, _, ident in entry.adopted.values():
                    self._known.pop(ident, None)
            for ident in [i for i, (c, _, _) in self._ambiguous.items() if c == coord]:
                del self._ambiguous[ident]

    def created(self, s: Sought, adopted: Adopted) -> None:
        self._known[s.ident] = adopted
        self._entry(s.coord).adopted[s.offset] = (adopted.request_id, adopted.timeout_at, s.ident)
        self._newest[s.loop_id] = adopted.request_id

    def ambiguous(self, s: Sought) -> None:
        """The create of ``s`` may have been processed: look it up before sending it again."""
        self._ambiguous[s.ident] = (s.coord, s.offset, s.loop_id)

    def committed(self, offsets: dict[Coord, int]) -> None:
        """Offsets up to (not including) these are committed: close what they cover."""
        for coord, upto in offsets.items():
            entry = self._state.get(coord)
            if entry is None:
                continue
            for offset in [o for o in entry.adopted if o < upto]:
                self._known.pop(entry.adopted.pop(offset)[2], None)
            spans = [s for s in entry.spans if s.end > upto]
            for span in spans:
                span.first = max(span.first, upto)
            entry.spans = spans
            if not spans and not entry.adopted and coord not in self._dirty:
                del self._state[coord]

    def journal_entries(self, ranges: dict[Coord, tuple[int, int]]) -> list[JournalEntry]:
        """Entries to write (and have acknowledged) before creating ``[first, end)`` ranges.

        Also every partition whose lookup results are not written yet (so a second crash
        need not search again). Created requests are listed under ``adopted`` until their
        offsets commit: a crash then finds them in the journal, not by searching."""
        now = self._clock()
        for coord, (first, end) in ranges.items():
            self._entry(coord).spans.append(Span(first, end, now, dict(self._newest), mine=True))
        coords = set(ranges) | self._dirty
        self._dirty.clear()
        return [self._state[c] for c in coords if c in self._state]

    def covers(self, ranges: dict[Coord, tuple[int, int]]) -> bool:
        """Whether an open span of this process holds each range (written ahead)."""
        return all(
            any(
                sp.mine and not sp.settled and sp.first <= first and end <= sp.end
                for sp in self._state[coord].spans
            )
            if coord in self._state
            else False
            for coord, (first, end) in ranges.items()
        )

    def entries_for(self, coords: Iterable[Coord]) -> list[JournalEntry]:
        """The current entries of ``coords`` (an empty one for a partition with nothing)."""
        return [self._state.get(c) or JournalEntry(c[0], c[1]) for c in coords]

    def settle_all(self) -> None:
        """A batch is over and no create is on its way: settle every partition's spans."""
        self.settle(list(self._state))

    def settle(self, coords: Iterable[Coord]) -> None:
        """The batch's creates are over: every request made is under ``adopted``, the rest
        were not sent. Its spans leave the journal at the next write (unless an ambiguous
        create lies in one, or too many requests are uncommitted to list them)."""
        doubtful = {(c, o) for c, o, _ in self._ambiguous.values()}
        for coord in coords:
            entry = self._state.get(coord)
            if entry is None:
                continue
            for sp in entry.spans:
                if (
                    sp.mine
                    and not sp.settled
                    and not any(c == coord and sp.covers(o) for c, o in doubtful)
                ):
                    sp.settled = True
                    self._dirty.add(coord)

    # --- resolving ---------------------------------------------------------------------------

    def known(self, ident: str) -> Adopted | None:
        return self._known.get(ident)

    def _open_spans(self, loop_id: str) -> list[tuple[Coord, Span]]:
        """Spans of dead processes not yet searched in ``loop_id``."""
        return [
            (coord, span)
            for coord, entry in self._state.items()
            for span in entry.spans
            if not span.mine and loop_id not in span.resolved
        ]

    def _suspect(self, s: Sought) -> bool:
        if s.ident in self._ambiguous:
            return True
        entry = self._state.get(s.coord)
        return entry is not None and any(
            not span.mine and span.covers(s.offset) and s.loop_id not in span.resolved
            for span in entry.spans
        )

    async def resolve(
        self, sought: list[Sought], deadline: float | None = None
    ) -> dict[str, Adopted]:
        """Requests that already exist for ``sought`` (by ident); the rest may be created.

        Raises what the lookup raised when it could not finish (``HitlRetriableError``):
        then nothing of ``sought`` that needed the lookup may be created yet.
        """
        found: dict[str, Adopted] = {}
        loops: set[str] = set()
        for s in sought:
            adopted = self._known.get(s.ident)
            if adopted is not None:
                found[s.ident] = adopted
            elif self._suspect(s):
                loops.add(s.loop_id)
        if self._default_loop and self._open_spans(self._default_loop):
            loops.add(self._default_loop)
        self._count("reused", len(found))
        for loop_id in sorted(loops):
            await self._sweep(loop_id, deadline)
        for s in sought:
            adopted = self._known.get(s.ident)
            if adopted is not None and s.ident not in found:
                found[s.ident] = adopted
        return found

    def _count(self, outcome: str, n: int) -> None:
        if self._recovered is not None and n:
            self._recovered.labels(outcome).inc(n)

    async def _sweep(self, loop_id: str, deadline: float | None) -> None:
        """Search ``loop_id`` once for every open span of every partition and every
        ambiguous create: newest first, until all their fences are passed (or requests are
        older than the oldest span minus the allowed clock skew)."""
        spans = self._open_spans(loop_id)
        ambiguous = {i: (c, o) for i, (c, o, loop) in self._ambiguous.items() if loop == loop_id}
        for coord, offset in ambiguous.values():
            entry = self._state.get(coord)
            spans += [(coord, sp) for sp in (entry.spans if entry else ()) if sp.covers(offset)]
        since = min((sp.since for _, sp in spans), default=self._clock())
        fences = {sp.fences.get(loop_id, "") for _, sp in spans}
        stop_at = since - self._skew
        unreadable = adopted = 0
        seen: set[str] = set()
        if self._client is not None:
            for page_no in range(MAX_PAGES):
                try:
                    page = await self._client.list_loop_requests(
                        loop_id, limit=PAGE, offset=page_no * PAGE, deadline=deadline
                    )
                except HitlPermanentError as exc:
                    # 403/404: the loop is not ours or gone; a create there fails the same way.
                    log.warning("lookup in loop %s refused (%s); creating instead", loop_id, exc)
                    break
                if page_no == 0 and page and isinstance(page[0].get("id"), str):
                    self._newest.setdefault(loop_id, page[0]["id"])
                oldest = None
                for item in page:
                    request_id = item.get("id")
                    if isinstance(request_id, str):
                        seen.add(request_id)
                    created = epoch(item.get("created_at"))
                    if created is not None:
                        oldest = created if oldest is None else min(oldest, created)
                    mine = self._ours(item)
                    if mine == "unreadable" or not isinstance(request_id, str):
                        unreadable += 1
                        continue
                    if mine is None:
                        continue
                    ident, coord, offset = mine
                    if ident in ambiguous or any(
                        c == coord and sp.covers(offset) for c, sp in spans
                    ):
                        if ident not in self._known:
                            adopted += 1
                        self._known[ident] = Adopted(request_id, _str(item.get("timeout_at")))
                        entry = self._entry(coord)
                        entry.adopted[offset] = (request_id, _str(item.get("timeout_at")), ident)
                        self._dirty.add(coord)
                if (
                    ("" not in fences and fences <= seen)
                    or (oldest is not None and oldest < stop_at)
                    or len(page) < PAGE
                ):
                    break
            else:
                log.warning(
                    "lookup in loop %s stopped after %d pages without reaching the window's "
                    "start; the records not found are created",
                    loop_id,
                    MAX_PAGES,
                )
        if unreadable:
            self._count("unreadable", unreadable)
            log.warning(
                "lookup in loop %s: %d request(s) whose context.connector cannot be read were "
                "skipped (matched to no record)",
                loop_id,
                unreadable,
            )
        for coord, span in spans:
            if not span.mine:
                span.resolved.add(loop_id)
                self._dirty.add(coord)
        for ident in ambiguous:
            self._ambiguous.pop(ident, None)
        self._count("adopted", adopted)
        log.info(
            "lookup in loop %s: %d request(s) found for %d span(s) and %d ambiguous create(s)",
            loop_id,
            adopted,
            len(spans),
            len(ambiguous),
        )

    def _ours(self, item: dict[str, Any]) -> tuple[str, Coord, int] | Literal["unreadable"] | None:
        """``(ident, coord, offset)`` of a request this deployment created; None when it is
        someone else's (no ``context.connector``, another group); ``"unreadable"`` when its
        context cannot be read (wrong types, an ident that does not match its coordinates)."""
        context = item.get("context")
        if context is None:
            return None
        if not isinstance(context, dict):
            return "unreadable"
        conn = context.get("connector")
        if conn is None:
            return None
        if not isinstance(conn, dict):
            return "unreadable"
        group = conn.get("group")
        if isinstance(group, str) and group != self.group:
            return None
        ident, topic, partition, offset, timestamp = (
            conn.get("ident"),
            conn.get("topic"),
            conn.get("partition"),
            conn.get("offset"),
            conn.get("timestamp"),
        )
        if not (
            group == self.group
            and isinstance(ident, str)
            and isinstance(topic, str)
            and isinstance(partition, int)
            and isinstance(offset, int)
            and isinstance(timestamp, int)
            and ident == source_identity(self.group, topic, partition, offset, timestamp)
        ):
            return "unreadable"
        return ident, (topic, partition), offset


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
