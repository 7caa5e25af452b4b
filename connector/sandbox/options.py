"""Sandbox settings: one pydantic model, set at start and (partly) changed at runtime.

Everything the admin endpoint ``PUT /sandbox/config`` may change is listed in
``RUNTIME_FIELDS``; the rest (keys, preset loops, loop size, seed) is fixed at start.
This module only describes settings; ``faults`` and ``ratelimit`` act on them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SandboxOptions(BaseModel):
    """How the sandbox behaves. Defaults: a well-behaved, unlimited, fault-free service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Auth: empty = any non-empty bearer key is accepted (each key is its own account).
    api_keys: tuple[str, ...] = ()
    # Loop ids created at start, usable by every key.
    preset_loops: tuple[str, ...] = ()
    # Active members in each new loop; 0 makes creates fail "No active members found in the loop".
    loop_members: int = Field(default=3, ge=0, le=100)

    # Fixed-window rate limit per API key; None = unlimited (and no X-RateLimit-* headers).
    rate_limit_calls: int | None = Field(default=None, ge=1)
    rate_limit_window_seconds: int = Field(default=3600, ge=1)
    # Send Retry-After on 429 (the real service is not documented to).
    rate_limit_retry_after: bool = False
    # G1 cancel page: cancelling a pending request gives one call back to the window.
    refund_on_cancel: bool = False

    honour_idempotency: bool = True

    # Faults. Latency applies to every API call: fixed latency_ms, or uniform in
    # [latency_ms, latency_max_ms] when latency_max_ms is set.
    latency_ms: float = Field(default=0.0, ge=0)
    latency_max_ms: float | None = Field(default=None, ge=0)
    # Share of API calls (after auth and rate limiting) answered 500 "Internal server error".
    error_rate: float = Field(default=0.0, ge=0, le=1)
    # Outage: every API call answers 503 for this many seconds from start (or from the PUT).
    outage_seconds: float = Field(default=0.0, ge=0)
    outage_retry_after: int = Field(default=5, ge=0)
    # Send Retry-After as an HTTP-date instead of delta-seconds.
    outage_retry_after_http_date: bool = False
    # Reject rule: a create whose request_text contains the marker gets 400 reject_msg.
    reject_marker: str | None = None
    reject_msg: str = "Validation failed"
    reject_data: Any = None
    # Ambiguous success: the create is stored, then the connection is dropped before the
    # response completes — for every create with the marker, and for this share of others.
    ambiguous_marker: str | None = None
    ambiguous_rate: float = Field(default=0.0, ge=0, le=1)

    seed: int | None = None
    call_log_size: int = Field(default=100_000, ge=0)

    @model_validator(mode="after")
    def _latency_range(self) -> SandboxOptions:
        if self.latency_max_ms is not None and self.latency_max_ms < self.latency_ms:
            raise ValueError("latency_max_ms must be >= latency_ms")
        return self


RUNTIME_FIELDS: frozenset[str] = frozenset(
    {
        "api_keys",
        "rate_limit_calls",
        "rate_limit_window_seconds",
        "rate_limit_retry_after",
        "refund_on_cancel",
        "honour_idempotency",
        "latency_ms",
        "latency_max_ms",
        "error_rate",
        "outage_seconds",
        "outage_retry_after",
        "outage_retry_after_http_date",
        "reject_marker",
        "reject_msg",
        "reject_data",
        "ambiguous_marker",
        "ambiguous_rate",
    }
)
