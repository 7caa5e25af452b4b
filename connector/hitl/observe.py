"""Feeding the HITL client's observations into Prometheus metrics (an ``ApiObserver``)."""

from __future__ import annotations

from typing import Any

from connector.hitl.pacing import CircuitState
from connector.hitl.retry import RateLimitInfo
from connector.metrics import CIRCUIT_VALUES, Metrics, status_class


class ApiMetrics:
    """Counts every call by endpoint and status class; tracks budget and circuit state."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics
        # Label children looked up once: this runs on every API call.
        self._children: dict[tuple[str, int | None], Any] = {}

    def on_call(self, endpoint: str, status: int | None, seconds: float) -> None:
        key = (endpoint, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._m.api_calls.labels(endpoint, status_class(status))
        child.inc()
        if endpoint == "create_request" and status is not None and status < 300:
            self._m.create_latency.observe(seconds)

    def on_rate_limit(self, info: RateLimitInfo) -> None:
        if info.remaining is not None:
            self._m.rate_limit_remaining.set(info.remaining)
        if info.limit is not None:
            self._m.rate_limit_limit.set(info.limit)

    def on_circuit(self, state: CircuitState) -> None:
        self._m.circuit_state.set(CIRCUIT_VALUES.get(state, 0))
