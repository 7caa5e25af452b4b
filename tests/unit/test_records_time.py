"""The cached ISO formatters in ``connector.records`` agree with ``datetime.isoformat``."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from connector.records import iso_from_ms, iso_now


def reference(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_iso_now_matches_datetime(now: float) -> None:
    assert iso_now(now) == reference(now)


@given(st.integers(min_value=0, max_value=4 * 10**12))
def test_iso_from_ms_matches_datetime(ms: int) -> None:
    assert iso_from_ms(ms) == reference(ms / 1000)


def test_edges() -> None:
    assert iso_now(1700000000.9999996) == "2023-11-14T22:13:21Z"  # rounds into the next second
    assert iso_from_ms(1700000000000) == "2023-11-14T22:13:20Z"
    assert iso_from_ms(-1) is None and iso_from_ms(None) is None
