"""The connector's exception tree. Catch at exactly the level you mean.

```
ConnectorError
├── ConfigError                  bad or unknown configuration; fix it and restart
├── KafkaSetupError              broker unreachable, topics missing or mis-shaped
└── HitlError                    anything from the HITL.sh API client
    ├── HitlPermanentError       4xx other than 408/429: the request will never succeed
    │                            (status, msg, data); the event goes to the DLQ
    └── HitlRetriableError       429, 408, 5xx, transport errors; carries retry_after
        └── HitlUnavailableError retries exhausted or circuit open; pause and try later
            └── HitlAmbiguousError   a create may have been processed (timeout, reset, 5xx
                                     after it was sent): look it up before creating again
```

Every class has a ``retriable`` flag; messages say what to do next.
"""

from __future__ import annotations

from typing import Any


class ConnectorError(Exception):
    """Base of every error the connector raises on purpose."""

    retriable: bool = False


class ConfigError(ConnectorError):
    """The configuration is invalid; the message names each bad key."""


class KafkaSetupError(ConnectorError):
    """Kafka is unreachable or its topics do not have the shape the connector needs."""


class HitlError(ConnectorError):
    """An error talking to the HITL.sh API."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        msg: str | None = None,
        data: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.msg = msg
        self.data = data


class HitlPermanentError(HitlError):
    """HITL.sh rejected the request (4xx other than 408/429); retrying will not help."""


class HitlRetriableError(HitlError):
    """A transient failure; ``retry_after`` (seconds) says when to try again, if known."""

    retriable = True

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        msg: str | None = None,
        data: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, msg=msg, data=data)
        self.retry_after = retry_after


class HitlUnavailableError(HitlRetriableError):
    """HITL.sh cannot be used right now (retries exhausted, rate limit, circuit open)."""


class HitlAmbiguousError(HitlUnavailableError):
    """A create left and its outcome is unknown: it may exist on HITL.sh.

    HITL.sh documents no idempotency key, so sending it again may ask a person twice. Look
    the request up (``connector.submitter.recovery``) before any retry.
    """
