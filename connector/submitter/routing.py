"""Which loop an event goes to, and whether the policy decides it without a human. Pure.

Order for the loop: the event's own ``loop_id`` (when allowed), then the first matching rule,
then the default. The policy looks only at ``ai_analysis``; rejection wins over approval.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

from connector.config import LoopSettings, PolicySettings, RouteRule
from connector.submitter.events import ContentEvent


class PolicyDecision(NamedTuple):  # a tuple: built once per event on the policy path
    decision: str
    reason: str


def _matches(rule: RouteRule, event: ContentEvent, source_name: str | None) -> bool:
    if rule.content_type is not None and event.content_type not in rule.content_type:
        return False
    if rule.priority is not None and event.priority not in rule.priority:
        return False
    if rule.flags_any is not None and not set(rule.flags_any) & set(event.flags):
        return False
    return rule.source is None or source_name in rule.source


def choose_loop(event: ContentEvent, loops: LoopSettings) -> str | None:
    if event.loop_id and loops.allow_event_override:
        return event.loop_id
    source_name = (event.metadata or {}).get("source")
    source = source_name if isinstance(source_name, str) else None
    for rule in loops.routes:
        if _matches(rule, event, source):
            return rule.loop_id
    return loops.default


class Policy:
    """The auto-decision policy, prepared once from its settings (the texts of its thresholds
    too: formatting four floats per event was a visible share of the policy path's CPU)."""

    def __init__(self, settings: PolicySettings) -> None:
        self.enabled = settings.enabled
        self._reject = settings.reject_decision
        self._approve = settings.approve_decision
        self._reject_flags = frozenset(settings.reject_flags)
        self._reject_min_risk = settings.reject_min_risk
        self._approve_min_confidence = settings.approve_min_confidence
        self._approve_max_risk = settings.approve_max_risk
        self._risk_tail = f" >= {settings.reject_min_risk}"
        self._approve_mid = f" >= {settings.approve_min_confidence} and risk_score "
        self._approve_tail = f" <= {settings.approve_max_risk}"

    def decide(self, event: ContentEvent) -> PolicyDecision | None:
        analysis = event.ai_analysis
        if analysis is None or not self.enabled:
            return None
        # parse_event validated these: scores are int/float in [0, 1], flags a list of strings.
        flags = analysis.get("flags")
        if flags:
            bad_flags = self._reject_flags.intersection(flags)
            if bad_flags:
                return PolicyDecision(self._reject, f"flags {', '.join(sorted(bad_flags))}")
        risk = analysis.get("risk_score")
        if risk is None:
            return None
        risk = float(risk)
        if risk >= self._reject_min_risk:
            return PolicyDecision(self._reject, "risk_score " + _text(risk) + self._risk_tail)
        confidence = analysis.get("confidence")
        if (
            confidence is not None
            and confidence >= self._approve_min_confidence
            and risk <= self._approve_max_risk
        ):
            reason = (
                "confidence "
                + _text(float(confidence))
                + self._approve_mid
                + _text(risk)
                + self._approve_tail
            )
            return PolicyDecision(self._approve, reason)
        return None


def _text(value: float) -> str:
    """A score as text, shortest round-trip digits like ``repr`` (orjson's: 4x as fast)."""
    return orjson.dumps(value).decode()
