"""examples/consumer: a second project that builds on the mesh stack through a (mocked) StackReference.

The mocked stack reference answers with the outputs the mesh program itself produces under mocks,
so the two projects are tested against each other, not against a hand-written copy of the contract.
"""

from __future__ import annotations

import importlib.util
import json
import re
from types import ModuleType
from typing import Any

import pulumi

from components.identity import agent_read_role_name, agent_role_name, iam_path, login_prefix
from components.render import SECRET_MARKER, set_plan_mocks, unwrap, user_data_by_vm
from components.userdata import decode_user_data, unpack_cloud_config
from tests.mocks import ROOT, STACK, MeshMocks, MockedTestCase, is_secret, value
from tests.test_program import DEMO, GENERATED_GOSSIP, GENERATED_TOKEN, run_main

CONSUMER = "consul-tproxy-vms-consumer"
# The mocked mesh stack ran as STACK: its login prefix and IAM path are derived from that name.
MESH_STACK = f"organization/consul-tproxy-vms/{STACK}"
PREFIX = login_prefix(STACK)
SECRET_OUTPUTS = ["consulGossipKey", "consulManagementToken"]


def load_consumer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("consumer", ROOT / "examples/consumer/consumer.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class StackReferenceMocks(MeshMocks):
    """The mesh stack's outputs behind `pulumi.StackReference`, secrets named as the engine does."""

    def __init__(self, mesh_outputs: dict[str, Any]) -> None:
        super().__init__()
        self.mesh_outputs = mesh_outputs
        self.references: list[str] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        if args.typ == "pulumi:pulumi:StackReference":
            self.references.append(args.inputs["name"])
            return args.inputs["name"], {
                "name": args.inputs["name"],
                "outputs": self.mesh_outputs,
                "secretOutputNames": SECRET_OUTPUTS,
            }
        return super().new_resource(args)


class Consumer(MockedTestCase):
    config = DEMO

    def set_plan_mocks_and_config(self) -> None:
        self.mocks = MeshMocks()
        set_plan_mocks(self.mocks, STACK)
        self.set_config(DEMO)

    async def consume(self, config: dict[str, Any] | None = None) -> dict[str, Any]:
        self.set_plan_mocks_and_config()
        mesh_outputs = await value(run_main())
        self.mesh_outputs = mesh_outputs
        self.mocks = StackReferenceMocks(json.loads(json.dumps(mesh_outputs)))
        set_plan_mocks(self.mocks, STACK)
        given = {"meshStack": MESH_STACK, **(config or {})}
        pulumi.runtime.set_all_config(
            {f"{CONSUMER}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in given.items()}
        )
        self.outputs = load_consumer().main()
        return await value(self.outputs)

    async def test_reads_the_mesh_stack_and_adds_one_mesh_vm(self) -> None:
        outputs = await self.consume()
        assert self.mocks.references == [MESH_STACK]
        assert outputs["service"]["virtualHostname"] == "reports.virtual.consul"
        assert outputs["service"]["port"] == 9400
        (instance,) = self.mocks.of_type("aws:ec2/instance:Instance")
        assert instance.name == "reports-instance"
        assert instance.inputs["subnetId"] == "network-subnet-0-id"
        assert instance.inputs["vpcSecurityGroupIds"] == ["reports-sg-id", "network-members-id"]
        assert outputs["service"]["nodeName"] == "reports-reports-instance-id"
        # No token is created or read: the VM logs in to the mesh stack's auth methods at boot, and
        # gets the roles their binding rules name for its service, with the mesh stack's prefix.
        assert not self.mocks.of_type("consul:index/aclToken:AclToken")
        assert not [c for c in self.mocks.calls if "getAclTokenSecretId" in c.token]
        roles = {r.name: r.inputs for r in self.mocks.of_type("consul:index/aclRole:AclRole")}
        assert roles == {
            "reports-agent-role": {**roles["reports-agent-role"], "name": agent_role_name(PREFIX, "reports")},
            "reports-agent-read-role": {
                **roles["reports-agent-read-role"],
                "name": agent_read_role_name(PREFIX, "reports"),
            },
        }
        (role,) = self.mocks.of_type("aws:iam/role:Role")
        assert role.inputs["path"] == iam_path(STACK) == self.mesh_outputs["consulLogin"]["iamPath"]
        assert role.inputs["tags"]["consul-tproxy-vms.service"] == "reports"

    async def test_the_vm_joins_the_mesh_stacks_cluster_as_its_own_vms_do(self) -> None:
        await self.consume()
        files = unpack_cloud_config(decode_user_data(user_data_by_vm(self.mocks)["reports"]))
        hcl = files["/etc/consul.d/consul.hcl"]
        assert (
            f'retry_join  = ["provider=aws tag_key=consul-tproxy-vms-cluster tag_value=consul-tproxy-vms-{STACK}"]'
            in hcl
        )
        # No gossip key, node name or token in the user data: the login writes them at boot.
        assert not re.search(r"^\s*(encrypt|node_name)\s*=", hcl, re.M) and "tokens {" not in hcl
        assert "auto_encrypt {\n  tls = true\n}" in hcl
        # It logs in as the mesh stack's own VMs do: its methods, server ID, servers and KV entry.
        login = self.mesh_outputs["consulLogin"]
        assert files["/etc/consul.d/login.env"].splitlines()[2:] == [
            'MESH_SERVICE="reports"',
            f'LOGIN_METHODS="agent={PREFIX}-agent service={PREFIX}-service dns={PREFIX}-dns"',
            f'LOGIN_SERVER_ID="{login["serverId"]}"',
            f'LOGIN_HTTP_ADDRS="{" ".join(login["httpAddrs"])}"',
            'CONSUL_CACERT="/etc/consul.d/ca.pem"',
            'CONSUL_TLS_SERVER_NAME="server.dc1.consul"',
            f'GOSSIP_KEY_PATH="{login["gossipKeyPath"]}"',
        ]
        assert login["gossipKeyPath"] == f"consul-tproxy-vms/{PREFIX}/gossip-key"
        (policy,) = [p for p in self.mocks.of_type("consul:index/aclPolicy:AclPolicy") if p.name == "reports-agent"]
        assert f'key "{login["gossipKeyPath"]}"' in policy.inputs["rules"]
        assert files["/etc/consul.d/ca.pem"].split("\n")[1] == "consul-server-ca"
        assert "CONSUL_GRPC_ADDR=127.0.0.1:8502" in files["/etc/envoy/reports.env"]
        assert 'packages:\n  - ["consul", "1.22.1-*"]' in decode_user_data(user_data_by_vm(self.mocks)["reports"])

    async def test_consul_resources_go_through_a_provider_built_from_the_references_secret_token(self) -> None:
        await self.consume()
        (provider,) = self.mocks.of_type("pulumi:providers:consul")
        assert (provider.inputs["address"], provider.inputs["scheme"]) == ("203.0.113.147:8501", "https")
        assert SECRET_MARKER in provider.inputs["token"]
        assert unwrap(provider.inputs["token"]) == GENERATED_TOKEN
        resources = [r for r in self.mocks.resources if r.typ.startswith("consul:index/")]
        # the agent and agent-read policies and roles, service-defaults, one intentions entry
        assert sorted(r.name for r in resources) == [
            "intentions-reports",
            "reports-agent",
            "reports-agent-read",
            "reports-agent-read-role",
            "reports-agent-role",
            "reports-defaults",
        ]
        for resource in resources:
            assert (resource.provider or "").endswith("$pulumi:providers:consul::consul::consul-id"), resource.name

    async def test_it_owns_only_the_intentions_to_its_own_service(self) -> None:
        outputs = await self.consume({"allowFrom": ["web", "api"]})
        (entry,) = self.mocks.of_type("consul:index/configEntryServiceIntentions:ConfigEntryServiceIntentions")
        assert entry.inputs["name"] == "reports"
        assert [(s["name"], s["action"]) for s in entry.inputs["sources"]] == [("api", "allow"), ("web", "allow")]
        assert outputs["intentions"] == [
            {"source": "api", "destination": "reports", "action": "allow"},
            {"source": "web", "destination": "reports", "action": "allow"},
        ]
        (defaults,) = self.mocks.of_type("consul:index/configEntry:ConfigEntry")
        assert (defaults.inputs["kind"], defaults.inputs["name"]) == ("service-defaults", "reports")

    async def test_secrets_from_the_reference_stay_secret_and_out_of_the_user_data(self) -> None:
        await self.consume()
        service = self.outputs["service"]
        for key in ("instanceId", "privateIp", "virtualHostname"):
            assert not await is_secret(service[key])
        text = json.dumps(await value(self.outputs))
        assert "GENERATED-" not in text and "SECRET-" not in text
        (instance,) = self.mocks.of_type("aws:ec2/instance:Instance")
        assert SECRET_MARKER not in json.dumps(instance.inputs["userDataBase64"])
        user_data = decode_user_data(user_data_by_vm(self.mocks)["reports"])
        for secret in (GENERATED_TOKEN, GENERATED_GOSSIP, "GENERATED-", "PRIVATE KEY"):
            assert secret not in user_data, secret

    async def test_a_mesh_stack_name_that_does_not_match_its_login_output_is_refused(self) -> None:
        with self.assertRaisesRegex(ValueError, r"consulLogin output has prefix 'consul-tproxy-vms-test'"):
            await self.consume({"meshStack": "organization/consul-tproxy-vms/prod"})

    async def test_bad_config_fails_before_any_resource(self) -> None:
        with self.assertRaisesRegex(pulumi.RunError, r"services.reports.port: 8500 is reserved"):
            await self.consume({"port": 8500})
        with self.assertRaisesRegex(pulumi.RunError, r"allowFrom\[0\]: 'Web!' is not another service's name"):
            await self.consume({"allowFrom": ["Web!"]})
        assert self.mocks.resources == []
