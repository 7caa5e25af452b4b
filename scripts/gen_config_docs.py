"""Generate docs/configuration.md from the settings model (``connector.config.Settings``).

Every section and field with its type, bounds, default, environment variable and meaning.
A field's meaning is, first found: its ``Field(description=...)``, the ``#`` comment lines
right above it (or after it on the same line) in ``connector/config.py``, then ``NOTES``
below, for fields that have neither. tests/unit/test_config_docs.py fails when the committed
file differs from what this prints, so the reference cannot drift.

    python scripts/gen_config_docs.py            # rewrite docs/configuration.md
    python scripts/gen_config_docs.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, SecretStr, TypeAdapter
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from connector.config import Settings  # noqa: E402 - after the sys.path fix-up

OUTPUT = ROOT / "docs" / "configuration.md"
ENV_PREFIX = "HITL_CONNECTOR_"

# Meanings of fields that have no description or comment in connector/config.py (moving
# them into Field(description=...) there makes these entries unnecessary; stale ones fail).
NOTES: dict[str, str] = {
    "kafka.bootstrap_servers": "Comma-separated `host:port` list of brokers.",
    "kafka.security_protocol": "How clients connect; `SASL_*` needs the three `sasl_*` keys.",
    "kafka.sasl_mechanism": "SASL mechanism, with `security_protocol` `SASL_*`.",
    "kafka.sasl_username": "SASL user name.",
    "kafka.sasl_password": "SASL password (keep it in the environment or a secret store).",
    "kafka.ssl_cafile": "CA bundle that signs the brokers' certificates (`SSL`, `SASL_SSL`).",
    "kafka.ssl_certfile": "Client certificate for mutual TLS.",
    "kafka.ssl_keyfile": "Private key of `ssl_certfile`.",
    "kafka.ssl_check_hostname": "Check that broker certificates match their host names.",
    "kafka.client_id": "Client id prefix; each role appends its name (`-submitter`, ...).",
    "kafka.group_id": (
        "Consumer group of the submitters (resolvers use `<group_id>-resolver`); the same "
        "for every instance of one deployment. Also starts each transactional id."
    ),
    "kafka.transaction_timeout_ms": "Broker aborts a transaction left open this long.",
    "kafka.request_timeout_ms": "Timeout of one Kafka request.",
    "kafka.session_timeout_ms": "A consumer silent this long leaves its group (rebalance).",
    "kafka.max_poll_interval_ms": "Longest pause between polls before a consumer is evicted.",
    "kafka.producer_linger_ms": (
        "How long the producer waits to fill a batch of records sent one by one (DLQ replay). "
        "The submit, decision and webhook paths build whole batches and send them at once."
    ),
    "kafka.producer_max_batch_bytes": "Largest producer batch per partition.",
    "kafka.compression_type": "Compression of produced batches.",
    "topics.input": "Content events to review (the seed's shape).",
    "topics.output": "Decision records (`hitl.decision.v1`).",
    "topics.dlq": "Invalid or rejected events, with `error.reason` headers.",
    "topics.requests": "Compacted table: HITL request id → its event (internal).",
    "topics.callbacks": "Webhook and poll results keyed by request id (internal).",
    "topics.unmatched": "Callbacks that never matched a request.",
    "topics.escalations": "Claims and escalations; `null` drops them.",
    "topics.create": "Create missing topics at start (else they must exist).",
    "hitl.base_url": "HITL.sh API base URL (or the sandbox's `http://host:port/v1`).",
    "hitl.path_prefix": '`"api/"` for `/v1/api/...` paths, `""` for the older `/v1/...`.',
    "hitl.api_key": "Bearer API key. Set it with `HITL_API_KEY` or `HITL_API_KEY_FILE`.",
    "hitl.rate_limit_window_seconds": "The window of `rate_limit_calls`, in seconds.",
    "hitl.connect_timeout_seconds": "TCP/TLS connect timeout of one API call.",
    "hitl.read_timeout_seconds": "Read (and write, pool) timeout of one API call.",
    "hitl.max_retries": "Retries of a retriable failure (429, 408, 5xx, transport errors).",
    "hitl.backoff_base_seconds": "First backoff step (exponential, full jitter).",
    "hitl.backoff_max_seconds": "Cap of one backoff.",
    "hitl.max_in_flight": "Concurrent API calls (and pooled connections) per process.",
    "hitl.circuit_failure_threshold": "Consecutive failures that open the circuit breaker.",
    "hitl.circuit_open_seconds": "How long the circuit stays open before a probe.",
    "hitl.platform_version": "Sent as `platform_version` on every create, when set.",
    "loops.default": "Loop id used when no per-event `loop_id` or route matches.",
    "loops.allow_event_override": "Honour a `loop_id` field in the event.",
    "loops.routes": "Routing rules, first match wins (fields below).",
    "loops.routes[].loop_id": "Loop that receives matching events.",
    "loops.routes[].content_type": "Match these `content_type` values.",
    "loops.routes[].priority": "Match these priorities (after `normal` → `medium`).",
    "loops.routes[].flags_any": "Match when `ai_analysis.flags` has any of these.",
    "loops.routes[].source": "Match these `metadata.source` values.",
    "review.processing_type": "HITL `processing_type`; `time-sensitive` sends a timeout.",
    "review.response_type": "HITL `response_type` of every request.",
    "review.options": "Answer options for select types (fields below).",
    "review.options[].value": "Stored as the decision.",
    "review.options[].label": "Shown to reviewers.",
    "review.response_config": "Raw HITL `response_config`; overrides `options` when set.",
    "review.default_response": "Applied by HITL.sh when a request times out.",
    "review.timeout_seconds": "Request timeout by priority (60–86400 each).",
    "review.platform": "HITL `platform` field.",
    "review.max_text_chars": "Longer `request_text` is cut with a visible marker.",
    "policy.enabled": "Decide without a human when the AI analysis is clear.",
    "policy.approve_min_confidence": "Auto-approve needs at least this confidence ...",
    "policy.approve_max_risk": "... and at most this risk score.",
    "policy.reject_min_risk": "Auto-reject at or above this risk score.",
    "policy.reject_flags": "Auto-reject when any of these flags is present.",
    "policy.approve_decision": "Decision value written for an auto-approval.",
    "policy.reject_decision": "Decision value written for an auto-rejection.",
    "batch.max_records": "Records per micro-batch (one fetch).",
    "batch.max_bytes": "Bytes per fetch.",
    "batch.linger_ms": (
        "Wait up to this long for a batch to fill; skipped when records already had this "
        "long to gather (under load the batch in progress is the linger)."
    ),
    "batch.max_event_bytes": "Larger events go to the DLQ as `too_large`.",
    "batch.shutdown_deadline_seconds": "One deadline for a graceful stop.",
    "gateway.host": "Listen address of the HTTP server (webhooks, health, metrics).",
    "gateway.port": "Listen port; `0` picks a free one.",
    "gateway.public_url": (
        "Public base URL of the gateway; when set, each request carries a signed "
        "`callback_url` under it."
    ),
    "gateway.signature": (
        "Signatures on `/webhooks/hitl`: `required` (only a valid one), `accept-unsigned` "
        "(also none at all; warned at start) or `accept-any` (nothing checked; warned)."
    ),
    "gateway.callback_signature": (
        "On `/webhooks/hitl/cb/<token>`: `token` (the token authenticates; a signature no "
        "secret verifies is counted and logged) or `token-and-signature` (both required)."
    ),
    "gateway.secrets": (
        "Webhook signing secrets, all accepted (rotation). Set with `HITL_WEBHOOK_SECRET` "
        "(comma-separated) or `HITL_WEBHOOK_SECRET_FILE`."
    ),
    "gateway.token_secrets": (
        "Keys of the callback URL tokens: the first signs, every one verifies (rotation). Set "
        "with `HITL_CALLBACK_TOKEN_SECRET` (comma-separated) or `_FILE`; without it the "
        "webhook secrets are used."
    ),
    "gateway.max_body_bytes": "Larger webhook bodies get 413.",
    "gateway.limit_concurrency": (
        "Connections and requests at once; beyond it new requests get 503 (uvicorn)."
    ),
    "gateway.keep_alive_seconds": "An idle keep-alive connection is closed after this long.",
    "gateway.header_timeout_seconds": (
        "A request head (and a new connection's first bytes) must arrive within this; else "
        "the connection is closed."
    ),
    "gateway.max_header_bytes": "A larger request head gets 431 and the connection is closed.",
    "gateway.body_timeout_seconds": "A webhook body must arrive within this; else 408.",
    "resolver.restore_timeout_seconds": "Longest wait to load the request table at assignment.",
    "resolver.reconcile": "Poll HITL.sh for overdue requests (the reconciler).",
    "resolver.reconcile_interval_seconds": "How often the reconciler looks for overdue requests.",
    "resolver.reconcile_max_wait_seconds": (
        "When set, a request is also overdue this long after submission."
    ),
    "resolver.max_records": "Callback records per resolver batch.",
    "metrics.enabled": "Serve Prometheus metrics at `/metrics`.",
    "log.level": "Log level.",
    "log.format": "`json`, `console`, or `auto` (console on a terminal, else JSON).",
}

# Secrets come from their own variables (config.load_settings), not HITL_CONNECTOR_*.
SECRETS = [
    (
        "HITL_API_KEY",
        "hitl.api_key",
        "HITL.sh API key (Bearer); without it calls are unauthenticated.",
    ),
    (
        "HITL_WEBHOOK_SECRET",
        "gateway.secrets",
        "Webhook signing secrets, comma-separated; every one is accepted (rotation).",
    ),
    (
        "HITL_CALLBACK_TOKEN_SECRET",
        "gateway.token_secrets",
        "Keys of the per-request `callback_url` tokens, comma-separated; the first signs.",
    ),
]

SECRET_VARS = {key: name for name, key, _ in SECRETS}

_COMMENT = re.compile(r"^\s*#\s?(.*)$")
_FIELD = re.compile(r"^\s{4}(\w+)\s*:")


def _source_comments(cls: type[BaseModel]) -> dict[str, str]:
    """``{field: comment}`` from the ``#`` lines directly above a field, or its own line."""
    found: dict[str, str] = {}
    block: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        comment = _COMMENT.match(line)
        if comment:
            block.append(comment.group(1).strip())
            continue
        field = _FIELD.match(line)
        if field and field.group(1) in cls.model_fields:
            text = " ".join(block)
            inline = line.partition("#")[2].strip()
            if not text and inline and not inline.startswith("noqa"):
                text = inline
            if text:
                found[field.group(1)] = text
        block = []
    return found


def _type(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type(a) for a in args if a is not type(None)]
        return " \\| ".join(parts) + (" \\| null" if type(None) in args else "")
    if origin is list:
        inner = args[0]
        return (
            "list"
            if inspect.isclass(inner) and issubclass(inner, BaseModel)
            else (f"list of {_type(inner)}")
        )
    if origin is dict:
        return f"map {_type(args[0])} → {_type(args[1])}"
    if tp is SecretStr:
        return "secret"
    if tp is Any:
        return "any"
    if inspect.isclass(tp):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            tp.__name__, tp.__name__.lower()
        )
    return str(tp)


_BOUNDS: list[tuple[type, str, str]] = [
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.MinLen, "min_length", "length ≥"),
    (annotated_types.MaxLen, "max_length", "length ≤"),
]


def _bounds(info: FieldInfo) -> str:
    return ", ".join(
        f"{sign} {_number(getattr(item, attr))}"
        for item in info.metadata
        for cls, attr, sign in _BOUNDS
        if isinstance(item, cls)
    )


def _number(value: Any) -> str:
    return (
        f"{value:_}".replace("_", " ") if isinstance(value, int) and value >= 10_000 else str(value)
    )


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        factory = info.default_factory
        if getattr(factory, "__module__", "") != "connector.config" and factory not in (
            list,
            dict,
        ):
            return f"`{factory.__module__.lstrip('_')}.{factory.__qualname__}()`"
        value = factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    dumped = TypeAdapter(info.annotation).dump_python(value, mode="json")
    if isinstance(dumped, int | float) and not isinstance(dumped, bool):
        return f"`{_number(dumped)}`"
    return f"`{json.dumps(dumped, ensure_ascii=False)}`".replace("|", "\\|")


def _model_of(info: FieldInfo) -> type[BaseModel] | None:
    for tp in (info.annotation, *typing.get_args(info.annotation)):
        if inspect.isclass(tp) and issubclass(tp, BaseModel):
            return tp
    return None


def _rows(model: type[BaseModel], key: str, env: str | None, used: set[str]) -> list[str]:
    comments = _source_comments(model)
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        path = f"{key}.{name}"
        used.add(path)
        text = info.description or comments.get(name) or NOTES.get(path, "")
        if not text:
            raise SystemExit(f"{path}: no description; add one to NOTES or to config.py")
        bounds = _bounds(info)
        kind = _type(info.annotation) + (f" ({bounds})" if bounds else "")
        env_name = f"`{env}__{name.upper()}`" if env else "—"
        if path in SECRET_VARS:
            env_name = f"`{SECRET_VARS[path]}`"
        rows.append(f"| `{path}` | {kind} | {_default(info)} | {env_name} | {text} |")
        sub = _model_of(info)
        if sub is not None:
            nested.append((f"{path}[]", sub))
    for sub_key, sub in nested:
        rows += _rows(sub, sub_key, None, used)
    return rows


_HEAD = """# Configuration reference

<!-- Generated by scripts/gen_config_docs.py from connector/config.py; do not edit by hand.
     tests/unit/test_config_docs.py fails when this file is out of date. -->

Sources, highest priority first: environment variables, the YAML file given with
`--config FILE`, then the defaults below. In YAML, each section is a mapping
(`kafka: {bootstrap_servers: ...}`); in the environment, a key is
`HITL_CONNECTOR_<SECTION>__<FIELD>` (upper case, two underscores). Lists and maps in the
environment are JSON (`HITL_CONNECTOR_POLICY__REJECT_FLAGS='["spam"]'`). Unknown keys and
bad values stop the start with one line per key; `hitl-connector check` validates without
starting.

## Secrets

Only from the environment or from files (never the YAML file):

{secrets}

`NAME_FILE` names a file whose content (trimmed) is the value; `NAME` wins when both are set.
"""


def render() -> str:
    """The whole of docs/configuration.md."""
    table = ["| variable | sets | meaning |", "| --- | --- | --- |"] + [
        f"| `{name}` / `{name}_FILE` | `{key}` | {text} |" for name, key, text in SECRETS
    ]
    out = [_HEAD.replace("{secrets}", "\n".join(table))]
    used: set[str] = set()
    for section, info in Settings.model_fields.items():
        model = _model_of(info)
        assert model is not None, section
        doc = inspect.cleandoc(model.__doc__ or "").replace("\n", " ")
        out.append(f"## `{section}`\n")
        if doc:
            out.append(doc.replace("``", "`") + "\n")
        out.append("| key | type | default | environment | meaning |")
        out.append("| --- | --- | --- | --- | --- |")
        out += _rows(model, section, f"{ENV_PREFIX}{section.upper()}", used)
        out.append("")
    stale = sorted(set(NOTES) - used)
    if stale:
        raise SystemExit(f"NOTES names fields that do not exist: {', '.join(stale)}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run scripts/gen_config_docs.py")
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
