"""Which loop an event goes to, and whether the policy decides it without a human. Pure.

Order for the loop: the event's own ``loop_id`` (when allowed), then the first matching rule,
then the default. The policy looks only at ``ai_analysis``; rejection wins over approval.
"""

from __future__ import annotations

from typing import NamedTuple

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


def decide_by_policy(event: ContentEvent, policy: PolicySettings) -> PolicyDecision | None:
    analysis = event.ai_analysis
    if analysis is None or not policy.enabled:
        return None
    # parse_event validated these: scores are int/float in [0, 1], flags a list of strings.
    flags = analysis.get("flags")
    if flags:
        bad_flags = sorted(set(policy.reject_flags).intersection(flags))
        if bad_flags:
            return PolicyDecision(policy.reject_decision, f"flags {', '.join(bad_flags)}")
    risk = analysis.get("risk_score")
    if risk is None:
        return None
    risk = float(risk)
    if risk >= policy.reject_min_risk:
        return PolicyDecision(
            policy.reject_decision, f"risk_score {risk} >= {policy.reject_min_risk}"
        )
    confidence = analysis.get("confidence")
    if (
        confidence is not None
        and float(confidence) >= policy.approve_min_confidence
        and risk <= policy.approve_max_risk
    ):
        return PolicyDecision(
            policy.approve_decision,
            f"confidence {float(confidence)} >= {policy.approve_min_confidence} and "
            f"risk_score {risk} <= {policy.approve_max_risk}",
        )
    return None
