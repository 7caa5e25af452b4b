"""Retry arithmetic: Retry-After, rate-limit headers, backoff, retriable statuses."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.hitl.retry import (
    RateLimitInfo,
    full_jitter_backoff,
    is_retriable_status,
    parse_rate_limit,
    parse_retry_after,
)

NOW = 1_700_000_000.0


def http_date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (None, None),
        ("", None),
        ("soon", None),
        ("-3", None),
        ("5s", None),
    ],
)
def test_retry_after_delta_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_retry_after_http_date_waits_until_the_named_second_is_over() -> None:
    assert parse_retry_after(http_date(NOW + 42), NOW) == pytest.approx(43.0)
    # The sender meant now + 5 = …:04.6 and wrote …:04; we must not call before …:04.6.
    assert parse_retry_after(http_date(NOW + 4), NOW - 0.6) == pytest.approx(5.6)


def test_retry_after_http_date_in_the_past_clamps_to_zero() -> None:
    assert parse_retry_after(http_date(NOW - 600), NOW) == 0.0


def test_retry_after_rfc850_and_asctime_dates() -> None:
    assert parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", 784111778.0) == 0.0
    assert parse_retry_after("Sun Nov  6 08:49:37 1994", 784111770.0) == pytest.approx(8.0)


@settings(max_examples=300)
@given(st.text(), st.floats(min_value=0, max_value=4e9))
def test_retry_after_never_raises_and_is_never_negative(value: str, now: float) -> None:
    result = parse_retry_after(value, now)
    assert result is None or result >= 0.0


def test_rate_limit_headers_epoch_seconds() -> None:
    headers = {
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": "7",
        "X-RateLimit-Reset": "1700003600",
    }
    assert parse_rate_limit(headers, NOW) == RateLimitInfo(100, 7, 1_700_003_600.0)


def test_rate_limit_reset_in_milliseconds_is_converted() -> None:
    info = parse_rate_limit(
        {"x-ratelimit-reset": "1700003600000", "x-ratelimit-remaining": "1"}, NOW
    )
    assert info is not None and info.reset_at == pytest.approx(1_700_003_600.0)


def test_rate_limit_reset_as_delta_seconds_is_relative_to_now() -> None:
    info = parse_rate_limit({"x-ratelimit-reset": "30", "x-ratelimit-remaining": "0"}, NOW)
    assert info is not None and info.reset_at == NOW + 30


def test_rate_limit_garbage_and_missing_headers() -> None:
    assert parse_rate_limit({}, NOW) is None
    assert (
        parse_rate_limit({"X-RateLimit-Remaining": "lots", "X-RateLimit-Limit": "-1"}, NOW) is None
    )
    info = parse_rate_limit({"X-RateLimit-Remaining": "-4", "X-RateLimit-Reset": "nan"}, NOW)
    assert info == RateLimitInfo(None, 0, None)


def test_rate_limit_from_429_body_reset_at_iso() -> None:
    body = {
        "error": True,
        "msg": "API key request limit exceeded",
        "data": {
            "usage_count": 100,
            "usage_limit": 100,
            "remaining": 0,
            "reset_at": "2023-11-14T23:13:20Z",
        },
    }
    assert parse_rate_limit({}, NOW, body) == RateLimitInfo(100, 0, 1_700_003_600.0)


def test_rate_limit_from_test_endpoint_body() -> None:
    body = {
        "data": {
            "rate_limit": {"limit": 100, "remaining": 42, "reset_at": "2023-11-14T23:13:20+00:00"}
        }
    }
    assert parse_rate_limit({}, NOW, body) == RateLimitInfo(100, 42, 1_700_003_600.0)


def test_rate_limit_headers_win_over_body() -> None:
    body = {"data": {"remaining": 9, "reset_at": "garbage"}}
    info = parse_rate_limit({"X-RateLimit-Remaining": "3"}, NOW, body)
    assert info == RateLimitInfo(None, 3, None)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "x"]),
        st.text(max_size=30),
    ),
    st.one_of(st.none(), st.dictionaries(st.text(max_size=10), st.text(max_size=30))),
)
def test_parse_rate_limit_never_raises(headers: dict[str, str], body: object) -> None:
    info = parse_rate_limit(headers, NOW, {"data": body})
    assert info is None or info.remaining is None or info.remaining >= 0


@settings(max_examples=300)
@given(
    st.integers(min_value=-5, max_value=10_000),
    st.floats(min_value=0, max_value=100, allow_nan=False),
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.integers(),
)
def test_backoff_stays_within_zero_and_cap(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    delay = full_jitter_backoff(attempt, base, cap, random.Random(seed))
    assert 0.0 <= delay <= cap


def test_backoff_grows_exponentially_until_the_cap() -> None:
    rng = random.Random(1)
    assert max(full_jitter_backoff(0, 0.5, 60, rng) for _ in range(200)) <= 0.5
    assert max(full_jitter_backoff(3, 0.5, 60, rng) for _ in range(200)) > 2.0
    assert max(full_jitter_backoff(30, 0.5, 60, rng) for _ in range(200)) <= 60


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_retriable_statuses(status: int) -> None:
    assert is_retriable_status(status)


@pytest.mark.parametrize("status", [200, 201, 301, 400, 401, 403, 404, 409, 422, 600])
def test_permanent_statuses(status: int) -> None:
    assert not is_retriable_status(status)
