"""Fixtures of the consumer's tests: the mesh program's outputs, computed once per session.

The helpers are in consumer_harness.py (a module name of its own: another project's rootless
conftest.py may be imported as `conftest` too).
"""

from __future__ import annotations

from typing import Any

import pytest
from consumer_harness import MESH_DEMO, MESH_EXISTING, mesh_outputs


@pytest.fixture(scope="session")
def demo_outputs() -> dict[str, Any]:
    return mesh_outputs(MESH_DEMO)


@pytest.fixture(scope="session")
def existing_outputs() -> dict[str, Any]:
    return mesh_outputs(MESH_EXISTING)
