"""The public API (``import connector``): complete, typed, documented, light and cycle-free."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import connector

PACKAGE = Path(connector.__file__).parent
EXPECTED = {
    "__version__",
    "HitlClient",
    "CreatedRequest",
    "HitlSettings",
    "sign",
    "verify_signature",
    "SignatureCheck",
    "normalize_webhook",
    "normalize_request_object",
    "NormalizedCallback",
    "Ignored",
    "MalformedPayload",
    "interpret",
    "Answer",
    "make_callback_token",
    "read_callback_token",
    "ConnectorError",
    "ConfigError",
    "KafkaSetupError",
    "HitlError",
    "HitlPermanentError",
    "HitlRetriableError",
    "HitlUnavailableError",
}
PUBLIC = sorted(set(connector.__all__) - {"__version__"})


def test_all_lists_exactly_the_public_names() -> None:
    assert set(connector.__all__) == EXPECTED
    assert len(connector.__all__) == len(set(connector.__all__))
    namespace: dict[str, object] = {}
    exec("from connector import *", namespace)  # the star import users may write
    assert set(namespace) - {"__builtins__"} == EXPECTED


@pytest.mark.parametrize("name", PUBLIC)
def test_every_name_is_the_real_object_and_documented(name: str) -> None:
    obj = getattr(connector, name)
    assert obj.__module__.startswith("connector."), obj.__module__
    assert inspect.getdoc(obj), f"{name} has no docstring"


@pytest.mark.parametrize(
    "func",
    [
        connector.sign,
        connector.verify_signature,
        connector.normalize_webhook,
        connector.normalize_request_object,
        connector.interpret,
        connector.make_callback_token,
        connector.read_callback_token,
        connector.HitlClient.__init__,
        connector.HitlClient.create_request,
        connector.HitlClient.get_request,
        connector.HitlClient.list_requests,
        connector.HitlClient.register_webhook,
        connector.HitlClient.test_key,
    ],
    ids=lambda f: f.__qualname__,
)
def test_functions_are_fully_annotated(func: typing.Callable[..., object]) -> None:
    signature = inspect.signature(func)
    missing = [
        p.name
        for p in signature.parameters.values()
        if p.name != "self" and p.annotation is inspect.Parameter.empty
    ]
    assert not missing, f"unannotated parameters: {missing}"
    assert signature.return_annotation is not inspect.Signature.empty
    typing.get_type_hints(func)  # every annotation resolves


def test_the_package_ships_its_type_information() -> None:
    assert (PACKAGE / "py.typed").is_file()
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert 'connector = ["py.typed", ' in pyproject


def test_round_trip_through_the_public_names() -> None:
    body = b'{"event": "request.completed", "request_id": "r1", "response_data": "Approve"}'
    signature = connector.sign(body, "s3cret")
    check = connector.verify_signature(body, {"X-HITL-Signature": signature}, ["old", "s3cret"])
    assert check is connector.SignatureCheck.VALID
    event = connector.normalize_webhook({"event": "request.completed", "request_id": "r1"})
    assert isinstance(event, connector.NormalizedCallback) and event.terminal
    answer = connector.interpret(
        "single_select", [{"value": "approved", "label": "Approve"}], "completed", "Approve", None
    )
    assert answer == connector.Answer("approved", "approved", "Approve", "human")
    token = connector.make_callback_token("evt-1", "k")
    assert connector.read_callback_token(token, "k") == "evt-1"
    with pytest.raises(connector.MalformedPayload):
        connector.normalize_webhook({"event": "request.completed"})
    assert issubclass(connector.HitlUnavailableError, connector.HitlRetriableError)
    assert issubclass(connector.ConfigError, connector.ConnectorError)


def _fresh(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PACKAGE.parent,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_importing_connector_loads_no_kafka_server_or_metrics_code() -> None:
    heavy = ("aiokafka", "prometheus_client", "starlette", "uvicorn", "uvloop", "connector.app")
    loaded = _fresh(
        "import sys, connector\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} or m in {heavy!r}))"
    )
    assert loaded.strip() == "[]"


@pytest.mark.parametrize(
    "first", ["connector.metrics", "connector.config", "connector.hitl.client", "connector.cli"]
)
def test_no_import_cycle_whichever_module_comes_first(first: str) -> None:
    _fresh(f"import {first}\nimport connector\nassert connector.HitlClient")
