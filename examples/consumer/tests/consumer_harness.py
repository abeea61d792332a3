"""Helpers for the consumer's tests: its program under Pulumi mocks, against what the mesh program exports.

Everything comes from the installed package consul_tproxy_vms (its mocks and the mesh program
itself), so these tests run in this folder's own venv, copied anywhere; nothing here needs the
consul-tproxy-vms repository's own tests.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from consul_tproxy_vms.render import SECRET_OUTPUTS, PlanMocks, plan, plan_spec, set_plan_mocks, settle

PROJECT_DIR = Path(__file__).resolve().parent.parent
# The consumer's program (consumer.py) is a module of its project folder, as Pulumi runs it.
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

import consumer  # noqa: E402

MESH_STACK_NAME = "dev"
MESH_STACK = f"organization/consul-tproxy-vms/{MESH_STACK_NAME}"
# The mesh project's demo stack: web -> api, Consul servers created by the stack.
MESH_DEMO: dict[str, Any] = {
    "datacenter": "dc1",
    "adminCidrs": ["deployer"],
    "services": {"web": {"port": 9090, "upstreams": ["api"]}, "api": {"port": 9091}},
    "intentions": [{"source": "web", "destination": "api", "action": "allow", "description": "web calls api"}],
}
# The same services on an existing Consul cluster: agents join by address, no servers created.
MESH_EXISTING: dict[str, Any] = {
    **MESH_DEMO,
    "adminCidrs": [],
    "consulHttpAddr": "https://10.0.1.10:8501",
    "consulRetryJoin": ["10.0.1.10"],
    "consulCaPem": "-----BEGIN CERTIFICATE-----\nMIIBexisting\n-----END CERTIFICATE-----\n",
    "consulToken": "00000000-0000-4000-8000-management00",
    "vpcId": "vpc-0aaaaaaaaaaaaaaaa",
    "subnetIds": ["subnet-0aaaaaaaaaaaaaaaa"],
}


def mesh_outputs(mesh_config: Mapping[str, Any], stack: str = MESH_STACK_NAME) -> dict[str, Any]:
    """The outputs the mesh program exports for `mesh_config`, run under the package's mocks, as a
    stack reference hands them over (JSON: numbers may come back as floats)."""
    spec, with_gossip = plan_spec(mesh_config, stack)
    _, outputs = plan(spec, with_gossip, stack)
    return json.loads(json.dumps(outputs))


class ReferenceMocks(PlanMocks):
    """The package's mocks, with the mesh stack's outputs behind `pulumi.StackReference`."""

    def __init__(self, outputs: dict[str, Any]) -> None:
        super().__init__()
        self.mesh_outputs = outputs
        self.references: list[str] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        if args.typ == consumer.STACK_REFERENCE:
            self.references.append(args.inputs["name"])
            self.resources.append(args)
            return args.inputs["name"], {
                "name": args.inputs["name"],
                "outputs": self.mesh_outputs,
                "secretOutputNames": [k for k in SECRET_OUTPUTS if k in self.mesh_outputs],
            }
        return super().new_resource(args)

    def declared(self) -> list[pulumi.runtime.MockResourceArgs]:
        """Every resource but the stack reference (a read of the mesh stack, not a resource of ours)."""
        return [r for r in self.resources if r.typ != consumer.STACK_REFERENCE]


@dataclass
class Run:
    mocks: ReferenceMocks
    outputs: dict[str, Any] = field(default_factory=dict)


def dev_stack_config() -> dict[str, Any]:
    """This project's Pulumi.dev.yaml, keys without the namespace."""
    doc = yaml.safe_load((PROJECT_DIR / "Pulumi.dev.yaml").read_text())["config"]
    prefix = f"{consumer.PROJECT}:"
    return {k[len(prefix) :]: v for k, v in doc.items() if k.startswith(prefix)}


def run_consumer(config: Mapping[str, Any], outputs: dict[str, Any], stack: str = "dev") -> Run:
    """Run the consumer program under mocks with `config` (keys without the namespace) on top of a
    mesh stack that exported `outputs`. Raises what the program (or an apply of it) raises."""
    run = Run(ReferenceMocks(outputs))

    async def main() -> None:
        set_plan_mocks(run.mocks, stack)
        pulumi.runtime.set_all_config(
            {f"{consumer.PROJECT}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
        )
        run.outputs = await settle(consumer.main())

    try:
        asyncio.run(main())
    except BaseException as err:
        err.run = run  # type: ignore[attr-defined]  # what was declared before it failed
        raise
    return run
