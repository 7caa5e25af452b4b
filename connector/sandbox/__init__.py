"""A local stand-in for the HITL.sh API (request side), for the local stack and the tests.

``create_app(options)`` builds the ASGI app, ``SandboxServer`` runs it in a background
thread on a loopback port, ``serve`` runs it in the foreground. See ``app`` for the per-call
pipeline (latency → outage → auth → rate limit → error rate → endpoint) and ``admin`` for the
``/sandbox/`` endpoints.
"""

from connector.sandbox.options import SandboxOptions
from connector.sandbox.server import SandboxServer, create_app, serve

__all__ = ["SandboxOptions", "SandboxServer", "create_app", "serve"]
