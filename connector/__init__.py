"""hitl-kafka-connector: human-in-the-loop review for Kafka pipelines (HITL.sh).

The public API, for web apps that embed pieces of the connector (see ``docs/examples/``):

- ``HitlClient`` (with ``HitlSettings``, ``CreatedRequest``): the pooled, paced, retrying
  async HITL.sh client.
- ``verify_signature`` (→ ``SignatureCheck``) and ``sign``: webhook HMAC-SHA256 signatures
  in both documented header styles, several secrets for rotation.
- ``normalize_webhook`` / ``normalize_request_object`` (→ ``NormalizedCallback`` or
  ``Ignored``; ``MalformedPayload`` on unusable input): every documented payload shape.
- ``interpret`` (→ ``Answer``): a final answer as the decision record's fields.
- ``make_callback_token`` / ``read_callback_token``: the per-request callback URL token.
- The error tree rooted at ``ConnectorError`` (drawn in ``connector.errors``).

Importing ``connector`` loads these modules only: no Kafka client, web server or metrics.
Everything else in the package is internal and may change between versions.
"""

__version__ = "0.1.0"

# ``__version__`` comes first: modules imported below (and connector.metrics) read it.
from connector.config import HitlSettings
from connector.errors import (
    ConfigError,
    ConnectorError,
    HitlError,
    HitlPermanentError,
    HitlRetriableError,
    HitlUnavailableError,
    KafkaSetupError,
)
from connector.hitl.client import CreatedRequest, HitlClient
from connector.hitl.payloads import (
    Ignored,
    MalformedPayload,
    NormalizedCallback,
    normalize_request_object,
    normalize_webhook,
)
from connector.hitl.signing import SignatureCheck, sign, verify_signature
from connector.hitl.tokens import make_callback_token, read_callback_token
from connector.resolver.answers import Answer, interpret

__all__ = [
    "Answer",
    "ConfigError",
    "ConnectorError",
    "CreatedRequest",
    "HitlClient",
    "HitlError",
    "HitlPermanentError",
    "HitlRetriableError",
    "HitlSettings",
    "HitlUnavailableError",
    "Ignored",
    "KafkaSetupError",
    "MalformedPayload",
    "NormalizedCallback",
    "SignatureCheck",
    "__version__",
    "interpret",
    "make_callback_token",
    "normalize_request_object",
    "normalize_webhook",
    "read_callback_token",
    "sign",
    "verify_signature",
]
