"""Logging setup: JSON lines by default, readable lines on a terminal.

Owns formatting, and quieting aiokafka under faults (``KafkaNoiseFilter``): a down broker
makes aiokafka log an ERROR per attempt (~10 a second per broker), enough to trip log-based
alerts. Secrets never reach a log record: settings hold them as ``SecretStr`` and the HITL
client never formats its headers.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from typing import Any

import orjson

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={"event_id": ...}`` fields are kept."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(
            (k, v)
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_")
        )
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


# aiokafka messages that only say a broker (or a request to it) failed this attempt; the
# client retries them itself. Logged at WARNING (never ERROR), and rate limited.
_TRANSIENT = re.compile(
    r"^(Unable connect to|Unable to update metadata|Unable to request metadata|"
    r"Failed fetch (messages|offsets) from|Heartbeat (send request )?failed|Heartbeat session|"
    r"Group Coordinator Request failed|FindCoordinator Request failed|Cannot send|"
    r"Could not send|Got error produce response|Error sending|Unexpected error during|"
    r"OffsetCommit failed|Could not (find|send)|.*(RequestTimedOut|KafkaConnectionError|"
    r"NodeNotReady|NotCoordinator|CoordinatorNotAvailable|CoordinatorLoadInProgress|"
    r"NotLeaderForPartition|NotEnoughReplicas|LeaderNotAvailable|TimeoutError))"
)


class KafkaNoiseFilter(logging.Filter):
    """Quiets aiokafka's per-attempt retry messages; attach to the root handler.

    Per message template (logger + format string): the first record passes, later ones
    within ``window`` seconds are counted and dropped, and the first one after the window
    passes with "(N more like this in Ts)". Transient ones (``_TRANSIENT``) are lowered to
    WARNING. A broker going away and coming back is logged once each by
    ``connector.kafka.failover.BROKERS``.
    """

    def __init__(self, window: float = 60.0) -> None:
        super().__init__()
        self.window = window
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka") or record.levelno < logging.WARNING:
            return True
        template = str(record.msg)
        transient = bool(_TRANSIENT.match(template) or _TRANSIENT.match(record.getMessage()))
        if transient and record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        key = (record.name, template)
        now = time.monotonic()
        with self._lock:
            first, dropped = self._seen.get(key, (0.0, -1))
            if dropped >= 0 and now - first < self.window:
                self._seen[key] = (first, dropped + 1)
                self.suppressed += 1
                return False
            self._seen[key] = (now, 0)
        if dropped > 0:
            record.msg = f"{template} ({dropped} more like this in {now - first:.0f}s)"
        return True


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    handler.addFilter(KafkaNoiseFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka is chatty at INFO about routine group membership.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
