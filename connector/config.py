"""The connector's configuration: one pydantic-settings model.

Sources, highest priority first: environment variables (``HITL_CONNECTOR_`` prefix, ``__`` for
nesting), the YAML file given with ``--config``, then the defaults below. Secrets come only from
the environment or from files: ``HITL_API_KEY`` (or ``HITL_API_KEY_FILE``) and
``HITL_WEBHOOK_SECRET`` (comma-separated for rotation, or ``HITL_WEBHOOK_SECRET_FILE``),
``HITL_CALLBACK_TOKEN_SECRET[_FILE]`` (comma-separated too; the first signs) and
``HITL_KAFKA_SASL_PASSWORD[_FILE]``.

Unknown keys and bad values fail at start with a message naming the key (see ``load_settings``).
This module validates; it does not connect to anything.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from connector.errors import ConfigError
from connector.response_types import check_config, check_default, effective_config

Priority = Literal["low", "medium", "high", "critical"]
ResponseType = Literal[
    "single_select", "multi_select", "rating", "number", "text", "boolean", "editable_text"
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    """Kafka connection and client identity."""

    bootstrap_servers: str = "localhost:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    client_id: str = "hitl-connector"
    group_id: str = "hitl-connector"
    # Stable per instance so a restarted instance fences its predecessor's open transaction.
    instance_id: str = Field(default_factory=socket.gethostname, min_length=1)
    transaction_timeout_ms: int = Field(default=30_000, ge=1_000, le=900_000)
    request_timeout_ms: int = Field(default=10_000, ge=1_000)
    # How old cluster metadata may get before a client refreshes it unasked (aiokafka's
    # default is 300000): a broker the controller fenced drops out of it within this time.
    metadata_max_age_ms: int = Field(default=5_000, ge=1_000)
    session_timeout_ms: int = Field(default=20_000, ge=6_000)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    producer_linger_ms: int = Field(default=5, ge=0, le=1_000)
    producer_max_batch_bytes: int = Field(
        default=1_000_000,
        ge=16_384,
        description="Largest producer record batch per partition. A transaction sends at most "
        "one batch per partition per request (aiokafka), so batches this large let a commit "
        "interval's records leave in one round trip. Keep it below the topics' "
        "max.message.bytes (broker default 1,048,588).",
    )
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            missing = [
                name
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                needed = ", ".join(f"kafka.{name}" for name in missing)
                raise ValueError(f"security_protocol {self.security_protocol} needs {needed}")
        return self


class TopicSettings(_Section):
    """Topic names, and how the connector creates its internal topics."""

    input: str = "content.events"
    output: str = "content.decisions"
    dlq: str = "content.events.dlq"
    requests: str = "hitl.requests"
    callbacks: str = "hitl.callbacks"
    unmatched: str = "hitl.callbacks.unmatched"
    # Compacted: per input partition, which offsets may have been created on HITL.sh since
    # when (connector.submitter.journal); read after a restart to look them up, not recreate.
    journal: str = "hitl.submit.journal"
    escalations: str | None = "content.escalations"
    # Partition count for hitl.requests and hitl.callbacks (they must match: co-partitioned).
    internal_partitions: int = Field(default=6, ge=1, le=10_000)
    # Partition count used when the connector creates output/DLQ/input topics itself.
    partitions: int = Field(default=6, ge=1, le=10_000)
    # Replicas of each topic the connector creates; -1 takes the brokers'
    # default.replication.factor (as Kafka Streams' replication.factor=-1 does).
    replication_factor: int = Field(default=-1, ge=-1, le=32)
    # min.insync.replicas set on topics the connector creates; None keeps the brokers' default.
    min_insync_replicas: int | None = Field(default=None, ge=1, le=32)
    # Replicas per topic name, e.g. {"hitl.requests": 3}; wins over replication_factor.
    replication_factors: dict[str, int] = Field(default_factory=dict)
    # min.insync.replicas per topic name; wins over min_insync_replicas.
    min_insync_replicas_per_topic: dict[str, int] = Field(default_factory=dict)
    # A topic that could lose acknowledged records (1 replica on a multi-broker cluster,
    # min.insync.replicas 1 with 3+ replicas): log a warning, or refuse to start.
    unsafe_replication: Literal["warn", "fail"] = "warn"
    create: bool = True

    @model_validator(mode="after")
    def _replication_valid(self) -> TopicSettings:
        if self.replication_factor == 0:
            raise ValueError("topics.replication_factor must be >= 1, or -1 (brokers' default)")
        for key, values in (
            ("replication_factors", self.replication_factors),
            ("min_insync_replicas_per_topic", self.min_insync_replicas_per_topic),
        ):
            bad = {name: n for name, n in values.items() if not 1 <= n <= 32}
            if bad:
                raise ValueError(f"topics.{key}: values must be 1..32, got {bad}")
        return self


class HitlSettings(_Section):
    """The HITL.sh API: where it is, how hard to push it, how to retry."""

    base_url: str = "https://api.hitl.sh/v1"
    path_prefix: str = "api/"
    api_key: SecretStr | None = None
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=5, ge=0, le=50)
    backoff_base_seconds: float = Field(default=0.5, gt=0)
    backoff_max_seconds: float = Field(default=60.0, gt=0)
    # Calls allowed per window for this API key (documented: 100 per hour).
    rate_limit_calls: int = Field(default=100, ge=1)
    rate_limit_window_seconds: float = Field(default=3600.0, gt=0)
    max_in_flight: int = Field(default=32, ge=1, le=1024)
    circuit_failure_threshold: int = Field(default=5, ge=1)
    circuit_open_seconds: float = Field(default=15.0, gt=0)
    platform_version: str | None = None

    @model_validator(mode="after")
    def _base_url_is_http(self) -> HitlSettings:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"hitl.base_url must start with http:// or https://, got {self.base_url!r}"
            )
        return self


class RouteRule(_Section):
    """Send matching events to ``loop_id``; all given conditions must hold."""

    loop_id: str = Field(min_length=1)
    content_type: list[str] | None = None
    priority: list[Priority] | None = None
    flags_any: list[str] | None = None
    source: list[str] | None = None


class LoopSettings(_Section):
    """Which HITL loop receives an event: per-event ``loop_id``, then rules, then the default."""

    default: str | None = None
    allow_event_override: bool = True
    routes: list[RouteRule] = Field(default_factory=list)


class ReviewOption(_Section):
    value: str = Field(min_length=1, max_length=100)
    label: str = Field(min_length=1, max_length=200)


def _default_options() -> list[ReviewOption]:
    return [
        ReviewOption(value="approved", label="Approve"),
        ReviewOption(value="rejected", label="Reject"),
        ReviewOption(value="needs_changes", label="Needs changes"),
    ]


def _default_timeouts() -> dict[Priority, int]:
    # HITL.sh's priority guidance: critical < 15 min, high < 1 h, medium < 4 h, low < 24 h.
    return {"critical": 900, "high": 3600, "medium": 14_400, "low": 86_400}


class ReviewSettings(_Section):
    """How each HITL request is shaped."""

    processing_type: Literal["time-sensitive", "deferred"] = "time-sensitive"
    response_type: ResponseType = "single_select"
    options: list[ReviewOption] = Field(
        default_factory=_default_options, min_length=1, max_length=20
    )
    response_config: dict[str, Any] | None = None
    default_response: Any = "rejected"
    timeout_seconds: dict[Priority, int] = Field(default_factory=_default_timeouts)
    # Python str.format template; fields: content, id, content_type, priority, metadata, flags.
    text_template: str | None = None
    platform: Literal["api", "n8n", "zapier", "web_portal", "mobile", "webhook"] = "api"
    max_text_chars: int = Field(default=2000, ge=1, le=2000)

    @model_validator(mode="after")
    def _check(self) -> ReviewSettings:
        for prio, seconds in self.timeout_seconds.items():
            if not 60 <= seconds <= 86_400:
                raise ValueError(f"review.timeout_seconds.{prio} must be 60..86400, got {seconds}")
        config = effective_config(self.response_type, self.response_config, self.options)
        problem = check_config(self.response_type, config)
        if problem is not None:
            raise ValueError(f"review.response_config: {problem} (hitl-api.md §3.2)")
        problem = check_default(self.response_type, config, self.default_response)
        if problem is not None:
            raise ValueError(
                f"review.default_response does not fit response_type {self.response_type}: "
                f"{problem}"
            )
        return self


class PolicySettings(_Section):
    """Auto-decisions from the event's ``ai_analysis``; disabled unless enabled."""

    enabled: bool = False
    approve_min_confidence: float = Field(default=0.95, ge=0, le=1)
    approve_max_risk: float = Field(default=0.1, ge=0, le=1)
    reject_min_risk: float = Field(default=0.9, ge=0, le=1)
    reject_flags: list[str] = Field(default_factory=list)
    approve_decision: str = "approved"
    reject_decision: str = "rejected"


class BatchSettings(_Section):
    """Micro-batching of the input: one fetch → many concurrent creates → one transaction."""

    max_records: int = Field(default=500, ge=1, le=100_000)
    max_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    linger_ms: int = Field(default=50, ge=0, le=60_000)
    commit_interval_ms: int = Field(
        default=100,
        ge=0,
        le=60_000,
        description="A submit transaction starts at most this often (batches processed "
        "meanwhile join it), as Kafka Streams' commit.interval.ms under exactly-once. Fewer, "
        "larger transactions cost the broker and the connector less per event; policy "
        "decisions and request rows become visible up to this much later. 0: commit each "
        "batch as soon as the previous transaction ends.",
    )
    max_event_bytes: int = Field(default=1024 * 1024, ge=256)
    dlq_max_value_bytes: int = Field(
        default=900 * 1024,
        ge=1024,
        description="DLQ records keep the original value up to this size; larger values are "
        "left out (header error.value_omitted) because the producer and the DLQ topic refuse "
        "records over ~1 MiB. Raise it only with kafka producer and topic limits to match.",
    )
    # How long one batch may wait for API tokens/retries before deferring the rest.
    max_batch_seconds: float = Field(default=10.0, gt=0)
    # After a crash, requests are looked up newest first back to the journal's time minus
    # this (the skew allowed between this host's clock and HITL.sh's created_at), unless a
    # request known to be older (a fence) is reached first.
    lookup_skew_seconds: float = Field(default=5.0, ge=0, le=3600)
    journal: bool = Field(
        default=True,
        description="Write the submit journal before creates (topics.journal). false only to "
        "measure what it costs: after a crash the creates in flight are then sent again, and "
        "HITL.sh as documented makes each a second request.",
    )
    shutdown_deadline_seconds: float = Field(default=20.0, gt=0)


class GatewaySettings(_Section):
    """The HTTP server: webhooks, health, metrics."""

    host: str = "0.0.0.0"  # noqa: S104 - a server must be reachable; operators narrow it.
    port: int = Field(default=8080, ge=0, le=65_535)
    public_url: str | None = None
    # /webhooks/hitl: `required` (only a valid signature), `accept-unsigned` (also no signature
    # at all; a forged delivery without one is accepted), `accept-any` (nothing checked).
    signature: Literal["required", "accept-unsigned", "accept-any"] = "required"
    secrets: list[SecretStr] = Field(default_factory=list)
    # Callback URL tokens: the first value signs, every value verifies (rotation). Without
    # one, the webhook secrets are used.
    token_secrets: list[SecretStr] = Field(default_factory=list)
    # /webhooks/hitl/cb/<token>: `token` (the token authenticates; a signature that cannot be
    # checked is counted and logged) or `token-and-signature` (a valid signature too).
    callback_signature: Literal["token", "token-and-signature"] = "token"
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    limit_concurrency: int = Field(default=1000, ge=1)
    keep_alive_seconds: float = Field(default=5.0, gt=0)
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    max_header_bytes: int = Field(default=16_384, ge=1024)
    body_timeout_seconds: float = Field(default=10.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """Old spellings: ``token_secret`` (one value) and the modes that were renamed."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "token_secret" in data:
            old = data.pop("token_secret")
            if old is not None and "token_secrets" not in data:
                text = old.get_secret_value() if isinstance(old, SecretStr) else old
                values = text.split(",") if isinstance(text, str) else text
                data["token_secrets"] = [v.strip() for v in values if str(v).strip()]
        mode = data.get("signature")
        if mode is False:  # YAML reads a bare `off` as false
            mode = "off"
        renamed = {"if-present": "accept-unsigned", "off": "accept-any"}
        if isinstance(mode, str) and mode in renamed:
            raise ValueError(
                f"gateway.signature={mode} was renamed {renamed[mode]} (it accepts "
                f"{'unsigned' if mode == 'if-present' else 'any'} deliveries on /webhooks/hitl); "
                "the default, required, accepts only a valid signature"
            )
        return data


class ResolverSettings(_Section):
    """Joining callbacks to requests, and the polling fallback (the reconciler)."""

    # A callback whose request is not (yet) in the table waits this long, then goes to the
    # unmatched topic. The submitter's transaction is normally visible within a second.
    unmatched_ttl_seconds: float = Field(default=120.0, gt=0)
    restore_timeout_seconds: float = Field(default=120.0, gt=0)
    # Request ids kept after their decision (~165 B each; 500,000 is ~80 MiB) so late
    # duplicate callbacks are dropped quietly instead of waiting and landing on the unmatched
    # topic. Never a second decision either way.
    resolved_memory: int = Field(default=500_000, ge=0, le=10_000_000)
    reconcile: bool = True
    # Sweep the list of completed requests continuously (finds lost webhooks in minutes).
    reconcile_sweep: bool = True
    reconcile_interval_seconds: float = Field(default=60.0, gt=0)
    # A request is overdue at timeout_at + grace, or (when set) max_wait after submission.
    reconcile_grace_seconds: float = Field(default=120.0, ge=0)
    reconcile_max_wait_seconds: float | None = Field(default=None, gt=0)
    # Do not poll the same request again within this many seconds.
    reconcile_repoll_seconds: float = Field(default=900.0, gt=0)
    # Share of the API budget (hitl.rate_limit_calls per window) the reconciler may use.
    reconcile_budget_share: float = Field(default=0.2, gt=0, le=1)
    max_records: int = Field(default=1000, ge=1)


class MetricsSettings(_Section):
    """Prometheus metrics, served at ``/metrics`` on the HTTP port (every role has one)."""

    enabled: bool = True
    # How often lag, pending and oldest-pending gauges are refreshed.
    refresh_seconds: float = Field(default=1.0, gt=0)


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(BaseSettings):
    """Everything the connector needs, validated at start."""

    model_config = SettingsConfigDict(
        env_prefix="HITL_CONNECTOR_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    hitl: HitlSettings = Field(default_factory=HitlSettings)
    loops: LoopSettings = Field(default_factory=LoopSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    resolver: ResolverSettings = Field(default_factory=ResolverSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file, which arrives as init kwargs.
        return (env_settings, init_settings)


def _read_secret(name: str, env: dict[str, str]) -> str | None:
    """A secret from ``NAME`` or from the file named by ``NAME_FILE``."""
    value = env.get(name)
    path = env.get(f"{name}_FILE")
    if value is None and path:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{name}_FILE={path}: cannot read the secret file ({exc.strerror})"
            ) from exc
    return value or None


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {err['msg']}")
    return "\n".join(lines)


_ENV_PREFIX = "HITL_CONNECTOR_"


def _reject_unknown_env(environ: dict[str, str]) -> None:
    """pydantic-settings ignores unknown top-level prefixed variables; we do not."""
    sections = set(Settings.model_fields)
    for name in environ:
        if not name.startswith(_ENV_PREFIX):
            continue
        section = name[len(_ENV_PREFIX) :].split("__", 1)[0].lower()
        if section not in sections:
            raise ConfigError(
                f"invalid configuration (environment):\n  {name}: unknown key "
                f"(sections are {', '.join(sorted(sections))})"
            )


def load_settings(
    config_file: str | Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Build the settings from a YAML file, the environment and explicit overrides.

    Raises ``ConfigError`` with one line per bad or unknown key.
    """
    environ = dict(os.environ)
    data: dict[str, Any] = {}
    origin = "environment"
    if config_file is not None:
        path = Path(config_file)
        origin = f"{path} and environment"
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"--config {path}: cannot read ({exc.strerror})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({exc})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {path}: the top level must be a mapping of sections")
        data = loaded
    secrets: dict[str, Any] = {}
    api_key = _read_secret("HITL_API_KEY", environ)
    if api_key:
        secrets["hitl"] = {"api_key": api_key}
    webhook_secret = _read_secret("HITL_WEBHOOK_SECRET", environ)
    if webhook_secret:
        secrets["gateway"] = {
            "secrets": [s.strip() for s in webhook_secret.split(",") if s.strip()]
        }
    token_secret = _read_secret("HITL_CALLBACK_TOKEN_SECRET", environ)
    if token_secret:
        secrets.setdefault("gateway", {})["token_secrets"] = [
            s.strip() for s in token_secret.split(",") if s.strip()
        ]
    sasl_password = _read_secret("HITL_KAFKA_SASL_PASSWORD", environ)
    if sasl_password:
        secrets["kafka"] = {"sasl_password": sasl_password}
    data = _deep_merge(data, secrets)
    _reject_unknown_env(environ)
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from None
