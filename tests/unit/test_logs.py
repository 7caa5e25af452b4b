"""Logs: JSON lines with event and request ids by default, readable text on a terminal."""

from __future__ import annotations

import io
import logging

import orjson

from connector.config import Settings
from connector.hitl.client import HitlClient
from connector.logs import JsonFormatter, setup_logging


def test_json_lines_carry_ids_and_levels() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            "callback to unmatched: %s",
            "token_mismatch",
            extra={"request_id": "r-1", "event_id": "e-1"},
        )
    finally:
        logger.removeHandler(handler)
    line = orjson.loads(stream.getvalue())
    assert line["msg"] == "callback to unmatched: token_mismatch"
    assert (line["level"], line["request_id"], line["event_id"]) == ("warning", "r-1", "e-1")
    assert line["ts"].endswith("Z")


def test_format_choice() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging("INFO", "json")
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        setup_logging("INFO", "console")
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


def test_secrets_do_not_reach_reprs_or_dumps() -> None:
    s = Settings(hitl={"api_key": "hitl_live_SECRET"}, gateway={"secrets": ["whsec_SECRET"]})
    for text in (repr(s), str(s.model_dump()), s.model_dump_json(), repr(HitlClient(s.hitl))):
        assert "SECRET" not in text


def test_kafka_noise_filter_lowers_and_counts_retry_messages() -> None:
    from connector.logs import KafkaNoiseFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    noise = KafkaNoiseFilter(window=0.2)
    handler.addFilter(noise)
    parent = logging.getLogger("aiokafka")
    saved = (parent.handlers[:], parent.propagate, parent.level)
    parent.handlers[:], parent.propagate = [handler], False
    parent.setLevel(logging.WARNING)
    logger = logging.getLogger("aiokafka.client")
    try:
        for _ in range(500):  # a down broker: one per attempt
            logger.error("Unable connect to node with id %s: %s", 2, "[Errno 111] refused")
        logger.error("Unable to update metadata from %s", [2])
        logging.getLogger("aiokafka.other").error("something unexpected: %s", "boom")
        import time

        time.sleep(0.25)
        logger.error("Unable connect to node with id %s: %s", 2, "[Errno 111] refused")
    finally:
        parent.handlers[:], parent.propagate = saved[0], saved[1]
        parent.setLevel(saved[2])
    lines = stream.getvalue().splitlines()
    assert lines[0] == "WARNING Unable connect to node with id 2: [Errno 111] refused"
    assert lines[1] == "WARNING Unable to update metadata from [2]"
    assert lines[2] == "ERROR something unexpected: boom"  # not a known retry: stays an error
    assert lines[3].startswith("WARNING Unable connect to node with id 2")
    assert "(499 more like this in 0s)" in lines[3]
    assert len(lines) == 4 and noise.suppressed == 499
    assert not [line for line in lines if line.startswith("ERROR") and "node" in line]
