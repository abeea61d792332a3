"""The component package (provider/, consul_tproxy_vms.package): its schema, built offline by the SDK's
analyzer as `pulumi package get-schema ./provider` would, and the components under mocks.

No Pulumi CLI: ComponentProvider runs the same analyzer the plugin host runs.
"""

from __future__ import annotations

import ast
import json
import unittest
from pathlib import Path
from typing import Any

import pulumi
import yaml
from consul_tproxy_vms import identity, package
from consul_tproxy_vms.consul_server import auto_join
from consul_tproxy_vms.package import MeshIntentions, MeshService, MeshServiceError
from consul_tproxy_vms.program import join_tag_value
from consul_tproxy_vms.render import PlanMocks, plan, plan_spec, set_plan_mocks, settle, unwrap
from consul_tproxy_vms.spec import MeshSpecError
from hypothesis import given, settings
from hypothesis import strategies as st
from pulumi.provider.experimental.component import ComponentProvider

ROOT = Path(__file__).resolve().parent.parent
PROVIDER = ROOT / "provider"
PKG = "consul-tproxy-vms"
MESH_SERVICE = f"{PKG}:index:MeshService"
MESH_INTENTIONS = f"{PKG}:index:MeshIntentions"
STACK = "test"

# schema name -> (type or $ref, plain?, required?) of every documented input.
MESH_SERVICE_INPUTS: dict[str, tuple[str, bool, bool]] = {
    "serviceName": ("string", True, True),
    "port": ("integer", True, True),
    "protocol": ("string", True, False),
    "command": ("string", True, False),
    "packages": ("array", True, False),
    "healthCheckPath": ("string", True, False),
    "upstreams": ("array", True, False),
    "instanceType": ("string", True, False),
    "instances": ("integer", True, False),
    "cluster": (f"#/types/{PKG}:index:ConsulCluster", True, True),
    "login": (f"#/types/{PKG}:index:ConsulLogin", True, True),
    "subnetId": ("string", False, True),
    "subnetIds": ("array", False, False),
    "vpcId": ("string", False, True),
    "meshSecurityGroupId": ("string", False, True),
    "adminCidrs": ("array", True, False),
    "amiId": ("string", False, False),
    "keyName": ("string", True, False),
    "consulVersion": ("string", False, True),
    "envoyVersion": ("string", False, True),
    "tags": ("object", True, False),
}
# A lone VM's instance, addresses and node; a group's name; always the count and the hostname.
MESH_SERVICE_OUTPUTS = {"instanceId", "privateIp", "publicIp", "nodeName", "groupName", "instances", "virtualHostname"}
MESH_SERVICE_REQUIRED_OUTPUTS = {"instances", "virtualHostname"}
TYPES: dict[str, dict[str, tuple[str, bool, bool]]] = {
    "ConsulCluster": {
        "datacenter": ("string", False, True),
        "retryJoin": ("array", False, True),
        "caPem": ("string", False, False),
        "cloudAutoJoin": ("boolean", True, False),
    },
    "ConsulLogin": {
        "prefix": ("string", True, True),
        "iamPath": ("string", True, True),
        "serverId": ("string", False, True),
        "httpAddrs": ("array", False, True),
        "gossipKeyPath": ("string", False, False),
    },
    "Intention": {
        "source": ("string", True, True),
        "destination": ("string", True, True),
        "action": ("string", True, True),
        "description": ("string", True, False),
    },
}


def build_schema() -> dict[str, Any]:
    return json.loads(ComponentProvider(package.COMPONENTS, PKG, version="0.3.0").schema)


def kind(prop: dict[str, Any]) -> str:
    return prop.get("type") or prop["$ref"]


class Schema(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.schema = build_schema()

    def check_properties(self, where: str, props: dict, required: list, expected: dict) -> None:
        self.assertEqual(set(props), set(expected), where)
        for name, (typ, plain, needed) in expected.items():
            prop = props[name]
            self.assertEqual(kind(prop), typ, f"{where}.{name}")
            self.assertEqual(bool(prop.get("plain")), plain, f"{where}.{name} plain")
            self.assertEqual(name in required, needed, f"{where}.{name} required")
            self.assertGreater(len(prop.get("description") or ""), 10, f"{where}.{name} has no description")
            self.assertNotIn("\n    ", prop["description"], f"{where}.{name}: source indentation in its description")

    def test_package_and_tokens(self) -> None:
        self.assertEqual(self.schema["name"], PKG)
        self.assertEqual(self.schema["version"], "0.3.0")
        self.assertEqual(set(self.schema["resources"]), {MESH_SERVICE, MESH_INTENTIONS})
        for token in (MESH_SERVICE, MESH_INTENTIONS):
            resource = self.schema["resources"][token]
            self.assertTrue(resource["isComponent"])
            self.assertIn("Consul provider", resource["description"])
        self.assertEqual(set(self.schema["types"]), {f"{PKG}:index:{name}" for name in TYPES})

    def test_mesh_service_inputs(self) -> None:
        resource = self.schema["resources"][MESH_SERVICE]
        self.check_properties(
            "MeshService", resource["inputProperties"], resource["requiredInputs"], MESH_SERVICE_INPUTS
        )
        for name in ("packages", "upstreams", "adminCidrs"):
            self.assertEqual(resource["inputProperties"][name]["items"]["type"], "string")
        self.assertEqual(resource["inputProperties"]["tags"]["additionalProperties"]["type"], "string")

    def test_mesh_service_outputs(self) -> None:
        resource = self.schema["resources"][MESH_SERVICE]
        self.assertEqual(set(resource["properties"]), MESH_SERVICE_OUTPUTS)
        self.assertEqual(set(resource["required"]), MESH_SERVICE_REQUIRED_OUTPUTS)
        for name, prop in resource["properties"].items():
            self.assertEqual(prop["type"], "integer" if name == "instances" else "string", name)
            self.assertNotIn("plain", prop, name)
            self.assertTrue(prop.get("description"), name)

    def test_types(self) -> None:
        for name, expected in TYPES.items():
            typ = self.schema["types"][f"{PKG}:index:{name}"]
            self.assertEqual(typ["type"], "object")
            self.assertTrue(typ.get("description"), name)
            self.check_properties(name, typ["properties"], typ.get("required", []), expected)

    def test_mesh_intentions(self) -> None:
        resource = self.schema["resources"][MESH_INTENTIONS]
        intentions = resource["inputProperties"]["intentions"]
        self.assertEqual(resource["requiredInputs"], ["intentions"])
        self.assertEqual(intentions["items"]["$ref"], f"#/types/{PKG}:index:Intention")
        self.assertEqual(set(resource["properties"]), {"applied"})


class ProviderFolder(unittest.TestCase):
    """provider/: what `pulumi package add <repo>/provider@<tag>` reads."""

    def test_plugin_manifest(self) -> None:
        self.assertEqual(yaml.safe_load((PROVIDER / "PulumiPlugin.yaml").read_text()), {"runtime": "python"})

    def test_entry_point_hosts_the_components(self) -> None:
        tree = ast.parse((PROVIDER / "__main__.py").read_text())
        calls = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "component_provider_host"
        ]
        self.assertEqual(len(calls), 1)
        self.assertEqual([ast.unparse(a) for a in calls[0].args], ["COMPONENTS", "PACKAGE"])
        self.assertEqual(package.PACKAGE, PKG)
        self.assertEqual(package.COMPONENTS, [MeshService, MeshIntentions])

    def test_requirements_install_this_repository(self) -> None:
        lines = [
            line.strip()
            for line in (PROVIDER / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        self.assertEqual(lines, [".."])
        self.assertTrue((PROVIDER / ".." / "pyproject.toml").is_file())


def mesh_outputs() -> dict[str, Any]:
    """What a mesh stack exports, as a consumer reads it (examples of the real values' shapes)."""
    return {
        "consulDatacenter": "dc1",
        "consulRetryJoin": ["provider=aws tag_key=consul-tproxy-vms-join tag_value=prod"],
        "consulCaPem": "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
        "consulLogin": {
            "prefix": "consul-tproxy-vms-prod",
            "iamPath": "/consul-tproxy-vms/prod/",
            "serverId": "consul-tproxy-vms-prod",
            "httpAddrs": ["https://10.42.0.10:8501"],
            "gossipKeyPath": "consul-tproxy-vms-prod/gossip-key",
        },
        "subnetIds": ["subnet-0aaaaaaaaaaaaaaaa"],
        "vpcId": "vpc-0123456789abcdef0",
        "meshSecurityGroupId": "sg-0123456789abcdef0",
        "consulVersion": "1.22.1",
        "envoyVersion": "1.35.3",
    }


def service_args(**overrides: Any) -> dict[str, Any]:
    """MeshServiceArgs (Python names) for a service `reports`, inputs as Outputs like stack references."""
    out = {k: pulumi.Output.from_input(v) for k, v in mesh_outputs().items()}
    login = out["consulLogin"]
    args: dict[str, Any] = {
        "service_name": "reports",
        "port": 9400,
        "cluster": {
            "datacenter": out["consulDatacenter"],
            "retry_join": out["consulRetryJoin"],
            "ca_pem": out["consulCaPem"],
            "cloud_auto_join": True,
        },
        "login": {
            "prefix": "consul-tproxy-vms-prod",
            "iam_path": "/consul-tproxy-vms/prod/",
            "server_id": login.apply(lambda v: v["serverId"]),
            "http_addrs": login.apply(lambda v: v["httpAddrs"]),
            "gossip_key_path": login.apply(lambda v: v["gossipKeyPath"]),
        },
        "subnet_id": out["subnetIds"].apply(lambda ids: ids[0]),
        "vpc_id": out["vpcId"],
        "mesh_security_group_id": out["meshSecurityGroupId"],
        "admin_cidrs": ["203.0.113.0/24"],
        "consul_version": out["consulVersion"],
        "envoy_version": out["envoyVersion"],
    }
    args.update(overrides)
    return args


class UnderMocks(unittest.IsolatedAsyncioTestCase):
    def setUp(self) -> None:
        self.mocks = PlanMocks()
        set_plan_mocks(self.mocks, STACK)

    def names(self, typ: str) -> list[str]:
        return [r.name for r in self.mocks.of_type(typ)]

    async def test_mesh_service_declares_a_mesh_vm(self) -> None:
        svc = MeshService("reports", service_args())
        instance_id, private_ip, node, host = await settle(
            pulumi.Output.all(svc.instance_id, svc.private_ip, svc.node_name, svc.virtual_hostname)
        )
        self.assertEqual(self.names(MESH_SERVICE), ["reports"])
        self.assertEqual(self.names(f"{PKG}:index:MeshVm"), ["reports"])
        self.assertEqual(self.mocks.parent_of[(f"{PKG}:index:MeshVm", "reports")], await settle(svc.urn))
        self.assertEqual(instance_id, "reports-instance-id")
        self.assertTrue(private_ip.startswith("10.42."))
        self.assertEqual(node, f"reports-{instance_id}")
        self.assertEqual(host, "reports.virtual.consul")
        (defaults,) = [
            r for r in self.mocks.of_type("consul:index/configEntry:ConfigEntry") if r.name.startswith("reports")
        ]
        self.assertEqual(json.loads(defaults.inputs["configJson"]), {"Protocol": "http"})
        (instance,) = self.mocks.of_type("aws:ec2/instance:Instance")
        self.assertEqual(instance.inputs["subnetId"], "subnet-0aaaaaaaaaaaaaaaa")
        roles = {r.inputs["name"] for r in self.mocks.of_type("consul:index/aclRole:AclRole")}
        self.assertTrue(all(role.startswith("consul-tproxy-vms-prod") for role in roles), roles)

    async def test_a_mesh_service_of_many_instances_is_a_group_over_the_subnets(self) -> None:
        out = mesh_outputs()
        svc = MeshService("reports", service_args(instances=3, subnet_ids=out["subnetIds"]))
        group_name, instances = await settle(pulumi.Output.all(svc.group_name, svc.instances))
        self.assertEqual(instances, 3)
        self.assertTrue(group_name.startswith("consul-tproxy-vms-prod-reports-"), group_name)
        self.assertIsNone(svc.instance_id)
        self.assertEqual(self.mocks.of_type("aws:ec2/instance:Instance"), [])
        (group,) = self.mocks.of_type("aws:autoscaling/group:Group")
        self.assertEqual(unwrap(group.inputs["vpcZoneIdentifiers"]), await settle(out["subnetIds"]))
        self.assertEqual(unwrap(group.inputs["desiredCapacity"]), 3)

    def test_a_mesh_service_of_many_instances_needs_the_subnets(self) -> None:
        with self.assertRaises(MeshServiceError) as caught:
            MeshService("reports", service_args(instances=3))
        self.assertIn("subnetIds: is missing", str(caught.exception))
        with self.assertRaises(MeshServiceError) as caught:
            MeshService("reports", service_args(instances=0, subnet_ids=["subnet-0aaaaaaaaaaaaaaaa"]))
        self.assertIn("instances: 0 is out of range", str(caught.exception))

    async def test_construct_through_the_component_provider(self) -> None:
        """What the plugin host does for a TypeScript program: camelCase inputs, integers as floats."""
        outputs = mesh_outputs()
        login = outputs["consulLogin"]
        inputs = {
            "serviceName": "reports",
            "port": 9400.0,
            "protocol": "http2",
            "cluster": {
                "datacenter": outputs["consulDatacenter"],
                "retryJoin": outputs["consulRetryJoin"],
                "caPem": outputs["consulCaPem"],
            },
            "login": login,
            "subnetId": outputs["subnetIds"][0],
            "vpcId": outputs["vpcId"],
            "meshSecurityGroupId": outputs["meshSecurityGroupId"],
            "consulVersion": outputs["consulVersion"],
            "envoyVersion": outputs["envoyVersion"],
        }
        provider = ComponentProvider(package.COMPONENTS, PKG)
        result = provider.construct("reports", MESH_SERVICE, inputs, pulumi.ResourceOptions())
        state = await settle(pulumi.Output.all(**result.state))
        # One VM of its own: no group.
        self.assertEqual(set(state), MESH_SERVICE_OUTPUTS - {"groupName"})
        self.assertEqual((state["virtualHostname"], state["instances"]), ("reports.virtual.consul", 1))
        self.assertEqual(self.names(f"{PKG}:index:MeshVm"), ["reports"])
        (defaults,) = [
            r for r in self.mocks.of_type("consul:index/configEntry:ConfigEntry") if r.name.startswith("reports")
        ]
        self.assertEqual(json.loads(defaults.inputs["configJson"]), {"Protocol": "http2"})

    async def test_mesh_intentions(self) -> None:
        intentions = MeshIntentions(
            "reports-intentions",
            {"intentions": [{"source": "web", "destination": "reports", "action": "allow"}]},
        )
        applied = await settle(intentions.applied)
        self.assertEqual(applied, [{"source": "web", "destination": "reports", "action": "allow"}])
        self.assertEqual(
            self.names("consul:index/configEntryServiceIntentions:ConfigEntryServiceIntentions"),
            ["reports-intentions-reports"],
        )

    def refused(self, args: dict[str, Any]) -> str:
        with self.assertRaises(MeshServiceError) as caught:
            MeshService("reports", args)
        return str(caught.exception)

    async def test_bad_service_inputs_are_refused_with_their_key(self) -> None:
        message = self.refused(service_args(port=0, command="relative/path", packages=["consul"]))
        self.assertIn("MeshService reports: invalid inputs (3 problems)", message)
        self.assertIn("port: 0", message)
        self.assertIn("command: ", message)
        self.assertIn("packages[0]: ", message)
        self.assertNotIn("services.", message)
        self.assertIn("serviceName: ", self.refused(service_args(service_name="Not_A_Label")))
        self.assertIn("protocol: ", self.refused(service_args(protocol="udp")))
        self.assertIn("adminCidrs[0]: ", self.refused(service_args(admin_cidrs=["10.0.0.1/8"])))
        self.assertIn("envoyVersion: ", self.refused(service_args(consul_version="1.22.1", envoy_version="1.20.0")))
        self.assertEqual(self.mocks.of_type(f"{PKG}:index:MeshVm"), [])

    async def test_outputs_in_plain_inputs_are_refused(self) -> None:
        message = self.refused(service_args(port=pulumi.Output.from_input(9400)))
        self.assertIn("port: must be a plain value, not an Output", message)
        args = service_args()
        args["login"] = {**args["login"], "prefix": pulumi.Output.from_input("consul-tproxy-vms-prod")}
        self.assertIn("login.prefix: must be a plain value", self.refused(args))

    async def test_cloud_auto_join_is_required_with_an_output_retry_join(self) -> None:
        args = service_args()
        args["cluster"] = {k: v for k, v in args["cluster"].items() if k != "cloud_auto_join"}
        message = self.refused(args)
        self.assertIn("MeshService reports: invalid inputs (1 problem):", message)
        self.assertIn("cluster.cloudAutoJoin: must be set when cluster.retryJoin is an Output", message)

    async def test_bad_intentions_are_refused(self) -> None:
        with self.assertRaises(MeshServiceError) as caught:
            MeshIntentions(
                "bad",
                {
                    "intentions": [
                        {"source": "web", "destination": "web", "action": "allow"},
                        {"source": "web", "destination": "api", "action": "permit"},
                    ]
                },
            )
        message = str(caught.exception)
        self.assertIn("intentions[0]: names web as source and destination", message)
        self.assertIn("intentions[1].action: 'permit'", message)


KEY_PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIPrivateKeyBytes\n-----END EC PRIVATE KEY-----\n"
CA_PEM = mesh_outputs()["consulCaPem"]


def plain_args(cluster: dict[str, Any] | None = None, login: dict[str, Any] | None = None) -> dict[str, Any]:
    """MeshServiceArgs with the mesh's outputs as known (plain) values, as a TypeScript program passes
    them once read with getOutputDetails, with `cluster` and `login` fields replaced."""
    outputs = mesh_outputs()
    given = outputs["consulLogin"]
    return {
        "service_name": "reports",
        "port": 9400,
        "cluster": {
            "datacenter": "dc1",
            "retry_join": ["10.42.0.10"],
            "ca_pem": CA_PEM,
            "cloud_auto_join": False,
            **(cluster or {}),
        },
        "login": {
            "prefix": given["prefix"],
            "iam_path": given["iamPath"],
            "server_id": given["serverId"],
            "http_addrs": given["httpAddrs"],
            "gossip_key_path": given["gossipKeyPath"],
            **(login or {}),
        },
        "subnet_id": outputs["subnetIds"][0],
        "vpc_id": outputs["vpcId"],
        "mesh_security_group_id": outputs["meshSecurityGroupId"],
        "admin_cidrs": ["203.0.113.0/24"],
        "consul_version": outputs["consulVersion"],
        "envoy_version": outputs["envoyVersion"],
    }


HOSTILE_PLAIN_INPUTS = [
    ({"cluster": {"ca_pem": CA_PEM + KEY_PEM}}, "cluster.caPem: contains a private key"),
    ({"cluster": {"ca_pem": "MIIB...no PEM"}}, "cluster.caPem: is not a PEM certificate"),
    ({"cluster": {"ca_pem": CA_PEM.replace("\n", "\r\n")}}, "cluster.caPem: has control characters"),
    ({"login": {"http_addrs": ["http://10.42.0.10:8500"]}}, 'login.httpAddrs[0]: "http://10.42.0.10:8500" must'),
    ({"login": {"http_addrs": []}}, "login.httpAddrs: [] is empty"),
    ({"login": {"http_addrs": ["https://10.42.0.10:8501\n"]}}, "login.httpAddrs[0]: "),
    ({"login": {"http_addrs": ["https://10.42.0.10:99999"]}}, "has a port outside 1-65535"),
    ({"login": {"http_addrs": "https://10.42.0.10:8501"}}, "login.httpAddrs: 'https://10.42.0.10:8501' must be a"),
    ({"cluster": {"retry_join": ["2001:db8::1"]}}, 'cluster.retryJoin[0]: "2001:db8::1" is an IPv6 address'),
    ({"cluster": {"retry_join": ["[2001:db8::1]:8301"]}}, "cluster.retryJoin[0]: "),
    ({"cluster": {"retry_join": ["10.42.0.10\nbind_addr = 0.0.0.0"]}}, "cluster.retryJoin[0]: "),
    ({"cluster": {"datacenter": "dc1\n"}}, "cluster.datacenter: "),
    ({"login": {"iam_path": "/consul-tproxy-vms/other/"}}, "login.iamPath: '/consul-tproxy-vms/other/' is not"),
    ({"login": {"iam_path": "consul-tproxy-vms/prod"}}, "login.iamPath: 'consul-tproxy-vms/prod' is not"),
    ({"login": {"iam_path": "/consul-tproxy-vms/prod/\n"}}, "login.iamPath: "),
    ({"login": {"iam_path": "/a b/"}}, "login.iamPath: "),
    ({"login": {"prefix": "consul-tproxy-vms-prod\n"}}, "login.prefix: "),
    ({"login": {"prefix": "someone-else-prod"}}, "login.prefix: 'someone-else-prod' is not a mesh stack's"),
    ({"login": {"server_id": "consul-tproxy-vms-prod\nX=1"}}, "login.serverId: "),
    ({"login": {"gossip_key_path": "a/b\nc"}}, "login.gossipKeyPath: "),
    ({"login": {"gossip_key_path": "../../acl/token"}}, "login.gossipKeyPath: "),
]


class PlainInputs(unittest.IsolatedAsyncioTestCase):
    """MeshService's known inputs are refused before anything is declared, each naming its input."""

    def setUp(self) -> None:
        self.mocks = PlanMocks()
        set_plan_mocks(self.mocks, STACK)

    def refused(self, args: dict[str, Any]) -> str:
        with self.assertRaises(MeshServiceError) as caught:
            MeshService("reports", args)
        self.assertEqual([r for r in self.mocks.resources if r.custom], [])
        self.assertEqual(self.mocks.of_type(f"{PKG}:index:MeshVm"), [])
        return str(caught.exception)

    async def test_the_plain_mesh_outputs_are_accepted(self) -> None:
        svc = MeshService("reports", plain_args())
        self.assertEqual(await settle(svc.virtual_hostname), "reports.virtual.consul")

    async def test_each_hostile_plain_input_is_refused_naming_it(self) -> None:
        for change, expected in HOSTILE_PLAIN_INPUTS:
            with self.subTest(change=change):
                self.mocks.resources.clear()
                message = self.refused(plain_args(**change))
                self.assertIn("MeshService reports: invalid inputs (1 problem):", message)
                self.assertIn(expected, message)

    async def test_a_private_key_given_as_ca_pem_is_never_echoed(self) -> None:
        message = self.refused(plain_args(cluster={"ca_pem": KEY_PEM}))
        self.assertNotIn("PrivateKeyBytes", message)

    async def test_a_private_key_in_an_output_ca_pem_fails_before_the_vm_gets_its_user_data(self) -> None:
        svc = MeshService("reports", plain_args(cluster={"ca_pem": pulumi.Output.from_input(KEY_PEM)}))
        # Pulumi wraps what an apply raises in a ValueError naming the input (user_data_base64).
        with self.assertRaisesRegex((MeshSpecError, ValueError), "cluster.caPem: contains a private key"):
            await settle(svc.instance_id)
        self.assertEqual(self.mocks.of_type("aws:ec2/instance:Instance"), [])

    async def test_an_output_for_the_whole_cluster_or_login_is_named_as_such(self) -> None:
        outputs = mesh_outputs()
        for key, value in (
            ("cluster", pulumi.Output.from_input({"datacenter": "dc1", "retry_join": ["10.42.0.10"]})),
            ("login", pulumi.Output.from_input(outputs["consulLogin"])),
        ):
            with self.subTest(key=key):
                self.mocks.resources.clear()
                message = self.refused({**plain_args(), key: value})
                self.assertIn(f"{key}: is one Output: give its fields (", message)
                self.assertNotIn("is missing", message)


def mesh_login(stack: str, created_servers: bool, addr: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """MeshService's cluster and login as the mesh program exports them for `stack` (program.build:
    the consulLogin output, consulRetryJoin), from the same functions it uses."""
    prefix = identity.login_prefix(stack)
    login = {
        "prefix": prefix,
        "iam_path": identity.iam_path(stack),
        "server_id": prefix,
        "http_addrs": [addr],
        "gossip_key_path": identity.gossip_key_path(prefix) if created_servers else "",
    }
    join = [auto_join(join_tag_value(stack))] if created_servers else [addr.removeprefix("https://").split(":")[0]]
    return {"datacenter": "dc1", "retry_join": join, "ca_pem": CA_PEM, "cloud_auto_join": created_servers}, login


@settings(max_examples=200, deadline=None)
@given(
    stack=st.from_regex(r"[A-Za-z0-9_.-]{1,100}", fullmatch=True),
    created_servers=st.booleans(),
    address=st.ip_addresses(v=4).map(str),
    port=st.integers(1, 65535),
)
def test_every_valid_mesh_stacks_consul_login_is_accepted(
    stack: str, created_servers: bool, address: str, port: int
) -> None:
    cluster, login = mesh_login(stack, created_servers, f"https://{address}:{port}")
    problems: list[str] = []
    package._check_inputs({**plain_args(), "cluster": cluster, "login": login}, problems)
    assert problems == []


def test_the_mesh_programs_own_outputs_are_accepted_as_plain_inputs() -> None:
    for config in (DEMO_MESH, {**DEMO_MESH, **EXISTING_CLUSTER}):
        spec, with_gossip = plan_spec(config, "prod.eu")
        _, outputs = plan(spec, with_gossip, "prod.eu")
        given = outputs["consulLogin"]
        login = {
            "prefix": given["prefix"],
            "iam_path": given["iamPath"],
            "server_id": given["serverId"],
            "http_addrs": given["httpAddrs"],
            "gossip_key_path": given["gossipKeyPath"],
        }
        cluster = {
            "datacenter": outputs["consulDatacenter"],
            "retry_join": outputs["consulRetryJoin"],
            "ca_pem": outputs["consulCaPem"],
            "cloud_auto_join": spec.creates_servers,
        }
        problems: list[str] = []
        package._check_inputs({**plain_args(), "cluster": cluster, "login": login}, problems)
        assert problems == [], (config, problems)


DEMO_MESH = {"services": {"web": {"port": 9090}}, "adminCidrs": ["203.0.113.0/24"]}
EXISTING_CLUSTER = {
    "adminCidrs": [],
    "consulHttpAddr": "https://10.0.1.10:8501",
    "consulRetryJoin": ["10.0.1.10"],
    "consulCaPem": CA_PEM,
    "consulToken": "token",
}
