"""Callback URL tokens: round trip, URL safety, and rejection of tampering or other secrets."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.hitl.tokens import MAX_TOKEN_CHARS, make_callback_token, read_callback_token

SECRET = b"token-secret-0123456789"
URL_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


@pytest.mark.parametrize("event_id", ["c-123", "topic:0:42", "ü/ß?#&=% ", "x" * 256, "😀" * 256])
def test_round_trip_gives_the_event_id_back(event_id: str) -> None:
    token = make_callback_token(event_id, SECRET)
    assert URL_SAFE.fullmatch(token)
    assert len(token) <= MAX_TOKEN_CHARS
    assert read_callback_token(token, SECRET) == event_id


def test_token_is_deterministic_and_differs_per_event() -> None:
    assert make_callback_token("a", SECRET) == make_callback_token("a", SECRET)
    assert make_callback_token("a", SECRET) != make_callback_token("b", SECRET)


def test_str_secret_equals_its_utf8_bytes() -> None:
    assert make_callback_token("e", "s3cret") == make_callback_token("e", b"s3cret")


def test_another_secret_does_not_read_the_token() -> None:
    token = make_callback_token("c-123", SECRET)
    assert read_callback_token(token, b"other-secret") is None


def test_swapping_the_event_part_is_rejected() -> None:
    mine = make_callback_token("c-1", SECRET)
    theirs = make_callback_token("c-2", SECRET)
    forged = theirs.split(".")[0] + "." + mine.split(".")[1]
    assert read_callback_token(forged, SECRET) is None


def test_every_single_character_change_is_rejected() -> None:
    token = make_callback_token("c-123", SECRET)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    for i, char in enumerate(token):
        for other in {alphabet[(alphabet.index(char) + 1) % len(alphabet)], "=", "+"}:
            tampered = token[:i] + other + token[i + 1 :]
            assert read_callback_token(tampered, SECRET) is None, (i, other)


@pytest.mark.parametrize(
    "token",
    ["", ".", "abc", "abc.", ".abc", "a.b.c", "YQ.====", "YQ==.AAAAAAAAAAAAAAAAAAAAAA", "x" * 5000],
)
def test_malformed_tokens_read_as_none(token: str) -> None:
    assert read_callback_token(token, SECRET) is None


def test_truncated_mac_or_non_utf8_event_reads_as_none() -> None:
    token = make_callback_token("c-123", SECRET)
    assert read_callback_token(token[:-2], SECRET) is None
    assert read_callback_token(token + "AA", SECRET) is None


def test_non_string_token_or_empty_secret_reads_as_none() -> None:
    token = make_callback_token("c-123", SECRET)
    assert read_callback_token(None, SECRET) is None  # type: ignore[arg-type]
    assert read_callback_token(token, b"") is None


@pytest.mark.parametrize(
    ("event_id", "secret"), [("", SECRET), ("e", b""), ("x" * 2000, SECRET), ("\ud800", SECRET)]
)
def test_make_refuses_unusable_input_with_value_error(event_id: str, secret: bytes) -> None:
    with pytest.raises(ValueError):
        make_callback_token(event_id, secret)


@settings(max_examples=1000, deadline=None)
@given(event_id=st.text(min_size=1, max_size=64), secret=st.binary(min_size=1, max_size=32))
def test_property_round_trip(event_id: str, secret: bytes) -> None:
    try:
        token = make_callback_token(event_id, secret)
    except UnicodeEncodeError:  # lone surrogates cannot be encoded
        return
    assert read_callback_token(token, secret) == event_id
    assert read_callback_token(token, secret + b"!") is None


_B64 = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=40)


@settings(max_examples=500, deadline=None)
@given(token=st.text(max_size=80) | st.builds(lambda a, b: f"{a}.{b}", _B64, _B64))
def test_property_garbage_never_raises_and_never_verifies(token: str) -> None:
    assert read_callback_token(token, SECRET) is None


def test_rotation_any_listed_secret_verifies_a_retired_one_does_not() -> None:
    old = make_callback_token("ev-r", b"old")
    new = make_callback_token("ev-r", b"new")
    assert read_callback_token(old, [b"new", b"old"]) == "ev-r"
    assert read_callback_token(new, (b"new", "old")) == "ev-r"
    assert read_callback_token(old, [b"new"]) is None
    assert read_callback_token(new, []) is None
    assert read_callback_token(new, [b"", b""]) is None
