"""The per-request callback URL token (design §5): ``/webhooks/hitl/cb/{token}``.

``callback_url`` deliveries carry no documented signature, so the URL itself authenticates
them: the token is ``base64url(event_id) "." base64url(HMAC-SHA256(secret, label ‖ event_id)[:16])``
(unpadded, URL-safe, 128-bit MAC). The gateway reads the event id back out; the resolver
refuses a callback whose token names another event than its request, so one leaked URL
cannot answer other requests. Owns: making and reading tokens. Does not own: URL building,
routing, or webhook body signatures (``hitl.signing``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Final

# Fits any event id the submitter accepts (256 characters, up to 4 UTF-8 bytes each).
MAX_TOKEN_CHARS: Final = 1536
_MAC_BYTES: Final = 16
# Domain separation: a token MAC can never double as a webhook body signature.
_LABEL: Final = b"hitl-connector/callback-token/v1\x00"
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]+")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """Strict unpadded base64url; ``None`` unless ``text`` is the canonical encoding."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Unused trailing bits make several strings decode alike; accept only the canonical one.
    return data if _b64(data) == text else None


def _key(secret: bytes | str) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def _mac(event_id: bytes, secret: bytes) -> bytes:
    return hmac.new(secret, _LABEL + event_id, hashlib.sha256).digest()[:_MAC_BYTES]


def make_callback_token(event_id: str, secret: bytes | str) -> str:
    """The token for ``event_id``. Raises ``ValueError`` for an empty secret or event id, an
    event id that is not encodable as UTF-8, or one too long for ``MAX_TOKEN_CHARS``."""
    key = _key(secret)
    if not key:
        raise ValueError("the callback token secret is empty; set gateway.token_secret")
    if not event_id:
        raise ValueError("cannot make a callback token for an empty event id")
    raw = event_id.encode("utf-8")  # UnicodeEncodeError (a ValueError) on lone surrogates
    token = f"{_b64(raw)}.{_b64(_mac(raw, key))}"
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(
            f"event id of {len(raw)} UTF-8 bytes is too long for a callback token "
            f"(limit {MAX_TOKEN_CHARS} token characters)"
        )
    return token


def read_callback_token(token: str, secret: bytes | str | Sequence[bytes | str]) -> str | None:
    """The event id ``token`` carries if its MAC verifies under ``secret`` (or any of several,
    for rotation); ``None`` for anything else (wrong or rotated-out secret, tampering, malformed
    or oversized input). Empty secrets never verify. Never raises."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        return None
    if isinstance(secret, bytes | str):
        keys = [_key(secret)]
    elif isinstance(secret, Sequence):
        keys = [_key(s) for s in secret if isinstance(s, bytes | str)]
    else:
        keys = []
    keys = [k for k in keys if k]
    id_part, dot, mac_part = token.partition(".")
    if not keys or not dot:
        return None
    raw = _unb64(id_part)
    mac = _unb64(mac_part)
    if not raw or mac is None or len(mac) != _MAC_BYTES:
        return None
    valid = False
    for key in keys:  # no early exit: timing does not say which secret matched
        valid |= hmac.compare_digest(_mac(raw, key), mac)
    if not valid:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
