"""docs/configuration.md is generated from the settings model and must not drift from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from connector.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", ROOT / "scripts" / "gen_config_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_reference_matches_the_settings_model() -> None:
    expected = _generator().render()
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == expected, (
        "docs/configuration.md is out of date: run scripts/gen_config_docs.py and commit it"
    )


def test_every_field_is_documented_with_its_environment_variable() -> None:
    text = _generator().render()
    for section, info in Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type)
        for name in model.model_fields:
            assert f"| `{section}.{name}` |" in text
    assert "`HITL_CONNECTOR_KAFKA__BOOTSTRAP_SERVERS`" in text
    for secret in ("HITL_API_KEY", "HITL_WEBHOOK_SECRET", "HITL_CALLBACK_TOKEN_SECRET"):
        assert f"`{secret}_FILE`" in text
