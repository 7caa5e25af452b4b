"""Small helpers shared by several test modules (no fixtures: those live in conftest.py)."""

from __future__ import annotations

import time
from typing import Any


def create_body(**changes: Any) -> dict[str, Any]:
    """A valid, documented create-request body, with ``changes`` applied."""
    base: dict[str, Any] = {
        "processing_type": "time-sensitive",
        "type": "markdown",
        "priority": "high",
        "request_text": "Is this post OK?",
        "timeout_seconds": 600,
        "response_type": "single_select",
        "response_config": {
            "options": [
                {"value": "approved", "label": "Approve"},
                {"value": "rejected", "label": "Reject"},
            ]
        },
        "default_response": "rejected",
        "platform": "api",
    }
    base.update(changes)
    return base


def make_processor(settings: Any, client: Any, **kw: Any) -> Any:
    """A ``BatchProcessor`` wired as the app wires it (tests only): its ``Recovery`` looks
    requests up through ``client`` when it can list them."""
    from connector.app import batch_processor
    from connector.submitter.recovery import Recovery

    recovery = kw.pop("recovery", None) or Recovery(
        client if hasattr(client, "list_loop_requests") else None,
        settings.kafka.group_id,
        skew_seconds=settings.batch.lookup_skew_seconds,
        clock=kw.get("clock", time.time),
        default_loop=settings.loops.default,
    )
    return batch_processor(settings, client, recovery, **kw)
