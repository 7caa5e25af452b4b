"""Assemble and run the sandbox: ``create_app``, a background ``SandboxServer`` for tests,
blocking ``serve`` and the argparse glue for ``hitl-connector sandbox``.

``SandboxServer`` runs uvicorn on its own event loop in a daemon thread, on a real loopback
socket (port 0 picks a free one). Talk to it over HTTP only: the store belongs to that loop.
The app's lifespan starts and stops the reviewer and webhook tasks on that loop, so uvicorn's
shutdown (``SandboxServer.stop()``, Ctrl-C) stops them cleanly.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from connector.serving import HttpServer
from hitl_sandbox.admin import admin_routes
from hitl_sandbox.app import Clock, Sandbox, error
from hitl_sandbox.options import SandboxOptions
from hitl_sandbox.registry import webhook_routes


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    msg = "Not found" if exc.status_code == 404 else exc.detail
    return error(exc.status_code, msg, headers=dict(exc.headers or {}))


def create_app(options: SandboxOptions | None = None, clock: Clock = time.time) -> Starlette:
    """Build the sandbox ASGI app; ``app.state.sandbox`` is the ``Sandbox`` behind it."""
    sandbox = Sandbox(options or SandboxOptions(), clock)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sandbox.start()
        try:
            yield
        finally:
            await sandbox.stop()

    app = Starlette(
        routes=[*sandbox.api_routes(), *webhook_routes(sandbox), *admin_routes(sandbox)],
        exception_handlers={404: _http_error, 405: _http_error},
        lifespan=lifespan,
    )
    app.state.sandbox = sandbox
    return app


class SandboxServer:
    """The sandbox on ``127.0.0.1:<port>`` in a background thread; ``with`` starts and stops.

    ``ssl_certfile``/``ssl_keyfile`` (PEM) serve it over TLS (``url`` is then ``https://``).
    """

    def __init__(
        self,
        options: SandboxOptions | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        self.options = options or SandboxOptions()
        self.host = host
        self.port = port
        self.app = create_app(self.options)
        self._log_level = log_level
        self._tls = {"ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile}
        self._server: HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self._tls["ssl_certfile"] else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            return
        server = self._server = _server(
            self.app, self.host, self.port, self._log_level, **self._tls
        )
        self.port = server.port
        self._thread = threading.Thread(target=server.run, name=f"sandbox:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"sandbox did not start on {self.url}")
            time.sleep(0.005)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and join the thread; safe to call twice."""
        if self._server is not None:
            self._server.exit_soon()
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _server(
    app: Starlette,
    host: str,
    port: int,
    log_level: str,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> HttpServer:
    return HttpServer(
        app,
        host,
        port,
        name="sandbox",
        log_level=log_level,
        keep_alive_seconds=30,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )


def serve(options: SandboxOptions | None = None, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the sandbox in the foreground until interrupted (the CLI entry point)."""
    server = _server(create_app(options), host, port, "info")
    print(f"sandbox serving on {server.url} (Ctrl-C to stop)", flush=True)
    server.run(handle_signals=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hitl-connector sandbox``; pair with ``options_from_args``."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    add("--port", type=int, default=8765, help="listen port (default 8765)")
    add(
        "--api-key",
        action="append",
        dest="api_keys",
        default=[],
        metavar="KEY",
        help="accept only this key (repeatable; default: any non-empty key)",
    )
    add(
        "--preset-loop",
        action="append",
        dest="preset_loops",
        default=[],
        metavar="ID",
        help="create a loop with this id, usable by every key (repeatable)",
    )
    add("--loop-members", type=int, default=3, help="active members per loop (default 3)")
    add("--rate-limit-calls", type=int, default=None, help="calls per window per key")
    add("--rate-limit-window-seconds", type=int, default=3600, help="window length (default 3600)")
    add("--rate-limit-retry-after", action="store_true", help="send Retry-After on 429")
    add("--refund-on-cancel", action="store_true", help="cancel of a pending request refunds")
    add(
        "--honour-idempotency-key",
        action="store_true",
        help="kinder than documented: a repeated create with the same Idempotency-Key returns "
        "the first request (default: ignored, as HITL.sh documents no such header)",
    )
    add("--ignore-idempotency", action="store_true", help=argparse.SUPPRESS)  # the default now
    add(
        "--kind-cancel-claimed",
        action="store_true",
        help="kinder than documented (G1): claimed requests can be cancelled too",
    )
    add(
        "--kind-timeout-response-data",
        action="store_true",
        help="kinder than documented: a timed-out request carries default_response as "
        "response_data (default: null, the connector applies default_response)",
    )
    add("--latency-ms", type=float, default=0.0, help="added latency per API call")
    add("--latency-max-ms", type=float, default=None, help="random latency up to this")
    add("--error-rate", type=float, default=0.0, help="share of API calls answered 500")
    add("--outage-seconds", type=float, default=0.0, help="answer 503 for this long from start")
    add("--outage-retry-after", type=int, default=5, help="Retry-After seconds during outage")
    add("--outage-retry-after-http-date", action="store_true", help="Retry-After as HTTP-date")
    add("--reject-marker", default=None, help="creates whose text contains this get 400")
    add("--reject-msg", default="Validation failed", help="msg of the reject rule's 400")
    add("--ambiguous-marker", default=None, help="creates with this text: stored, then dropped")
    add("--ambiguous-rate", type=float, default=0.0, help="share of creates stored then dropped")
    add(
        "--ambiguous-answer",
        choices=("drop", "500"),
        default="drop",
        help="how those creates end: connection dropped, or HTTP 500 after the store",
    )
    add("--seed", type=int, default=None, help="random seed for faults, answers and webhooks")
    _add_reviewer_arguments(parser)


def _add_reviewer_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--auto-review", action="store_true", help="answer pending requests automatically")
    add("--review-delay-min-ms", type=float, default=500.0, help="auto-review delay low end")
    add("--review-delay-max-ms", type=float, default=2000.0, help="auto-review delay high end")
    add(
        "--answer-mix",
        type=json.loads,
        default={},
        metavar="JSON",
        help='answer weights, e.g. \'{"approved": 8, "rejected": 2}\'',
    )
    add("--claim-events", action="store_true", help="send request.claimed before answering")
    add("--escalate-share", type=float, default=0.0, help="share of requests escalated first")
    add("--response-data-style", choices=("raw", "structured"), default="raw")
    add("--timeout-scale", type=float, default=1.0, help="multiply timeout_seconds (tests)")
    add(
        "--webhook-payload-style",
        choices=("nested", "flat", "seed", "data_response"),
        default="nested",
        help="P1 nested data.request / P2 flat / P4 data.decision / P5 data.response_data",
    )
    add(
        "--webhook-signature",
        choices=("sha256", "plain", "none"),
        default="sha256",
        help="X-HITL-Signature-256: sha256=<hex> / X-HITL-Signature: <hex> / unsigned",
    )
    add(
        "--webhook-secret",
        default=None,
        help="sign callback_url deliveries with this secret (default: unsigned, as documented: "
        "a create has no secret field)",
    )
    add("--webhook-retry-scale", type=float, default=1.0, help="multiply the retry schedule")
    add("--webhook-timeout-seconds", type=float, default=30.0, help="per delivery attempt")
    add("--webhook-concurrency", type=int, default=32, help="parallel webhook senders")
    add("--webhook-drop-share", type=float, default=0.0, help="share of deliveries never sent")
    add("--webhook-duplicate-share", type=float, default=0.0, help="share sent twice")
    add("--webhook-reorder-share", type=float, default=0.0, help="share sent after the next")
    add("--webhook-delay-ms", type=float, default=0.0, help="max random extra delivery delay")


def options_from_args(args: argparse.Namespace) -> SandboxOptions:
    """The options ``add_arguments`` parsed: each option's dest is its field's name."""
    values = {k: v for k, v in vars(args).items() if k in SandboxOptions.model_fields}
    values["honour_idempotency_key"] = args.honour_idempotency_key and not args.ignore_idempotency
    return SandboxOptions(**values)
