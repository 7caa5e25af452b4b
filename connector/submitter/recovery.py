"""At most one HITL request per source record, against HITL.sh as documented (no idempotency key).

Every request carries ``context.connector.ident``: a digest of (consumer group, topic,
partition, offset), the identity of its source record in this deployment. The same digest
is the ``Idempotency-Key`` (a second line of defence for a service that honours it; no
promise rests on it). Before a record is created, ``Recovery.resolve`` decides:

- created earlier by this process and not yet committed (a rewind after an aborted or
  fenced transaction, or a record past a gap) → adopt that request, no API call;
- possibly created and unknown here — its offset lies in a journal window of a process that
  died (``journal``), or its create was ambiguous (timeout, reset, 5xx after it was sent) →
  look it up: ``GET loops/{id}/requests`` newest first, 100 per call, through the pacer (the
  calls count against the budget), until every sought record is found, a request known to
  be older than all of them (the window's fence) is passed, or requests are older than the
  window's start minus ``batch.lookup_skew_seconds``. Found → adopt; not found → create;
- otherwise → create.

Before any create leaves, ``journal_entries`` gives the journal records to write (the open
window of each partition, widened to this batch). ``committed`` closes windows and forgets
adopted requests once their offsets are committed. A request whose ``context`` cannot be
read is counted and reported, never fatal. This module makes lookups but no Kafka I/O.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import orjson

from connector.errors import HitlPermanentError
from connector.submitter.journal import Coord, JournalEntry

log = logging.getLogger(__name__)

PAGE = 100  # the documented maximum per list call
MAX_PAGES = 50  # per sweep; past it the sweep stops and its records are created


def source_identity(group: str, topic: str, partition: int, offset: int) -> str:
    """Header-safe digest of a source record's identity in one deployment (consumer group)."""
    raw = orjson.dumps([group, topic, partition, offset])
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


@dataclass(slots=True)
class _Open:
    """The journal window a partition has open: written, not yet committed past ``end``."""

    first: int
    end: int
    since: float
    fences: dict[str, str]


@dataclass(slots=True)
class SweepStats:
    sweeps: int = 0
    calls: int = 0
    adopted: int = 0
    reused: int = 0  # adopted from memory, no call
    unreadable: int = 0
    by_loop: dict[str, int] = field(default_factory=dict)


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Recovery:
    """What may exist on HITL.sh already, and how to find it. One per submitter process."""

    def __init__(
        self,
        client: LookupClient | None,
        group: str,
        *,
        skew_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.group = group
        self._skew = skew_seconds
        self._clock = clock
        self._known: dict[str, Adopted] = {}
        self._known_at: dict[Coord, dict[int, str]] = {}
        self._windows: dict[Coord, JournalEntry] = {}  # loaded from the journal
        self._swept: dict[Coord, set[str]] = {}  # loops swept for a loaded window
        self._ambiguous: dict[str, tuple[Coord, int]] = {}  # ident → source coordinates
        self._open: dict[Coord, _Open] = {}
        self._newest: dict[str, str] = {}  # loop → a request id created by now
        self.loaded: set[Coord] = set()
        self.stats = SweepStats()

    # --- bookkeeping -------------------------------------------------------------------------

    def ident(self, coord: Coord, offset: int) -> str:
        return source_identity(self.group, coord[0], coord[1], offset)

    def load(self, entries: dict[Coord, JournalEntry], coords: Iterable[Coord]) -> None:
        """Take the journal's entries for newly assigned ``coords`` (none = nothing open)."""
        for coord in coords:
            self.loaded.add(coord)
            entry = entries.get(coord)
            if entry is None or entry.end <= entry.first:
                continue
            self._windows[coord] = entry
            self._swept[coord] = set()
            if entry.readable:  # carried on, so a second crash still knows these offsets
                self._open[coord] = _Open(entry.first, entry.end, entry.since, dict(entry.fences))
            log.info(
                "submit journal: %s-%d offsets %d..%s may exist on HITL.sh since %.0f; they "
                "are looked up before they are created",
                coord[0],
                coord[1],
                entry.first,
                "end" if not entry.readable else entry.end - 1,
                entry.since,
            )

    def forget(self, coords: Iterable[Coord]) -> None:
        """Partitions revoked: whoever gets them reads the journal again."""
        for coord in coords:
            self.loaded.discard(coord)
            self._windows.pop(coord, None)
            self._swept.pop(coord, None)
            self._open.pop(coord, None)
            for ident in self._known_at.pop(coord, {}).values():
                self._known.pop(ident, None)
            for ident in [i for i, (c, _) in self._ambiguous.items() if c == coord]:
                del self._ambiguous[ident]

    def created(self, s: Sought, adopted: Adopted) -> None:
        self._known[s.ident] = adopted
        self._known_at.setdefault(s.coord, {})[s.offset] = s.ident
        self._newest[s.loop_id] = adopted.request_id

    def ambiguous(self, s: Sought) -> None:
        """The create of ``s`` may have been processed: look it up before sending it again."""
        self._ambiguous[s.ident] = (s.coord, s.offset)

    def committed(self, offsets: dict[Coord, int]) -> None:
        """Offsets up to (not including) these are committed: close what they cover."""
        for coord, upto in offsets.items():
            known = self._known_at.get(coord)
            if known:
                for offset in [o for o in known if o < upto]:
                    self._known.pop(known.pop(offset), None)
            window = self._windows.get(coord)
            if window is not None and window.readable and upto >= window.end:
                del self._windows[coord]
                self._swept.pop(coord, None)
            opened = self._open.get(coord)
            if opened is not None:
                if upto >= opened.end:
                    del self._open[coord]
                else:
                    opened.first = max(opened.first, upto)

    def journal_entries(self, ranges: dict[Coord, tuple[int, int]]) -> list[JournalEntry]:
        """Entries to write (and have acknowledged) before creating ``[first, end)`` ranges."""
        now = self._clock()
        out = []
        for coord, (first, end) in ranges.items():
            opened = self._open.get(coord)
            if opened is None:
                opened = self._open[coord] = _Open(first, end, now, dict(self._newest))
            opened.first, opened.end = min(opened.first, first), max(opened.end, end)
            out.append(
                JournalEntry(
                    coord[0], coord[1], opened.first, opened.end, opened.since, opened.fences
                )
            )
        return out

    # --- resolving ---------------------------------------------------------------------------

    def known(self, ident: str) -> Adopted | None:
        return self._known.get(ident)

    def _suspect(self, s: Sought) -> bool:
        if s.ident in self._ambiguous:
            return True
        window = self._windows.get(s.coord)
        return (
            window is not None
            and window.covers(s.offset)
            and s.loop_id not in self._swept.get(s.coord, ())
        )

    async def resolve(
        self, sought: list[Sought], deadline: float | None = None
    ) -> dict[str, Adopted]:
        """Requests that already exist for ``sought`` (by ident); the rest may be created.

        Raises what the lookup raised when it could not finish (``HitlRetriableError``):
        then nothing of ``sought`` that needed the lookup may be created yet.
        """
        found: dict[str, Adopted] = {}
        to_look: dict[str, list[Sought]] = {}
        for s in sought:
            adopted = self._known.get(s.ident)
            if adopted is not None:
                found[s.ident] = adopted
                self.stats.reused += 1
            elif self._suspect(s):
                to_look.setdefault(s.loop_id, []).append(s)
        for loop_id, group in to_look.items():
            found.update(await self._sweep(loop_id, group, deadline))
        return found

    def _window_of(self, group: list[Sought]) -> tuple[float, set[str]]:
        """Oldest start and the fences of every window the sought records belong to."""
        since, fences = self._clock(), set()
        for s in group:
            for w in (self._windows.get(s.coord), self._open.get(s.coord)):
                if w is not None:
                    since = min(since, w.since)
                    fence = w.fences.get(s.loop_id)
                    if fence is None:
                        fences.add("")  # one window has no fence: the time bound decides
                    else:
                        fences.add(fence)
        return since, fences

    async def _sweep(
        self, loop_id: str, group: list[Sought], deadline: float | None
    ) -> dict[str, Adopted]:
        client = self._client
        wanted = {s.ident for s in group}
        found: dict[str, Adopted] = {}
        where: dict[str, tuple[Coord, int]] = {}
        since, fences = self._window_of(group)
        stop_at = since - self._skew
        coords = {s.coord for s in group}
        self.stats.sweeps += 1
        unreadable = 0
        if client is not None:
            page_no = 0
            while page_no < MAX_PAGES:
                try:
                    page = await client.list_loop_requests(
                        loop_id, limit=PAGE, offset=page_no * PAGE, deadline=deadline
                    )
                except HitlPermanentError as exc:
                    # 403/404: the loop is not ours or gone; a create there fails the same way.
                    log.warning("lookup in loop %s refused (%s); creating instead", loop_id, exc)
                    break
                self.stats.calls += 1
                self.stats.by_loop[loop_id] = self.stats.by_loop.get(loop_id, 0) + 1
                if page_no == 0 and page and isinstance(page[0].get("id"), str):
                    self._newest.setdefault(loop_id, page[0]["id"])
                passed_fence, oldest = False, None
                for item in page:
                    request_id = item.get("id")
                    if isinstance(request_id, str) and request_id in fences:
                        passed_fence = True
                    created = _epoch(item.get("created_at"))
                    if created is not None:
                        oldest = created if oldest is None else min(oldest, created)
                    mine = self._ours(item)
                    if mine == "unreadable" or not isinstance(request_id, str):
                        unreadable += 1
                        continue
                    if mine is None:
                        continue
                    ident, coord, offset = mine
                    sought = ident in wanted or ident in self._ambiguous
                    if sought or self._in_window(coord, offset):
                        found[ident] = Adopted(request_id, _str(item.get("timeout_at")))
                        where[ident] = (coord, offset)
                page_no += 1
                if (
                    wanted <= found.keys()
                    or (passed_fence and "" not in fences)
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
            self.stats.unreadable += unreadable
            log.warning(
                "lookup in loop %s: %d request(s) with a context.connector that cannot be "
                "read were skipped (not matched to any record)",
                loop_id,
                unreadable,
            )
        for s in group:  # resolved either way now
            self._ambiguous.pop(s.ident, None)
        for coord in coords:
            if coord in self._swept:
                self._swept[coord].add(loop_id)
        for s in group:
            adopted = found.get(s.ident)
            if adopted is not None:
                self.created(s, adopted)
        self.stats.adopted += sum(1 for s in group if s.ident in found)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "lookup in loop %s: %d of %d possibly created record(s) found on HITL.sh",
                loop_id,
                sum(1 for s in group if s.ident in found),
                len(group),
            )
        # Found requests of records not in this batch are kept for when they come.
        for ident, adopted in found.items():
            if ident not in wanted and ident not in self._known:
                coord, offset = where[ident]
                self._known[ident] = adopted
                self._known_at.setdefault(coord, {})[offset] = ident
        return {i: a for i, a in found.items() if i in wanted}

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
        ident, topic, partition, offset = (
            conn.get("ident"),
            conn.get("topic"),
            conn.get("partition"),
            conn.get("offset"),
        )
        if not (
            group == self.group
            and isinstance(ident, str)
            and isinstance(topic, str)
            and isinstance(partition, int)
            and isinstance(offset, int)
            and ident == source_identity(self.group, topic, partition, offset)
        ):
            return "unreadable"
        return ident, (topic, partition), offset

    def _in_window(self, coord: Coord, offset: int) -> bool:
        window = self._windows.get(coord)
        return window is not None and window.covers(offset)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
