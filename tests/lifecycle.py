"""The stack's program as the lifecycle simulator runs it (components/lifecycle.py), and baselines.

A scenario is a before/after pair of stack configs: the first `up` of the before-config leaves a
state (a Run), and the simulator judges an `up` (or a preview) of the after-config over it. The
first `up` of a config is run once per test session and shared: it is a pure function of the
config, and the simulator never changes a Run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

import pulumi

from components import lifecycle, program
from components.spec import PROJECT
from tests.mocks import MeshMocks, as_pulumi_config, demo_config

ADMIN = "198.51.100.7/32"
SECRET_KEYS = [f"{PROJECT}:consulToken", f"{PROJECT}:consulGossipKey"]
DEMO = demo_config()


def stack_program(config: dict[str, Any], around: Callable[[], Any] | None = None) -> Callable[[], Any]:
    """The stack as `pulumi up` runs it, with `config` (keys without the project prefix).

    `around`, if given, is called instead of program.main (a test that swaps a protection out
    calls main itself inside its patch).
    """

    def run() -> Any:
        pulumi.runtime.set_all_config(as_pulumi_config(config), SECRET_KEYS)
        if around is not None:
            return around()
        return program.main(deployer_lookup=lambda: ADMIN)

    return run


@cache
def _first_up(key: str) -> lifecycle.Run:
    return lifecycle.run(stack_program(json.loads(key)), MeshMocks())


def first_up(config: dict[str, Any]) -> lifecycle.Run:
    """The state the first `up` of `config` leaves (shared: never modify it)."""
    return _first_up(json.dumps(config, sort_keys=True))


def plan(before: dict[str, Any], after: dict[str, Any], **kwargs: Any) -> lifecycle.Plan:
    """The engine's plan for an `up` of `after` over the state of `before` (kwargs: preview, latest_image, renewed)."""
    return lifecycle.plan_after(first_up(before), stack_program(after), MeshMocks(), **kwargs)


def named(record: lifecycle.Record, name: str) -> lifecycle.Registration:
    return record[lifecycle.urn_named(record, name)]


def of_type(record: lifecycle.Record, typ: str) -> list[str]:
    return sorted(lifecycle.name_of(u) for u, r in record.items() if r.type == typ)
