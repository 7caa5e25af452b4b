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
