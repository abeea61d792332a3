"""Pulumi mocks for the mesh tests, and helpers to await Outputs.

They build on the render tool's PlanMocks (components/render.py), which answer every resource and
invoke the program uses and record parents; here the token secret IDs are recognisable values, so
tests can follow a secret to where it must (and must not) appear.
"""

from __future__ import annotations

import json
import unittest
from pathlib import Path
from typing import Any

import pulumi
import yaml

from components.render import PlanMocks, set_plan_mocks, settle
from components.spec import PROJECT
from components.testing import (
    INSTANCE_TYPE_INVOKE,
    OFFERINGS_INVOKE,
    answer_instance_type,
    answer_offerings,
)

ROOT = Path(__file__).resolve().parent.parent
STACK = "test"
# A real-looking token for the provider; tests look for it to prove it never leaks in plain text.
CONSUL_TOKEN = "00000000-0000-4000-8000-management00"
GOSSIP_KEY = "c2VjcmV0LWdvc3NpcC1rZXktb2YtMzItYnl0ZXMhISE="  # base64 of 32 bytes


def secret_id_of(accessor_id: str) -> str:
    """The SecretID the mocks hand out for a token: recognisable in rendered user data."""
    return f"SECRET-{accessor_id}"


def generated_of(name: str) -> str:
    """What the mocks hand out for a value the stack generates in secret (tokens, keys)."""
    return f"GENERATED-{name}"


class MeshMocks(PlanMocks):
    """PlanMocks, with AWS's answers about instance types (the public test kit's stand-ins):
    `offered_in` (type -> the zones offering it; others are offered everywhere) and
    `architectures` (type -> what AWS reports; default: arm64 for a Graviton name, else x86_64)."""

    ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")  # PlanMocks' answer for the region's zones

    def __init__(self) -> None:
        super().__init__()
        self.offered_in: dict[str, list[str]] = {}
        self.architectures: dict[str, list[str]] = {}

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == OFFERINGS_INVOKE:
            self.calls.append(args)
            return answer_offerings(args.args, self.ZONES, self.offered_in)
        if args.token == INSTANCE_TYPE_INVOKE:
            self.calls.append(args)
            return answer_instance_type(args.args, self.architectures)
        return super().call(args)

    def secret_id(self, accessor_id: str) -> str:
        return secret_id_of(accessor_id)

    def generated(self, what: str) -> str:
        return generated_of(what)


def demo_config(gateway: bool = False) -> dict[str, Any]:
    """The demo stack's project config (Pulumi.dev.yaml), keys without the project prefix.

    Without `gateway`, its mesh alone: the tests of the mesh's own parts (which reshape its services
    and count its VMs) run without the API gateway, whose tests (tests/test_gateway*.py) take the
    whole demo stack."""
    doc = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    prefix = f"{PROJECT}:"
    config = {k[len(prefix) :]: v for k, v in doc.items() if k.startswith(prefix)}
    if not gateway:
        config.pop("gateway", None)
    return config


def as_pulumi_config(config: dict[str, Any]) -> dict[str, str]:
    """What the Pulumi engine hands a program: namespaced keys, structured values as JSON text."""
    return {f"{PROJECT}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items() if v is not None}


async def value(output: Any) -> Any:
    """The resolved value of an Output (or of data holding Outputs), once every registration is done."""
    return await settle(output)


async def is_secret(output: Any) -> bool:
    return await pulumi.Output.from_input(output).is_secret()


class MockedTestCase(unittest.IsolatedAsyncioTestCase):
    """A fresh mock runtime per test, set inside the test's own event loop."""

    config: dict[str, Any] | None = None
    secret_keys = (f"{PROJECT}:consulToken", f"{PROJECT}:consulGossipKey")

    def setUp(self) -> None:
        self.mocks = MeshMocks()
        set_plan_mocks(self.mocks, STACK)
        self.set_config(self.config or {})

    def set_config(self, config: dict[str, Any]) -> None:
        pulumi.runtime.set_all_config(as_pulumi_config(config), list(self.secret_keys))
