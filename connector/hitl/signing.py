"""Webhook signatures: HMAC-SHA256 of the raw body, hex, in either documented header style.

Owns: computing a signature (``sign``, for senders such as the sandbox), checking the
``X-HITL-Signature-256: sha256=<hex>`` (S1) and ``X-HITL-Signature: <hex>`` (S2) headers against
every configured secret (rotation), and the ``required | accept-unsigned | accept-any``
acceptance rule.
Does not own: reading the body or answering HTTP (the gateway), or the per-request callback
URL token (``hitl.tokens``). Nothing here raises on hostile headers; garbage is ``INVALID``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Final, Literal

SignatureMode = Literal["required", "accept-unsigned", "accept-any"]

# Lookup order: the API reference's header first, then the global-webhooks page's.
SIGNATURE_HEADERS: Final = ("x-hitl-signature-256", "x-hitl-signature")
_PREFIX: Final = "sha256="
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")
# A well-formed value is at most "sha256=" + 64 hex plus some whitespace; anything far longer
# is garbage and is rejected before any further work.
_MAX_VALUE_CHARS: Final = 256


class SignatureCheck(enum.Enum):
    """Outcome of checking a delivery's signature headers."""

    VALID = "valid"
    MISSING = "missing"
    INVALID = "invalid"


def _key(secret: bytes | str) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def sign(body: bytes, secret: bytes | str) -> str:
    """Lowercase hex HMAC-SHA256 of ``body`` under ``secret`` (UTF-8 when a string)."""
    return hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def _candidates(headers: Mapping[str, str]) -> list[object]:
    """Values of the signature headers, case-insensitively, in lookup order."""
    found: dict[str, list[object]] = {name: [] for name in SIGNATURE_HEADERS}
    for name, value in headers.items():
        if isinstance(name, str) and len(name) <= 64:
            bucket = found.get(name.strip().lower())
            if bucket is not None:
                bucket.append(value)
    return [value for name in SIGNATURE_HEADERS for value in found[name]]


def _digest_of(value: object) -> bytes | None:
    """The 32 digest bytes a header value claims, or ``None`` when it is malformed."""
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str) or len(value) > _MAX_VALUE_CHARS:
        return None
    text = value.strip()
    if text[: len(_PREFIX)].lower() == _PREFIX:
        text = text[len(_PREFIX) :].strip()
    if not _HEX64.fullmatch(text):
        return None
    return bytes.fromhex(text)


def _is_blank(value: object) -> bool:
    return isinstance(value, str | bytes | bytearray) and not value.strip()


def verify_signature(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[bytes | str]
) -> SignatureCheck:
    """Check the signature headers of one delivery.

    ``MISSING`` when neither header is present (or all are blank); ``VALID`` when any present
    value is the HMAC of ``body`` under any non-empty secret; ``INVALID`` otherwise, including
    malformed values and an empty secret list. Empty secrets are skipped: an empty key would
    let anyone sign.
    """
    values = [v for v in _candidates(headers) if not _is_blank(v)]
    if not values:
        return SignatureCheck.MISSING
    claimed = [d for d in map(_digest_of, values) if d is not None]
    if not claimed:
        return SignatureCheck.INVALID
    valid = False
    for secret in secrets:
        key = _key(secret)
        if not key:
            continue
        expected = hmac.digest(key, body, "sha256")  # one C call (OpenSSL)
        for digest in claimed:
            # No early exit: the time taken does not depend on which secret or value matched.
            valid |= hmac.compare_digest(expected, digest)
    return SignatureCheck.VALID if valid else SignatureCheck.INVALID


def decide(check: SignatureCheck, mode: SignatureMode) -> bool:
    """Whether to accept a delivery: ``required`` → only VALID; ``accept-unsigned`` → VALID or
    MISSING; ``accept-any`` → always. An unknown mode fails closed (only VALID)."""
    if mode == "accept-any":
        return True
    if mode == "accept-unsigned":
        return check is not SignatureCheck.INVALID
    return check is SignatureCheck.VALID
