"""Fault injection decisions: latency, random 500s, a timed outage, reject and drop rules.

Holds only the decision logic and the outage deadline; the app applies the decisions to
HTTP calls. Deterministic when ``SandboxOptions.seed`` is set.
"""

from __future__ import annotations

import random
from email.utils import formatdate

from hitl_sandbox.options import SandboxOptions


class FaultInjector:
    """Decides, per API call, which configured fault (if any) applies."""

    def __init__(self, options: SandboxOptions, now: float) -> None:
        self._rng = random.Random(options.seed)  # noqa: S311 - simulation, not security
        self.options = options
        self.outage_until = 0.0
        self.configure(options, now, outage_changed=True)

    def configure(self, options: SandboxOptions, now: float, *, outage_changed: bool) -> None:
        """Apply new options; an outage (re)starts only when ``outage_changed``."""
        self.options = options
        if outage_changed:
            secs = options.outage_seconds
            self.outage_until = now + secs if secs > 0 else 0.0

    def latency_seconds(self) -> float:
        low, high = self.options.latency_ms, self.options.latency_max_ms
        if high is None or high <= low:
            return low / 1000.0
        return self._rng.uniform(low, high) / 1000.0

    def outage_retry_after(self, now: float) -> str | None:
        """The Retry-After value while an outage is on, else None."""
        if now >= self.outage_until:
            return None
        secs = self.options.outage_retry_after
        if self.options.outage_retry_after_http_date:
            return formatdate(now + secs, usegmt=True)
        return str(secs)

    def inject_error(self) -> bool:
        rate = self.options.error_rate
        return rate > 0 and self._rng.random() < rate

    def rejects(self, request_text: str) -> bool:
        marker = self.options.reject_marker
        return marker is not None and marker in request_text

    def drops_response(self, request_text: str) -> bool:
        marker = self.options.ambiguous_marker
        if marker is not None and marker in request_text:
            return True
        rate = self.options.ambiguous_rate
        return rate > 0 and self._rng.random() < rate
