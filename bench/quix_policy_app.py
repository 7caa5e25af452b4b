"""The policy path as a Python team would write it with Quix Streams: the bench's baseline.

``python -m bench.quix_policy_app BOOTSTRAP INPUT OUTPUT GROUP [COMMIT_INTERVAL]``

An exactly-once Quix Streams application doing the same work as the connector's policy path:
JSON in, the same auto-decision rule over ``ai_analysis`` (``connector.submitter.routing``'s
thresholds), a decision record out (keyed like the input), offsets committed with the output
in one transaction. ``COMMIT_INTERVAL`` omitted → Quix's own default (5 s). Not part of the
connector; a dev dependency of the benchmark only (``pip install quixstreams``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

APPROVE_MIN_CONFIDENCE = 0.95
APPROVE_MAX_RISK = 0.1
REJECT_MIN_RISK = 0.9
REJECT_FLAGS = frozenset({"spam"})


def decide(value: Any) -> dict[str, Any] | None:
    """The connector's policy rule on one event; ``None`` when a human would be needed."""
    if not isinstance(value, dict):
        return None
    analysis = value.get("ai_analysis")
    if not isinstance(analysis, dict):
        return None
    flags = analysis.get("flags") or []
    risk = analysis.get("risk_score")
    confidence = analysis.get("confidence")
    decision = None
    if REJECT_FLAGS.intersection(f for f in flags if isinstance(f, str)):
        decision, reason = "rejected", "flags"
    elif isinstance(risk, int | float) and risk >= REJECT_MIN_RISK:
        decision, reason = "rejected", "risk_score"
    elif (
        isinstance(risk, int | float)
        and isinstance(confidence, int | float)
        and confidence >= APPROVE_MIN_CONFIDENCE
        and risk <= APPROVE_MAX_RISK
    ):
        decision, reason = "approved", "confidence and risk_score"
    if decision is None:
        return None
    return {
        "schema": "hitl.decision.v1",
        "event_id": value.get("id"),
        "status": "auto",
        "decision": decision,
        "response": decision,
        "decided_by": "policy",
        "via": "policy",
        "reason": reason,
        "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str]) -> None:
    from quixstreams import Application  # a bench-only dependency

    bootstrap, source, sink, group = argv[:4]
    options: dict[str, Any] = {}
    if len(argv) > 4:
        options["commit_interval"] = float(argv[4])
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        loglevel="WARNING",
        **options,
    )
    sdf = app.dataframe(app.topic(source, value_deserializer="json"))
    sdf = sdf.apply(decide).filter(lambda d: d is not None)
    sdf.to_topic(app.topic(sink, value_serializer="json"))
    app.run()


if __name__ == "__main__":
    main(sys.argv[1:])
