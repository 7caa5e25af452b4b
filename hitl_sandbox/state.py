"""The sandbox's in-memory store: loops, request records, idempotency keys, stats, call log.

Owned by one event loop (the server's); nothing here is thread-safe or does I/O. Lookups by
id are O(1) dicts; each API key's requests are also kept in creation order for listing.
Request records carry the whole lifecycle (status, answer, reviewer, claim fields,
timeout_at, callback_url, loop, owning key); registered webhooks, the reviewer/webhook
counters and the bounded delivery log live here too. ``reviewer`` and ``webhooks`` change them.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

PRIORITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3}
STATUSES = ("pending", "claimed", "completed", "timeout", "cancelled")
DEFERRED_TIMEOUT_SECONDS = 30 * 86_400  # docs: deferred default is 30 days

_PROCESS_ID = os.urandom(5).hex()
_counter = itertools.count(int.from_bytes(os.urandom(3), "big"))


def object_id(now: float) -> str:
    """A 24-hex id shaped like a MongoDB ObjectId (time, process, counter)."""
    return f"{int(now) & 0xFFFFFFFF:08x}{_PROCESS_ID}{next(_counter) & 0xFFFFFF:06x}"


def stable_id(*parts: str) -> str:
    """A deterministic 24-hex id (for key and user ids derived from an API key)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def iso(ts: float | None) -> str | None:
    """UTC ISO-8601 with milliseconds and a ``Z`` suffix."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


@dataclass(slots=True)
class LoopRecord:
    id: str
    name: str
    description: str
    icon: str
    owner: str | None  # key id; None = shared (preset or admin-created), usable by every key
    creator_id: str
    created_at: float
    members: list[dict[str, Any]]
    broadcast: list[dict[str, Any]]  # precomputed ``broadcasted_to`` entries
    invite_code: str

    def public(self) -> dict[str, Any]:
        stamp = iso(self.created_at)
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "icon": self.icon,
            "creator_id": self.creator_id,
            "members": self.members,
            "member_count": len(self.members),
            "pending_count": 0,
            "created_at": stamp,
            "updated_at": stamp,
        }


@dataclass(slots=True)
class RequestRecord:
    id: str
    seq: int
    key_id: str
    creator_id: str
    loop_id: str
    body: dict[str, Any]  # the validated create body (documented fields only)
    created_at: float
    timeout_at: float
    broadcasted_to: list[dict[str, Any]]
    idempotency_key: str | None
    status: str = "pending"
    updated_at: float = 0.0
    response_data: Any = None
    response_by: str | None = None
    response_at: float | None = None
    claimed_by: str | None = None
    claimed_at: float | None = None
    cancelled_at: float | None = None
    previous_status: str | None = None
    refunded: bool = False
    answer: Any = None  # the canonical raw answer (option value, number, bool, list, text)
    reviewer: dict[str, Any] | None = None  # {user_id, name, email} of who answered/claimed

    @property
    def response_time_seconds(self) -> float | None:
        if self.response_at is None:
            return None
        return round(self.response_at - self.created_at, 3)

    def summary(self) -> dict[str, Any]:
        """The list-endpoint shape."""
        b = self.body
        return {
            "id": self.id,
            "loop_id": self.loop_id,
            "processing_type": b["processing_type"],
            "type": b["type"],
            "priority": b["priority"],
            "request_text": b["request_text"],
            "response_type": b["response_type"],
            "status": self.status,
            "response_data": self.response_data,
            "response_by": self.response_by,
            "response_at": iso(self.response_at),
            "response_time_seconds": self.response_time_seconds,
            "timeout_at": iso(self.timeout_at),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }

    def public(self) -> dict[str, Any]:
        """The get-request shape (``data.request``)."""
        b = self.body
        out = self.summary()
        out.update(
            creator_id=self.creator_id,
            api_key_id=self.key_id,
            image_url=b.get("image_url"),
            context=b.get("context") or {},
            platform=b["platform"],
            platform_version=b.get("platform_version"),
            response_config=b["response_config"],
            default_response=b["default_response"],
            callback_url=b.get("callback_url"),
            broadcasted_to=self.broadcasted_to,
            broadcasted_at=iso(self.created_at),
            response_by_user=self.reviewer if self.response_by is not None else None,
        )
        return out

    def admin(self) -> dict[str, Any]:
        out = self.public()
        out.update(
            idempotency_key=self.idempotency_key,
            timeout_seconds=self.body.get("timeout_seconds"),
            claimed_by=self.claimed_by,
            claimed_at=iso(self.claimed_at),
            cancelled_at=iso(self.cancelled_at),
            previous_status=self.previous_status,
        )
        return out


@dataclass(slots=True)
class WebhookRecord:
    """A webhook registered with ``POST /webhooks``; ``secret`` is never shown again."""

    id: str
    key_id: str
    url: str
    events: tuple[str, ...]
    secret: str | None
    loop_id: str | None
    created_at: float

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "events": list(self.events),
            "loop_id": self.loop_id,
            "type": "loop" if self.loop_id else "global",
            "enabled": True,
            "has_secret": self.secret is not None,
            "created_at": iso(self.created_at),
        }


@dataclass
class WebhookStats:
    """Delivery counters; ``sent`` counts HTTP attempts (first tries, retries, duplicates)."""

    sent: int = 0
    delivered: int = 0  # attempts answered 2xx
    failed_attempts: int = 0  # non-2xx answers, connection errors, timeouts
    retries: int = 0  # attempts after the first
    dropped: int = 0  # never sent (fault)
    duplicated: int = 0  # extra copies sent (fault)
    reordered: int = 0  # held back until the next delivery to the same URL (fault)
    rejected: int = 0  # not retried: 4xx other than 408/429 (or 1xx/3xx)
    gave_up: int = 0  # retry schedule exhausted
    by_event: dict[str, dict[str, int]] = field(default_factory=dict)  # emitted/delivered

    def bump_event(self, event: str, what: str) -> None:
        row = self.by_event.setdefault(event, {"emitted": 0, "delivered": 0})
        row[what] += 1


@dataclass
class Stats:
    creates: int = 0
    rate_limited: int = 0
    idempotent_replays: int = 0
    cancels: int = 0
    api_calls: dict[str, dict[str, int]] = field(default_factory=dict)
    unknown_fields: dict[str, int] = field(default_factory=dict)
    errors_injected: dict[str, int] = field(default_factory=dict)
    auto_reviewed: int = 0
    answered_by_hand: int = 0
    timeouts: int = 0
    claims: int = 0
    escalations: int = 0
    webhooks: WebhookStats = field(default_factory=WebhookStats)

    def bump(self, table: dict[str, int], name: str) -> None:
        table[name] = table.get(name, 0) + 1


class SandboxState:
    """Loops, requests, idempotency keys, statistics and the call log of one sandbox."""

    def __init__(self, loop_members: int, call_log_size: int, delivery_log_size: int = 0) -> None:
        self.loop_members = loop_members
        self.loops: dict[str, LoopRecord] = {}
        self.preset_loop_ids: set[str] = set()
        self.requests: dict[str, RequestRecord] = {}
        self.by_key: dict[str, list[RequestRecord]] = {}
        self.idempotency: dict[tuple[str, str], bytes] = {}
        self.stats = Stats()
        # (wall time, method, endpoint template, path style, status, key id)
        self.calls: deque[tuple[float, str, str, str, int, str | None]] = deque(
            maxlen=call_log_size
        )
        self.webhooks: dict[str, WebhookRecord] = {}
        self.webhooks_by_key: dict[str, list[WebhookRecord]] = {}
        # (wall time, request id, event, url, attempt, HTTP status or None, error or outcome)
        self.deliveries: deque[tuple[float, str, str, str, int, int | None, str | None]] = deque(
            maxlen=delivery_log_size
        )
        self._seq = itertools.count()

    def reset(self, *, drop_loops: bool = False) -> None:
        """Forget requests, idempotency keys, registered webhooks, stats, calls and the
        delivery log (and non-preset loops if asked)."""
        self.requests.clear()
        self.by_key.clear()
        self.idempotency.clear()
        self.webhooks.clear()
        self.webhooks_by_key.clear()
        self.stats = Stats()
        self.calls.clear()
        self.deliveries.clear()
        if drop_loops:
            self.loops = {k: v for k, v in self.loops.items() if k in self.preset_loop_ids}

    def add_loop(
        self,
        now: float,
        *,
        loop_id: str | None = None,
        owner: str | None = None,
        name: str = "Sandbox loop",
        description: str = "",
        icon: str = "🧪",
        preset: bool = False,
    ) -> LoopRecord:
        members = []
        for n in range(self.loop_members):
            user_id = object_id(now)
            email = f"reviewer{n + 1}.{user_id[-6:]}@sandbox.hitl.local"
            members.append(
                {"user_id": user_id, "email": email, "status": "active", "joined_at": iso(now)}
            )
        loop = LoopRecord(
            id=loop_id or object_id(now),
            name=name,
            description=description,
            icon=icon,
            owner=owner,
            creator_id=stable_id("user", owner or "sandbox"),
            created_at=now,
            members=members,
            broadcast=[
                {
                    "user_id": m["user_id"],
                    "email": m["email"],
                    "role": "member",
                    "notification_sent": True,
                    "notification_error": None,
                }
                for m in members
            ],
            invite_code=os.urandom(4).hex().upper(),
        )
        self.loops[loop.id] = loop
        if preset:
            self.preset_loop_ids.add(loop.id)
        return loop

    def add_request(
        self,
        now: float,
        *,
        key_id: str,
        loop: LoopRecord,
        body: dict[str, Any],
        idempotency_key: str | None,
        timeout_scale: float = 1.0,
    ) -> RequestRecord:
        timeout = (body.get("timeout_seconds") or DEFERRED_TIMEOUT_SECONDS) * timeout_scale
        record = RequestRecord(
            id=object_id(now),
            seq=next(self._seq),
            key_id=key_id,
            creator_id=stable_id("user", key_id),
            loop_id=loop.id,
            body=body,
            created_at=now,
            updated_at=now,
            timeout_at=now + timeout,
            broadcasted_to=loop.broadcast,
            idempotency_key=idempotency_key,
        )
        self.requests[record.id] = record
        self.by_key.setdefault(key_id, []).append(record)
        self.stats.creates += 1
        return record

    def add_webhook(
        self,
        now: float,
        *,
        key_id: str,
        url: str,
        events: tuple[str, ...],
        secret: str | None,
        loop_id: str | None,
    ) -> WebhookRecord:
        hook = WebhookRecord(object_id(now), key_id, url, events, secret, loop_id, now)
        self.webhooks[hook.id] = hook
        self.webhooks_by_key.setdefault(key_id, []).append(hook)
        return hook

    def record_call(
        self, now: float, method: str, endpoint: str, style: str, status: int, key_id: str | None
    ) -> None:
        by_status = self.stats.api_calls.setdefault(f"{method} {endpoint}", {})
        code = str(status)
        by_status[code] = by_status.get(code, 0) + 1
        if status == 429:
            self.stats.rate_limited += 1
        self.calls.append((now, method, endpoint, style, status, key_id))

    def status_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for record in self.requests.values():
            counts[record.status] = counts.get(record.status, 0) + 1
        return counts


def sort_requests(records: list[RequestRecord], sort: str) -> list[RequestRecord]:
    """Order for the list endpoint; ``records`` is in creation order."""
    if sort == "created_at_asc":
        return records
    if sort == "created_at_desc":
        return records[::-1]
    if sort == "priority_desc":
        return sorted(records, key=lambda r: (PRIORITY_RANK[r.body["priority"]], -r.seq))
    return sorted(records, key=lambda r: (r.status, -r.seq))  # status_asc
