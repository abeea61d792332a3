"""Shared test set-up: the project root on sys.path, and system tools that CI must have."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# .ci/run sets this: there, a missing validator is a failure, never a silent skip.
REQUIRE_TOOLS = os.environ.get("CONSUL_TPROXY_REQUIRE_TOOLS") == "1"


def need(condition: bool, why: str) -> None:
    """Skip on a developer machine that lacks a tool or privilege; fail in CI."""
    if condition:
        return
    if REQUIRE_TOOLS:
        pytest.fail(f"{why} (CONSUL_TPROXY_REQUIRE_TOOLS=1: required here)")
    pytest.skip(why)


def tool(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"{name} is not installed")
    assert path is not None
    return path
