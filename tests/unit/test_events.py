"""Input event parsing: the seed's shape, documented fields, and every rejection reason."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.records import SourceRef
from connector.submitter.events import InvalidEvent, parse_event

SRC = SourceRef("content.events", 3, 42, 1_700_000_000_000)


def parse(value: object, key: bytes | None = None, max_bytes: int = 100_000):  # type: ignore[no-untyped-def]
    raw = value if isinstance(value, bytes) else orjson.dumps(value)
    return parse_event(raw, key, SRC, max_bytes=max_bytes)


def test_seed_shaped_event_maps_to_hitl_vocabulary() -> None:
    event = parse(
        {
            "id": "c-1",
            "content": "hello",
            "content_type": "text",
            "priority": "normal",
            "ai_analysis": {"confidence": 0.6, "flags": ["spam"], "risk_score": 0.7},
            "metadata": {"user_id": "u-9", "source": "content_api"},
        }
    )
    assert (event.event_id, event.hitl_type, event.priority) == ("c-1", "markdown", "medium")
    assert event.flags == ["spam"]
    assert event.score("risk_score") == 0.7


def test_text_field_is_accepted_for_content() -> None:
    assert parse({"id": "x", "text": "body"}).content == "body"


def test_id_falls_back_to_key_then_coordinates() -> None:
    assert parse({"content": "a"}, key=b"k-7").event_id == "k-7"
    assert parse({"content": "a"}).event_id == "content.events:3:42"
    assert parse({"id": 17, "content": "a"}).event_id == "17"


@pytest.mark.parametrize(
    ("value", "reason", "needle"),
    [
        (b"{nope", "invalid_json", "not JSON"),
        (b"\xff\xfe\xfd", "invalid_utf8", "UTF-8"),
        ([1, 2], "schema", "JSON object"),
        ({"id": "a"}, "schema", "content"),
        ({"id": "a", "content": "  "}, "schema", "content"),
        ({"id": "a", "content": 5}, "schema", "content must be a string"),
        ({"id": "a", "content": "x", "priority": "urgent"}, "schema", "priority"),
        ({"id": "a", "content": "x", "content_type": "hologram"}, "schema", "content_type"),
        ({"id": "a", "content": "x", "content_type": "video"}, "schema", "video_url"),
        ({"id": "a", "content_type": "file", "file_url": "ftp://x/y.pdf"}, "schema", "file_url"),
        ({"id": "a", "content_type": "audio", "audio_url": "https://a b"}, "schema", "audio_url"),
        ({"id": "a", "content_type": "image", "content": "pic"}, "schema", "image_url"),
        ({"id": "a", "content": "x", "ai_analysis": {"risk_score": "high"}}, "schema", "risk"),
        ({"id": "a", "content": "x", "ai_analysis": {"confidence": 3}}, "schema", "between"),
        ({"id": "a", "content": "x", "ai_analysis": {"flags": "spam"}}, "schema", "flags"),
        ({"id": "a", "content": "x", "metadata": []}, "schema", "metadata"),
        ({"id": True, "content": "x"}, "schema", "id"),
        ({"id": "a" * 300, "content": "x"}, "schema", "longer"),
        ({"id": "a\r\nX-Injected: yes", "content": "x"}, "schema", "U+000D at position 1"),
        ({"id": "a\nb", "content": "x"}, "schema", "id contains the control character U+000A"),
        ({"id": "a\u2028b", "content": "x"}, "schema", "U+2028"),
        ({"id": "a\x00", "content": "x"}, "schema", "U+0000"),
        ({"id": "a", "content": "x", "loop_id": "l\r\n1"}, "schema", "loop_id contains"),
    ],
)
def test_invalid_events_name_their_problem(value: object, reason: str, needle: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse(value)
    assert info.value.reason == reason
    assert needle in info.value.detail


def test_too_large_and_tombstone() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse({"id": "a", "content": "x" * 500}, max_bytes=100)
    assert info.value.reason == "too_large"
    with pytest.raises(InvalidEvent) as info:
        parse_event(None, None, SRC, max_bytes=100)
    assert info.value.reason == "schema"


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=300)
    | st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**63 - 1)
        | st.floats(allow_nan=False)
        | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
        ),
        max_leaves=20,
    ).map(orjson.dumps)
)
def test_any_bytes_either_parse_or_raise_invalid_event(raw: bytes) -> None:
    try:
        event = parse_event(raw, None, SRC, max_bytes=10_000)
    except InvalidEvent as exc:
        assert exc.reason in {"invalid_json", "invalid_utf8", "schema", "too_large"}
    else:
        assert event.event_id
        assert event.hitl_type in {"markdown", "image"}


def test_key_derived_id_with_control_characters_is_refused() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse({"content": "a"}, key=b"k\r\nX-Injected: yes")
    assert info.value.reason == "schema" and "from the record key" in info.value.detail


def test_printable_unicode_ids_pass() -> None:
    assert parse({"id": "café-👍 1", "content": "a"}).event_id == "café-👍 1"


def test_file_video_audio_events_carry_their_url_like_image() -> None:
    for kind in ("file", "video", "audio", "image"):
        url = f"https://cdn.example.com/x.{kind}"
        event = parse({"id": kind, "content_type": kind, f"{kind}_url": url})
        assert (event.hitl_type, event.media_url) == (kind, url)
    pdf = parse(
        {"id": "f", "content_type": "file", "file_url": "https://x/a.pdf", "file_name": "a.pdf"}
    )
    assert pdf.file_fields == {"file_type": None, "file_name": "a.pdf"}
