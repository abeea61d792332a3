"""Pulumi mocks for the mesh, and helpers to await Outputs in tests."""

from __future__ import annotations

import json
import unittest
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime.mocks import MockMonitor

from components.spec import PROJECT

ROOT = Path(__file__).resolve().parent.parent
STACK = "test"
# A real-looking token for the provider; tests look for it to prove it never leaks in plain text.
CONSUL_TOKEN = "00000000-0000-4000-8000-management00"
GOSSIP_KEY = "c2VjcmV0LWdvc3NpcC1rZXktb2YtMzItYnl0ZXMhISE="  # base64 of 32 bytes


def secret_id_of(accessor_id: str) -> str:
    """The SecretID the mocks hand out for a token: recognisable in rendered user data."""
    return f"SECRET-{accessor_id}"


class MeshMocks(pulumi.runtime.Mocks):
    """Answers resource registrations and invokes the way AWS and Consul would, and records them."""

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []
        self.parents: dict[str, str] = {}
        """Resource name -> URN of its parent, recorded by ParentRecordingMonitor."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        state = dict(args.inputs)
        index = len(self.resources)
        if args.typ == "aws:ec2/instance:Instance":
            state["privateIp"] = f"10.0.1.{index}"
        elif args.typ == "consul:index/aclToken:AclToken":
            state["accessorId"] = f"accessor-{args.name}"
        elif args.typ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
            state.setdefault("name", f"{args.name}-{index}")
            state["arn"] = f"arn:aws:iam::123456789012:role/{args.name}"
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        self.calls.append(args)
        if args.token == "consul:index/getAclTokenSecretId:getAclTokenSecretId":
            return {"accessorId": args.args["accessorId"], "secretId": secret_id_of(args.args["accessorId"])}
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0123456789abcdef0", "name": "ubuntu-noble-24.04"}
        if args.token == "aws:ec2/getVpc:getVpc":
            return {"id": "vpc-0default0000000000"}
        if args.token == "aws:ec2/getSubnets:getSubnets":
            return {"ids": ["subnet-0bbbbbbbbbbbbbbbb", "subnet-0aaaaaaaaaaaaaaaa"]}
        if args.token == "aws:ec2/getSubnet:getSubnet":
            return {"id": args.args["id"], "vpcId": "vpc-0fromsubnet000000"}
        return {}

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]

    def named(self, name: str) -> pulumi.runtime.MockResourceArgs:
        (found,) = [r for r in self.resources if r.name == name]
        return found


class ParentRecordingMonitor(MockMonitor):
    """The mock monitor, also noting each resource's parent (MockResourceArgs does not carry it)."""

    def __init__(self, mocks: MeshMocks) -> None:
        super().__init__(mocks)
        self.recorder = mocks

    def RegisterResource(self, request: Any) -> Any:
        self.recorder.parents[request.name] = request.parent
        return super().RegisterResource(request)


def demo_config() -> dict[str, Any]:
    """The demo stack's project config (Pulumi.dev.yaml), keys without the project prefix."""
    doc = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    prefix = f"{PROJECT}:"
    return {k[len(prefix) :]: v for k, v in doc.items() if k.startswith(prefix)}


def as_pulumi_config(config: dict[str, Any]) -> dict[str, str]:
    """What the Pulumi engine hands a program: namespaced keys, structured values as JSON text."""
    return {f"{PROJECT}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items() if v is not None}


async def value(output: Any) -> Any:
    """The resolved value of an Output (or of plain data holding Outputs)."""
    return await pulumi.Output.from_input(output).future()


async def is_secret(output: Any) -> bool:
    return await pulumi.Output.from_input(output).is_secret()


class MockedTestCase(unittest.IsolatedAsyncioTestCase):
    """A fresh mock runtime per test, set inside the test's own event loop."""

    config: dict[str, Any] | None = None
    secret_keys = (f"{PROJECT}:consulToken", f"{PROJECT}:consulGossipKey")

    def setUp(self) -> None:
        self.mocks = MeshMocks()
        pulumi.runtime.set_mocks(
            self.mocks, project=PROJECT, stack=STACK, preview=False, monitor=ParentRecordingMonitor(self.mocks)
        )
        self.set_config(self.config or {})

    def set_config(self, config: dict[str, Any]) -> None:
        pulumi.runtime.set_all_config(as_pulumi_config(config), list(self.secret_keys))
