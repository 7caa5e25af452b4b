"""The ``hitl-connector`` command line. Parses flags and calls into the package; no logic.

Commands (design §8): run, check [--live], topics create, pending list, reconcile,
webhooks register|list, sandbox, dev-kafka, loadgen, dlq replay.
Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from connector.config import Settings, load_settings
from connector.errors import ConfigError, ConnectorError, HitlError

# What `webhooks register` subscribes to: the terminal events (the decision), and claims and
# escalations (published on the escalations topic), as documented (hitl-api.md §4.2).
WEBHOOK_EVENTS = (
    "request.completed",
    "request.timeout",
    "request.cancelled",
    "request.claimed",
    "request.escalated",
)

log = logging.getLogger("connector.cli")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file")


def _run_async(coro: object) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    return int(asyncio.run(coro))  # type: ignore[arg-type]


def cmd_run(args: argparse.Namespace) -> int:
    from connector.app import run_app, tune_gc
    from connector.logs import setup_logging

    settings = _settings(args)
    setup_logging(settings.log.level, settings.log.format)
    # Only a submitter alone (as deployed per role) trades GC pauses for throughput.
    tune = tune_gc if args.role == "submitter" else None
    return _run_async(run_app(settings, args.role, on_started=tune))


async def _check_live(settings: Settings) -> list[str]:
    from connector.hitl.client import HitlClient
    from connector.kafka.admin import ensure_topics

    report: list[str] = []
    topics = await ensure_topics(settings, create=False)
    report.append(f"kafka: {settings.kafka.bootstrap_servers} reachable, topics valid")
    report += [f"kafka: {line}" for line in topics.lines()]
    if settings.hitl.api_key is None:
        report.append("hitl: HITL_API_KEY not set, API not checked")
        return report
    async with HitlClient(settings.hitl) as client:
        info = await client.test_key()
        report.append(f"hitl: API key valid (account {info.get('account_status', '?')})")
        wanted = {settings.loops.default, *(r.loop_id for r in settings.loops.routes)} - {None}
        if wanted:
            known = {str(loop.get("id")) for loop in await client.list_loops()}
            missing = sorted(str(w) for w in wanted if w not in known)
            if missing:
                raise ConnectorError(f"loops not found for this API key: {', '.join(missing)}")
            report.append(f"hitl: loops found: {', '.join(sorted(str(w) for w in wanted))}")
    return report


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print("configuration: valid")
    if args.live:
        for line in asyncio.run(_check_live(settings)):
            print(line)
    return 0


def cmd_topics_create(args: argparse.Namespace) -> int:
    from connector.kafka.admin import ensure_topics

    settings = _settings(args)
    report = asyncio.run(ensure_topics(settings, create=True))
    created = report.created
    print("created: " + (", ".join(created) if created else "nothing (all topics exist)"))
    for line in report.lines():
        print(line)
    print(
        "all topics valid"
        if not report.risks
        else f"all topics valid; {len(report.risks)} replication warning(s) above"
    )
    return 0


def cmd_pending_list(args: argparse.Namespace) -> int:
    from connector import ops

    rows = ops.run(ops.read_pending(_settings(args)))
    if args.json:
        for row in rows:
            print(orjson.dumps(row.to_json()).decode())
    else:
        print(ops.format_pending(rows))
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from connector import ops

    result = ops.run(ops.reconcile_once(_settings(args)))
    print("reconcile: " + ops.format_result(result))
    return 0


def cmd_webhooks_register(args: argparse.Namespace) -> int:
    from connector import ops

    secret = args.secret or os.environ.get("HITL_WEBHOOK_SECRET", "").split(",")[0].strip()
    if not secret:
        raise ConfigError("webhooks register needs --secret or HITL_WEBHOOK_SECRET")
    events = [e.strip() for e in args.events.split(",") if e.strip()]
    created = ops.run(ops.register_webhook(_settings(args), args.url, events, secret, args.loop_id))
    print(orjson.dumps(created, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_webhooks_list(args: argparse.Namespace) -> int:
    from connector import ops

    for hook in ops.run(ops.list_webhooks(_settings(args))):
        print(orjson.dumps(hook).decode())
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from hitl_sandbox.server import options_from_args, serve

    serve(options_from_args(args), args.host, args.port)
    return 0


def cmd_dev_kafka(args: argparse.Namespace) -> int:
    from connector.devkafka import run_from_args

    return run_from_args(args)


def cmd_loadgen(args: argparse.Namespace) -> int:
    from connector.loadgen import run_from_args

    return _run_async(run_from_args(args))


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from connector.dlq import run_from_args

    return _run_async(run_from_args(args))


class _Parser(argparse.ArgumentParser):
    """A subcommand parser; with ``options_from`` its options are added by that module's
    ``add_arguments`` only when the subcommand is used, so ``run`` never imports dev tools
    (the sandbox, dev-kafka, loadgen) or the DLQ tool."""

    def __init__(self, *args: Any, options_from: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._options_from = options_from

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._options_from is not None:
            importlib.import_module(self._options_from).add_arguments(self)
            self._options_from = None
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hitl-connector",
        description="Human-in-the-loop review for Kafka pipelines (HITL.sh).",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="run the connector")
    _add_config(p)
    p.add_argument("--role", choices=("all", "submitter", "gateway", "resolver"), default="all")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate the configuration (--live: and the services)")
    _add_config(p)
    p.add_argument("--live", action="store_true", help="also check Kafka, topics, key, loops")
    p.set_defaults(func=cmd_check)

    topics = sub.add_parser("topics", help="manage the connector's topics")
    tsub = topics.add_subparsers(dest="topics_command", required=True)
    p = tsub.add_parser("create", help="create missing topics and validate all")
    _add_config(p)
    p.set_defaults(func=cmd_topics_create)

    pending = sub.add_parser("pending", help="requests waiting for a human")
    psub = pending.add_subparsers(dest="pending_command", required=True)
    p = psub.add_parser("list", help="pending requests with age and loop")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_pending_list)

    p = sub.add_parser("reconcile", help="poll HITL.sh once now for overdue requests")
    _add_config(p)
    p.set_defaults(func=cmd_reconcile)

    hooks = sub.add_parser("webhooks", help="HITL.sh webhook registrations")
    hsub = hooks.add_subparsers(dest="webhooks_command", required=True)
    p = hsub.add_parser("register", help="register a webhook (the seed's configure_webhook)")
    _add_config(p)
    p.add_argument("--url", required=True, help="public URL, e.g. https://host/webhooks/hitl")
    p.add_argument(
        "--events",
        default=",".join(WEBHOOK_EVENTS),
        help=f"comma-separated (default: {','.join(WEBHOOK_EVENTS)})",
    )
    p.add_argument("--secret", help="signing secret (default: HITL_WEBHOOK_SECRET)")
    p.add_argument("--loop-id", default=None)
    p.set_defaults(func=cmd_webhooks_register)
    p = hsub.add_parser("list", help="list registered webhooks")
    _add_config(p)
    p.set_defaults(func=cmd_webhooks_list)

    p = sub.add_parser(
        "sandbox", help="run the local HITL.sh stand-in", options_from="hitl_sandbox.server"
    )
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser(
        "dev-kafka", help="run a local single-node Kafka broker", options_from="connector.devkafka"
    )
    p.set_defaults(func=cmd_dev_kafka)

    p = sub.add_parser(
        "loadgen",
        help="produce content events to the input topic",
        options_from="connector.loadgen",
    )
    p.set_defaults(func=cmd_loadgen)

    dlq_parser = sub.add_parser("dlq", help="the dead-letter topic")
    dsub = dlq_parser.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    p = dsub.add_parser(
        "replay",
        help="re-publish DLQ records (filtered) to the input topic",
        options_from="connector.dlq",
    )
    p.set_defaults(func=cmd_dlq_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except HitlError as exc:
        print(f"hitl-connector: HITL API: {exc}", file=sys.stderr)
        return 1
    except ConnectorError as exc:
        print(f"hitl-connector: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
