"""Pure retry arithmetic for the HITL.sh client: no I/O, no clocks of its own.

Owns: reading ``Retry-After`` (delta-seconds or HTTP-date) and the ``X-RateLimit-*`` headers
(plus the ``reset_at`` a 429 body or ``GET /test`` may carry), full-jitter backoff, and which
HTTP statuses are worth retrying. Every parser tolerates garbage and answers ``None`` rather
than raising. Deciding *when* to call is ``pacing``'s job; making calls is ``client``'s.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

from connector.records import epoch

_DELTA_SECONDS = re.compile(r"\d{1,15}(?:\.\d{1,9})?")
_INT = re.compile(r"-?\d{1,15}(?:\.\d{1,9})?")
# Reset values below this are "seconds from now" (ten years), above _MILLIS they are epoch ms.
_DELTA_MAX = 315_360_000.0
_MILLIS = 100_000_000_000.0
_PARSE_ERRORS = (ValueError, TypeError, IndexError, OverflowError, OSError)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from wall-clock ``now``; negative clamps to 0; garbage → ``None``.

    An HTTP-date names a whole second and senders truncate ``now + delay`` to it, so we wait
    until that second is over: never earlier than the sender meant, at most 1 s later.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return float(text)
    when = _parse_http_date(text)
    if when is None:
        return None
    return max(0.0, when + 1.0 - now)


def _parse_http_date(text: str) -> float | None:
    try:
        parsed = parsedate_to_datetime(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        stamp = parsed.timestamp()
    except _PARSE_ERRORS:
        return None
    return stamp if math.isfinite(stamp) else None


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What the server said about the key's budget; ``reset_at`` is wall-clock epoch seconds."""

    limit: int | None
    remaining: int | None
    reset_at: float | None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and _INT.fullmatch(value.strip()):
        number = float(value.strip())
    else:
        return None
    return number if math.isfinite(number) else None


def _reset_epoch(value: Any, now: float) -> float | None:
    number = _number(value)
    if number is None:
        return epoch(value) if isinstance(value, str) else None
    if number < 0:
        return None
    if number >= _MILLIS:
        return number / 1000.0
    if number < _DELTA_MAX:
        # Some servers send "seconds until reset" instead of an epoch.
        return now + number
    return number


def _body_rate_limit(body: Any) -> dict[str, Any]:
    """The usage object of a 429 body or ``GET /test``: ``data``, ``data.rate_limit`` or top."""
    if not isinstance(body, Mapping):
        return {}
    data = body.get("data")
    for candidate in (
        data.get("rate_limit") if isinstance(data, Mapping) else None,
        data,
        body,
    ):
        if isinstance(candidate, Mapping) and (
            "reset_at" in candidate or "remaining" in candidate or "usage_limit" in candidate
        ):
            return dict(candidate)
    return {}


def parse_rate_limit(
    headers: Mapping[str, str], now: float, body: Any = None
) -> RateLimitInfo | None:
    """``X-RateLimit-Limit/Remaining/Reset`` (headers win), else the body's usage object.

    ``Reset`` may be epoch seconds, epoch milliseconds, seconds-from-now or ISO 8601.
    Missing or unparseable parts are ``None``; ``None`` overall when nothing was usable.
    """
    lowered = {str(k).lower(): v for k, v in headers.items()}
    usage = _body_rate_limit(body)
    limit = _number(lowered.get("x-ratelimit-limit"))
    if limit is None:
        limit = _number(usage.get("limit", usage.get("usage_limit")))
    remaining = _number(lowered.get("x-ratelimit-remaining"))
    if remaining is None:
        remaining = _number(usage.get("remaining"))
    reset_at = _reset_epoch(lowered.get("x-ratelimit-reset"), now)
    if reset_at is None:
        reset_at = _reset_epoch(usage.get("reset_at"), now)
    if limit is not None and limit < 1:
        limit = None
    if limit is None and remaining is None and reset_at is None:
        return None
    return RateLimitInfo(
        limit=int(limit) if limit is not None else None,
        remaining=max(0, int(remaining)) if remaining is not None else None,
        reset_at=reset_at,
    )


def full_jitter_backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Uniform in ``[0, min(cap, base·2^attempt)]`` (AWS "full jitter"); attempt counts from 0."""
    cap = max(0.0, cap)
    ceiling = min(cap, max(0.0, base) * 2.0 ** min(max(attempt, 0), 62))
    return min(cap, rng.uniform(0.0, ceiling))


def is_retriable_status(status: int) -> bool:
    """429, 408 and every 5xx: the same request may succeed later."""
    return status in (408, 429) or 500 <= status <= 599
