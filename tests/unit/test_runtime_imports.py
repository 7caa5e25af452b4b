"""``hitl-connector run`` loads the runtime only: no sandbox, dev broker, loadgen or bench."""

from __future__ import annotations

import subprocess
import sys

import orjson

DEV_ONLY = ("hitl_sandbox", "connector.devkafka", "connector.devstack", "connector.loadgen",
            "connector.dlq", "bench", "starlette")  # fmt: skip

# What `hitl-connector run` executes before the event loop starts: the parser, the command's
# imports (cmd_run) and the app module with everything it imports.
RUN_PATH = """
import sys, orjson
from connector.cli import build_parser
args = build_parser().parse_args(["run", "--role", "all"])
assert args.func.__name__ == "cmd_run"
from connector.app import run_app
from connector.logs import setup_logging
print(orjson.dumps(sorted(sys.modules)).decode())
"""


def _modules_after(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    return list(orjson.loads(out.stdout))


def test_the_run_path_imports_no_dev_tool() -> None:
    loaded = _modules_after(RUN_PATH)
    assert "connector.app" in loaded and "uvicorn" in loaded  # the check sees the real path
    assert [m for m in loaded if m.startswith(DEV_ONLY)] == []


def test_a_dev_command_still_gets_its_options() -> None:
    code = """
import sys, orjson
from connector.cli import build_parser
args = build_parser().parse_args(["sandbox", "--port", "9999", "--auto-review"])
assert (args.port, args.auto_review) == (9999, True)
print(orjson.dumps(sorted(sys.modules)).decode())
"""
    assert "hitl_sandbox.server" in _modules_after(code)
