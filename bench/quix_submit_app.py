"""The create path as a Python team would write it with Quix Streams: a baseline of the bench.

``python -m bench.quix_submit_app BOOTSTRAP INPUT OUTPUT GROUP BASE_URL API_KEY LOOP``

An exactly-once Quix Streams application that creates one HITL.sh request per event with
``requests`` (a keep-alive ``Session``, one call at a time, as the integrations page's client
does) and writes ``{event_id, request_id}`` to OUTPUT, offsets committed with the output in one
transaction at Quix's default ``commit_interval``. The request body is the one the naive
baseline of ``bench.submit`` sends. Not part of the connector; runs in the bench's baseline
environment (the ``bench`` extra: quixstreams, requests).
"""

from __future__ import annotations

import sys
from typing import Any


def request_body(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "processing_type": "time-sensitive",
        "type": "markdown",
        "priority": "medium",
        "request_text": event.get("content", ""),
        "response_type": "single_select",
        "response_config": {
            "options": [
                {"value": "approved", "label": "Approve"},
                {"value": "rejected", "label": "Reject"},
            ]
        },
        "default_response": "rejected",
        "platform": "api",
        "timeout_seconds": 3600,
    }


def main(argv: list[str]) -> None:
    import requests  # the baseline environment's
    from quixstreams import Application

    bootstrap, source, sink, group, base_url, api_key, loop = argv[:7]
    http = requests.Session()
    http.headers.update({"Authorization": f"Bearer {api_key}"})
    url = f"{base_url}/v1/api/loops/{loop}/requests"

    def create(event: dict[str, Any]) -> dict[str, Any]:
        response = http.post(url, json=request_body(event), timeout=30)
        response.raise_for_status()
        data = response.json().get("data") or {}
        return {"event_id": event.get("id"), "request_id": data.get("request_id")}

    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        loglevel="WARNING",
    )
    sdf = app.dataframe(app.topic(source, value_deserializer="json"))
    sdf = sdf.apply(create)
    sdf.to_topic(app.topic(sink, value_serializer="json"))
    app.run()


if __name__ == "__main__":
    main(sys.argv[1:])
