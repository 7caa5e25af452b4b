"""Small helpers shared by several test modules (no fixtures: those live in conftest.py)."""

from __future__ import annotations

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
