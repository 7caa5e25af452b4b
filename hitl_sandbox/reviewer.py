"""The reviewer side of the sandbox: the request lifecycle after create, and its events.

pending → (claimed) → completed | timeout | cancelled. ``created`` schedules the timeout of
every request (``timeout_at``: status ``timeout``, null ``response_data`` and reviewer fields
as documented; ``kind_timeout_response_data`` fills in ``default_response``) and, with
``auto_review``, an answer after a random delay from ``[review_delay_min_ms,
review_delay_max_ms]``, preceded by ``request.claimed`` at half the delay (``claim_events``)
and ``request.escalated`` at three quarters (``escalate_share`` of requests; status
unchanged). ``respond`` answers by hand exactly like the auto-reviewer. Every transition
emits its webhook through the dispatcher. Answers themselves are drawn and checked in
``answers``; this module decides *when* and changes the records.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

from hitl_sandbox import payloads
from hitl_sandbox.answers import parse_answer, random_answer, shape
from hitl_sandbox.options import SandboxOptions
from hitl_sandbox.scheduler import Scheduler
from hitl_sandbox.state import RequestRecord, SandboxState, stable_id
from hitl_sandbox.webhooks import WebhookDispatcher

ACTIVE = ("pending", "claimed")


class NotAnswerable(Exception):
    """The request is no longer pending or claimed."""


class Reviewer:
    """Schedules and applies claims, escalations, answers and timeouts."""

    def __init__(
        self,
        state: SandboxState,
        options: SandboxOptions,
        dispatcher: WebhookDispatcher,
        clock: Callable[[], float],
    ) -> None:
        self.state = state
        self.options = options
        self.dispatcher = dispatcher
        self.clock = clock
        self._rng = random.Random(options.seed)  # noqa: S311 - simulation, not security
        self.timers = Scheduler(clock, "sandbox-reviewer")

    def configure(self, options: SandboxOptions) -> None:
        """Apply new options; switching ``auto_review`` on also plans open requests."""
        switched_on = options.auto_review and not self.options.auto_review
        self.options = options
        if switched_on:
            for record in self.state.requests.values():
                if record.status in ACTIVE:
                    self._plan(record, self.clock())

    def start(self) -> None:
        self.timers.start()

    async def stop(self) -> None:
        await self.timers.stop()

    def clear(self) -> None:
        self.timers.clear()

    # ---- scheduling -----------------------------------------------------------------------

    def created(self, record: RequestRecord) -> None:
        self._at(record.timeout_at, self._expire, record)
        if self.options.auto_review:
            self._plan(record, record.created_at)

    def _plan(self, record: RequestRecord, start: float) -> None:
        options, rng = self.options, self._rng
        low, high = options.review_delay_min_ms, options.review_delay_max_ms
        delay = rng.uniform(low, high) / 1000
        if options.claim_events:
            self._at(start + delay * 0.5, self._claim, record)
        if options.escalate_share and rng.random() < options.escalate_share:
            self._at(start + delay * 0.75, self._escalate, record)
        self._at(start + delay, self._auto_answer, record)

    def _at(
        self, when: float, action: Callable[[RequestRecord], None], record: RequestRecord
    ) -> None:
        self.timers.at(when, functools.partial(self._run, action, record))

    def _run(self, action: Callable[[RequestRecord], None], record: RequestRecord) -> None:
        # After a reset the record is gone from the store: do nothing for it.
        if record.status in ACTIVE and self.state.requests.get(record.id) is record:
            action(record)

    # ---- transitions ----------------------------------------------------------------------

    def _pick_reviewer(self, record: RequestRecord) -> dict[str, Any]:
        loop = self.state.loops.get(record.loop_id)
        if loop is None or not loop.members:
            user_id = stable_id("reviewer", record.loop_id)
            return {
                "user_id": user_id,
                "name": "Sandbox Reviewer",
                "email": "reviewer@sandbox.hitl.local",
            }
        n = self._rng.randrange(len(loop.members))
        member = loop.members[n]
        return {
            "user_id": member["user_id"],
            "name": f"Sandbox Reviewer {n + 1}",
            "email": member["email"],
        }

    def _emit(self, event: str, record: RequestRecord) -> None:
        self.dispatcher.emit(event, record, self.state.loops.get(record.loop_id))

    def _claim(self, record: RequestRecord) -> None:
        if record.status != "pending":
            return
        now = self.clock()
        record.reviewer = self._pick_reviewer(record)
        record.status = "claimed"
        record.claimed_by = record.reviewer["user_id"]
        record.claimed_at = record.updated_at = now
        self.state.stats.claims += 1
        self._emit(payloads.CLAIMED, record)

    def _escalate(self, record: RequestRecord) -> None:
        self.state.stats.escalations += 1
        self._emit(payloads.ESCALATED, record)

    def _auto_answer(self, record: RequestRecord) -> None:
        body = record.body
        answer = random_answer(
            body["response_type"], body["response_config"], self.options.answer_mix, self._rng
        )
        self.state.stats.auto_reviewed += 1
        self._complete(record, answer)

    def respond(self, record: RequestRecord, response_data: Any) -> None:
        """Answer by hand; ``AnswerError`` for an invalid answer, ``NotAnswerable`` if final."""
        if record.status not in ACTIVE:
            raise NotAnswerable(
                f"Request is {record.status}; only pending or claimed requests can be answered"
            )
        body = record.body
        answer = parse_answer(body["response_type"], body["response_config"], response_data)
        self.state.stats.answered_by_hand += 1
        self._complete(record, answer)

    def _complete(self, record: RequestRecord, answer: Any) -> None:
        now = self.clock()
        body = record.body
        record.reviewer = record.reviewer or self._pick_reviewer(record)
        record.previous_status, record.status = record.status, "completed"
        record.answer = answer
        record.response_data = shape(
            body["response_type"], body["response_config"], answer, self.options.response_data_style
        )
        record.response_by = record.reviewer["user_id"]
        record.response_at = record.updated_at = now
        self._emit(payloads.COMPLETED, record)

    def _expire(self, record: RequestRecord) -> None:
        record.previous_status, record.status = record.status, "timeout"
        record.answer = record.body["default_response"]
        # Documented: null answer fields on timeout; the caller applies default_response.
        record.response_data = record.answer if self.options.kind_timeout_response_data else None
        record.response_by = record.response_at = None
        record.reviewer = None
        record.updated_at = self.clock()
        self.state.stats.timeouts += 1
        self._emit(payloads.TIMEOUT, record)

    def cancelled(self, record: RequestRecord) -> None:
        """Called by the cancel endpoint after it changed the record."""
        self._emit(payloads.CANCELLED, record)
