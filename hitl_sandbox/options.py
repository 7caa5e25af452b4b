"""Sandbox settings: one pydantic model, set at start and (partly) changed at runtime.

Everything the admin endpoint ``PUT /sandbox/config`` may change is listed in
``RUNTIME_FIELDS``; the rest (preset loops, loop size, seed, sender pool size, log sizes) is
fixed at start. This module only describes settings; ``faults``, ``ratelimit``, ``reviewer``
and ``webhooks`` act on them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PayloadStyle = Literal["nested", "flat", "seed", "data_response"]
SignatureStyle = Literal["sha256", "plain", "none"]
ResponseDataStyle = Literal["raw", "structured"]


class SandboxOptions(BaseModel):
    """How the sandbox behaves. Defaults: HITL.sh as documented (``hitl-api.md``), unlimited and
    fault-free. Where the docs are stricter than a convenient test double would be, the
    default follows the docs and the kinder behaviour is a named option (the ``kind_*`` and
    ``honour_idempotency_key`` fields), meant for tests of a second line of defence only."""

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

    # HITL.sh documents no Idempotency-Key: by default a repeated create is a second request.
    honour_idempotency_key: bool = False
    # G1 cancel page allows cancelling claimed requests too; G2 (the default) only pending ones.
    kind_cancel_claimed: bool = False
    # Documented: timeout and cancel deliveries (and GET) carry null response_data, response_by,
    # response_at, response_time_seconds; the caller applies default_response itself. Kinder:
    # a timed-out request's response_data is its default_response.
    kind_timeout_response_data: bool = False

    # Faults. Latency applies to every API call: fixed latency_ms, or uniform in
    # [latency_ms, latency_max_ms] when latency_max_ms is set.
    latency_ms: float = Field(default=0.0, ge=0)
    latency_max_ms: float | None = Field(default=None, ge=0)
    # Share of API calls (after auth and rate limiting) answered 500 "Internal server error".
    error_rate: float = Field(default=0.0, ge=0, le=1)
    # Outage: every API call answers 503 for this many seconds from start (or from the PUT).
    outage_seconds: float = Field(default=0.0, ge=0)
    outage_retry_after: int = Field(default=5, ge=0)
    # Send Retry-After as an HTTP-date instead of delta-seconds (on 503s, and on 429s when
    # rate_limit_retry_after is set).
    outage_retry_after_http_date: bool = False
    # Reject rule: a create whose request_text contains the marker gets 400 reject_msg.
    reject_marker: str | None = None
    reject_msg: str = "Validation failed"
    reject_data: Any = None
    # Ambiguous success: the create is stored, then the connection is dropped before the
    # response completes — for every create with the marker, and for this share of others.
    ambiguous_marker: str | None = None
    ambiguous_rate: float = Field(default=0.0, ge=0, le=1)
    # How such a create ends: the connection dropped, or a 500 after the request was stored.
    ambiguous_answer: Literal["drop", "500"] = "drop"

    # Reviewer side. The auto-reviewer answers each request after a delay drawn uniformly
    # from [review_delay_min_ms, review_delay_max_ms]. answer_mix weights answers (option
    # values or labels, "true"/"false", numbers as strings, texts); keys that are not a valid
    # answer for a request are ignored, and with none left the answer is uniformly random.
    auto_review: bool = False
    review_delay_min_ms: float = Field(default=500.0, ge=0)
    review_delay_max_ms: float = Field(default=2000.0, ge=0)
    answer_mix: dict[str, float] = Field(default_factory=dict)
    claim_events: bool = False  # request.claimed (status claimed) halfway to the answer
    escalate_share: float = Field(default=0.0, ge=0, le=1)  # request.escalated before answer
    response_data_style: ResponseDataStyle = "raw"
    # Each request's timeout_seconds is multiplied by this at create (tests: 0.001).
    timeout_scale: float = Field(default=1.0, gt=0)

    # Webhooks: payload style P1 nested / P2 flat / P4 seed / P5 data_response, signature
    # S1 sha256 / S2 plain / none. callback_url deliveries are unsigned by default, as
    # documented (a create has no secret field, hitl-api.md §2.2), and signed with
    # webhook_secret only when one is set; registered webhooks with their own secret.
    webhook_payload_style: PayloadStyle = "nested"
    webhook_signature: SignatureStyle = "sha256"
    webhook_secret: str | None = None
    # The documented schedule (0 s, 15 s, 1 min, 5 min, 30 min, 2 h, 12 h, 24 h) times this.
    webhook_retry_scale: float = Field(default=1.0, ge=0)
    webhook_timeout_seconds: float = Field(default=30.0, gt=0)
    webhook_concurrency: int = Field(default=32, ge=1, le=1024)
    # Webhook faults, each drawn per delivery (per target, first attempt).
    webhook_drop_share: float = Field(default=0.0, ge=0, le=1)
    webhook_duplicate_share: float = Field(default=0.0, ge=0, le=1)
    webhook_reorder_share: float = Field(default=0.0, ge=0, le=1)
    webhook_delay_ms: float = Field(default=0.0, ge=0)  # max extra random delay
    delivery_log_size: int = Field(default=10_000, ge=0)

    seed: int | None = None
    call_log_size: int = Field(default=100_000, ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> SandboxOptions:
        if self.latency_max_ms is not None and self.latency_max_ms < self.latency_ms:
            raise ValueError("latency_max_ms must be >= latency_ms")
        if self.review_delay_max_ms < self.review_delay_min_ms:
            raise ValueError("review_delay_max_ms must be >= review_delay_min_ms")
        if any(w < 0 for w in self.answer_mix.values()):
            raise ValueError("answer_mix weights must be >= 0")
        return self


RUNTIME_FIELDS: frozenset[str] = frozenset(
    {
        "api_keys",
        "rate_limit_calls",
        "rate_limit_window_seconds",
        "rate_limit_retry_after",
        "refund_on_cancel",
        "honour_idempotency_key",
        "kind_cancel_claimed",
        "kind_timeout_response_data",
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
        "ambiguous_answer",
        "auto_review",
        "review_delay_min_ms",
        "review_delay_max_ms",
        "answer_mix",
        "claim_events",
        "escalate_share",
        "response_data_style",
        "timeout_scale",
        "webhook_payload_style",
        "webhook_signature",
        "webhook_secret",
        "webhook_retry_scale",
        "webhook_timeout_seconds",
        "webhook_drop_share",
        "webhook_duplicate_share",
        "webhook_reorder_share",
        "webhook_delay_ms",
    }
)
