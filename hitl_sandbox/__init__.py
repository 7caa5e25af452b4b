"""A local stand-in for the HITL.sh API, for the local stack and the tests.

``create_app(options)`` builds the ASGI app, ``SandboxServer`` runs it in a background
thread on a loopback port, ``serve`` runs it in the foreground. See ``app`` for the per-call
pipeline (latency → outage → auth → rate limit → error rate → endpoint), ``admin`` for the
``/sandbox/`` endpoints, ``reviewer`` for the request lifecycle after create (auto-review,
claims, escalations, timeouts, answers by hand) and ``webhooks`` for delivery (payload styles
in ``payloads``, registration in ``registry``).
"""

from hitl_sandbox.options import SandboxOptions
from hitl_sandbox.server import SandboxServer, create_app, serve

__all__ = ["SandboxOptions", "SandboxServer", "create_app", "serve"]
