"""Webhook signature checks: both header styles, prefixes, rotation, garbage, and the modes."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.hitl.signing import (
    SignatureCheck,
    SignatureMode,
    decide,
    sign,
    verify_signature,
)

BODY = b'{"event":"request.completed","request_id":"65f1234567890abcdef12348"}'
SECRET = "whsec-current"
OLD = b"whsec-previous"


def test_sign_is_lowercase_hex_hmac_sha256_of_the_raw_body() -> None:
    expected = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET) == expected
    assert sign(BODY, SECRET.encode()) == expected
    assert expected == expected.lower() and len(expected) == 64


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-HITL-Signature-256", "sha256={sig}"),  # S1, as documented
        ("x-hitl-signature-256", "sha256={sig}"),  # Node's lowercase lookup
        ("X-HITL-SIGNATURE-256", "SHA256={sig}"),  # prefix is case-insensitive
        ("X-HITL-Signature-256", "{sig}"),  # the docs' verifier strips the prefix if present
        ("X-HITL-Signature", "{sig}"),  # S2, bare hex
        ("X-HITL-Signature", "sha256={sig}"),
        ("X-HITL-Signature", "  {sig}  "),
        ("X-HITL-Signature", "{SIG}"),  # uppercase hex
    ],
)
def test_both_header_styles_and_prefix_forms_verify(name: str, value: str) -> None:
    sig = sign(BODY, SECRET)
    headers = {name: value.format(sig=sig, SIG=sig.upper())}
    assert verify_signature(BODY, headers, [SECRET]) is SignatureCheck.VALID


def test_any_of_several_secrets_verifies_during_rotation() -> None:
    headers = {"X-HITL-Signature": sign(BODY, OLD)}
    assert verify_signature(BODY, headers, [SECRET, OLD]) is SignatureCheck.VALID
    assert verify_signature(BODY, headers, [SECRET]) is SignatureCheck.INVALID


def test_a_valid_value_in_either_header_is_enough() -> None:
    headers = {"X-HITL-Signature-256": "sha256=" + "0" * 64, "X-HITL-Signature": sign(BODY, OLD)}
    assert verify_signature(BODY, headers, [OLD]) is SignatureCheck.VALID


def test_tampering_with_one_body_byte_is_invalid() -> None:
    headers = {"X-HITL-Signature-256": "sha256=" + sign(BODY, SECRET)}
    for i in (0, len(BODY) // 2, len(BODY) - 1):
        tampered = BODY[:i] + bytes([BODY[i] ^ 0x01]) + BODY[i + 1 :]
        assert verify_signature(tampered, headers, [SECRET]) is SignatureCheck.INVALID


def test_tampering_with_one_signature_digit_is_invalid() -> None:
    sig = sign(BODY, SECRET)
    flipped = sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]
    assert verify_signature(BODY, {"X-HITL-Signature": flipped}, [SECRET]) is (
        SignatureCheck.INVALID
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "application/json"},
        {"X-HITL-Signature": ""},
        {"x-hitl-signature-256": "  "},
    ],
)
def test_absent_or_empty_header_is_missing(headers: dict[str, str]) -> None:
    assert verify_signature(BODY, headers, [SECRET]) is SignatureCheck.MISSING


@pytest.mark.parametrize(
    "value",
    [
        "sha256=",
        "sha1=" + "a" * 40,
        "z" * 64,
        "a" * 63,
        "a" * 65,
        "sha256=" + "a" * 64 + "extra",
        "ａ" * 64,  # fullwidth letters are not hex
        "٣" * 64,  # Arabic-Indic digits are not hex either
        "x" * 1_000_000,
        "sha256=sha256=" + "a" * 64,
    ],
)
def test_garbled_or_oversized_values_are_invalid(value: str) -> None:
    assert verify_signature(BODY, {"X-HITL-Signature": value}, [SECRET]) is (SignatureCheck.INVALID)


def test_no_secrets_or_only_empty_secrets_never_verify() -> None:
    assert verify_signature(BODY, {"X-HITL-Signature": sign(BODY, b"")}, [b"", ""]) is (
        SignatureCheck.INVALID
    )
    assert verify_signature(BODY, {"X-HITL-Signature": sign(BODY, SECRET)}, []) is (
        SignatureCheck.INVALID
    )


def test_non_string_header_values_do_not_raise() -> None:
    headers: dict[str, object] = {"X-HITL-Signature": None, "X-HITL-Signature-256": 42}
    assert verify_signature(BODY, headers, [SECRET]) is SignatureCheck.INVALID  # type: ignore[arg-type]
    raw = {"X-HITL-Signature": sign(BODY, SECRET).encode()}
    assert verify_signature(BODY, raw, [SECRET]) is SignatureCheck.VALID  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("check", "required", "if_present", "off"),
    [
        (SignatureCheck.VALID, True, True, True),
        (SignatureCheck.MISSING, False, True, True),
        (SignatureCheck.INVALID, False, False, True),
    ],
)
def test_decide_per_mode(
    check: SignatureCheck, required: bool, if_present: bool, off: bool
) -> None:
    assert decide(check, "required") is required
    assert decide(check, "accept-unsigned") is if_present
    assert decide(check, "accept-any") is off


def test_decide_fails_closed_on_an_unknown_mode() -> None:
    assert decide(SignatureCheck.MISSING, "maybe") is False  # type: ignore[arg-type]
    assert decide(SignatureCheck.VALID, "maybe") is True  # type: ignore[arg-type]


# --- properties -------------------------------------------------------------------------------

_NAMES = st.sampled_from(
    [
        "X-HITL-Signature-256",
        "x-hitl-signature-256",
        "X-HITL-Signature",
        "X-Hitl-Signature",
        "Content-Type",
        "X-Other",
    ]
)
_secrets = st.lists(st.binary(max_size=16) | st.text(max_size=16), max_size=3)


@st.composite
def _deliveries(draw: st.DrawFn) -> tuple[bytes, dict[str, str], list[bytes | str]]:
    body = draw(st.binary(max_size=64))
    secrets: list[bytes | str] = draw(_secrets)
    headers: dict[str, str] = {}
    for name in draw(st.lists(_NAMES | st.text(max_size=30), max_size=4)):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            headers[name] = draw(st.text(max_size=80))
        else:
            key = (
                draw(st.sampled_from(secrets))
                if secrets and kind < 3
                else draw(_secrets.map(lambda s: s[0] if s else b"k"))
            )
            prefix = draw(st.sampled_from(["", "sha256=", "SHA256=", " "]))
            sig = sign(draw(st.sampled_from([body, body + b"x"])), key)
            headers[name] = prefix + draw(st.sampled_from([sig, sig.upper(), sig[:-1]]))
    return body, headers, secrets


def _model(body: bytes, headers: dict[str, str], secrets: list[bytes | str]) -> SignatureCheck:
    """The specification, written plainly: which headers count and what makes one valid."""
    names = ("x-hitl-signature-256", "x-hitl-signature")
    values = [v for k, v in headers.items() if k.strip().lower() in names and v.strip()]
    if not values:
        return SignatureCheck.MISSING
    good = {sign(body, s) for s in secrets if (s.encode() if isinstance(s, str) else s)}
    for value in values:
        text = value.strip()
        if text.lower().startswith("sha256="):
            text = text[7:].strip()
        if len(value) <= 256 and text.lower() in good:
            return SignatureCheck.VALID
    return SignatureCheck.INVALID


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_deliveries())
def test_property_valid_iff_a_correct_signature_for_some_secret_is_present(
    delivery: tuple[bytes, dict[str, str], list[bytes | str]],
) -> None:
    body, headers, secrets = delivery
    assert verify_signature(body, headers, secrets) is _model(body, headers, secrets)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.binary(max_size=64),
    headers=st.dictionaries(st.text(max_size=24) | _NAMES, st.text(max_size=100), max_size=5),
    secrets=_secrets,
)
def test_property_arbitrary_headers_never_raise(
    body: bytes, headers: dict[str, str], secrets: list[bytes | str]
) -> None:
    result = verify_signature(body, headers, secrets)
    assert isinstance(result, SignatureCheck)
    modes: tuple[SignatureMode, ...] = ("required", "accept-unsigned", "accept-any")
    for mode in modes:
        assert decide(result, mode) in (True, False)
