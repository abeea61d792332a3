"""Each ComponentResource on its own, under Pulumi's mocks."""

from __future__ import annotations

import json
import shlex
from dataclasses import fields, replace
from typing import Any

import hcl2
import pulumi

from components import identity
from components.acl import Grant, agent_read_rules, agent_rules, dns_rules, parse_rules
from components.ec2 import AUTO_JOIN_POLICY
from components.intentions import ServiceIntentions, ServiceIntentionsArgs
from components.mesh_defaults import MeshDefaults, MeshDefaultsArgs
from components.mesh_vm import ConsulJoinArgs, LoginArgs, MeshVm, MeshVmArgs
from components.network import MeshNetwork, MeshNetworkArgs, offering_zones, offerings_query, placement_index
from components.render import SECRET_MARKER
from components.spec import PROJECT, IntentionSpec, ServiceSpec
from components.userdata import decode_user_data, unpack_cloud_config
from tests.helpers import CA_PEM
from tests.mocks import CONSUL_TOKEN, GOSSIP_KEY, STACK, MockedTestCase, generated_of, is_secret, value

PREFIX = identity.login_prefix(STACK)
IAM_PATH = identity.iam_path(STACK)
JOIN = ConsulJoinArgs(datacenter="dc1", retry_join=["10.0.1.10", "consul.internal"])
LOGIN = LoginArgs(prefix=PREFIX, iam_path=IAM_PATH, server_id=PREFIX, http_addrs=["https://10.0.1.10:8501"])
GOSSIP_PATH = identity.gossip_key_path(PREFIX)
AUTO_JOIN = "provider=aws tag_key=consul-server tag_value=dc1"
ACL_POLICY = "consul:index/aclPolicy:AclPolicy"
ACL_ROLE = "consul:index/aclRole:AclRole"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"


def vm_args(**overrides: Any) -> MeshVmArgs:
    args = MeshVmArgs(
        service=ServiceSpec(name="web", port=9090, upstreams=("api",)),
        consul_version="1.22.1",
        envoy_version="1.35.3",
        cluster=JOIN,
        login=LOGIN,
        subnet_id="subnet-0aaaaaaaaaaaaaaaa",
        vpc_id="vpc-0aaaaaaaaaaaaaaaa",
        mesh_security_group_id="sg-0mesh",
        admin_cidrs=("203.0.113.0/24",),
    )
    return replace(args, **overrides)


def env_of(text: str) -> dict[str, str]:
    """KEY=VALUE lines of an environment file, as systemd and the shell read them."""
    pairs = (shlex.split(line)[0] for line in text.splitlines() if line and not line.startswith("#"))
    return dict(pair.split("=", 1) for pair in pairs)


class MeshVmTest(MockedTestCase):
    async def make(self, name: str = "web", **overrides: Any) -> MeshVm:
        vm = MeshVm(name, vm_args(**overrides))
        await value([vm.instance_id, vm.private_ip, vm.node_name, vm.cloud_config])
        return vm

    async def test_children_are_parented_to_the_component_and_named_after_it(self) -> None:
        await self.make()
        children = [r for r in self.mocks.resources if r.name != "web"]
        assert children
        for child in children:
            assert child.name.startswith("web-"), child.name
            assert self.mocks.parents[child.name].endswith(f"${PROJECT}:index:MeshVm::web"), child.name
        component = self.mocks.named("web")
        assert component.typ == f"{PROJECT}:index:MeshVm" and component.custom is False
        # The Consul roles its logins bind are the VM's children too.
        consul = sorted(r.name for r in self.mocks.resources if r.typ.startswith("consul:"))
        assert consul == ["web-agent", "web-agent-read", "web-agent-read-role", "web-agent-role"]

    async def test_instance_requires_imdsv2_and_carries_plain_gzip_user_data(self) -> None:
        vm = await self.make()
        instance = self.mocks.named("web-instance")
        assert instance.inputs["metadataOptions"]["httpTokens"] == "required"
        assert instance.inputs["instanceType"] == "t3.small"
        assert instance.inputs["ami"] == "ami-0123456789abcdef0"  # looked up: newest Ubuntu LTS
        assert instance.inputs["iamInstanceProfile"] == "web-profile"  # the profile's name, as EC2 wants
        assert instance.inputs["vpcSecurityGroupIds"] == ["web-sg-id", "sg-0mesh"]
        assert instance.inputs["tags"]["consul-tproxy-vms:service"] == "web"
        assert instance.inputs["rootBlockDevice"]["encrypted"] is True
        assert instance.inputs["userDataReplaceOnChange"] is True
        # Sent to the engine in the clear: it holds nothing secret, so `preview --diff` may show it.
        user_data = instance.inputs["userDataBase64"]
        assert isinstance(user_data, str) and SECRET_MARKER not in user_data
        assert decode_user_data(user_data) == await value(vm.cloud_config)
        assert await is_secret(vm.cloud_config) is False
        assert "user_data" not in instance.inputs and "userData" not in instance.inputs

    async def test_ami_lookup_asks_for_canonicals_ubuntu_lts(self) -> None:
        await self.make()
        (lookup,) = [c for c in self.mocks.calls if c.token == "aws:ec2/getAmi:getAmi"]
        assert lookup.args["owners"] == ["099720109477"]
        assert lookup.args["filters"][0]["values"] == ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]

    async def test_a_vm_without_a_given_image_pins_the_newest_of_its_first_up(self) -> None:
        await self.make()
        (pin,) = self.mocks.of_type("pulumi-python:dynamic/consul-tproxy-vms:ImagePin")
        assert pin.name == "web-image" and pin.inputs["explicit"] is False and pin.inputs["generation"] == 0
        assert pin.inputs["candidate"] == "ami-0123456789abcdef0"
        assert self.mocks.named("web-instance").inputs["ami"] == pin.inputs["image_id"]
        assert self.mocks.parents["web-image"].endswith(f"${PROJECT}:index:MeshVm::web")

    async def test_given_ami_is_used_without_lookup(self) -> None:
        await self.make(ami_id="ami-0fedcba9876543210")
        assert self.mocks.named("web-instance").inputs["ami"] == "ami-0fedcba9876543210"
        assert not [c for c in self.mocks.calls if c.token == "aws:ec2/getAmi:getAmi"]

    async def test_declares_the_consul_roles_its_logins_bind_and_no_token(self) -> None:
        await self.make(login=replace(LOGIN, gossip_key_path=GOSSIP_PATH))
        policies = {r.name: r.inputs for r in self.mocks.of_type(ACL_POLICY)}
        roles = {r.name: r.inputs for r in self.mocks.of_type(ACL_ROLE)}
        assert sorted(policies) == ["web-agent", "web-agent-read"]
        assert sorted(roles) == ["web-agent-read-role", "web-agent-role"]
        # The names the auth methods' binding rules interpolate from the role's service tag.
        agent, agent_read = f"{PREFIX}-web-agent", f"{PREFIX}-web-agent-read"
        assert (agent, agent_read) == ("consul-tproxy-vms-test-web-agent", "consul-tproxy-vms-test-web-agent-read")
        assert policies["web-agent"]["name"] == roles["web-agent-role"]["name"] == agent
        assert policies["web-agent-read"]["name"] == roles["web-agent-read-role"]["name"] == agent_read
        assert roles["web-agent-role"]["policies"] == [agent]
        assert roles["web-agent-read-role"]["policies"] == [agent_read]
        assert policies["web-agent"]["rules"] == agent_rules("web", GOSSIP_PATH)
        assert policies["web-agent-read"]["rules"] == agent_read_rules("web")
        assert parse_rules(policies["web-agent"]["rules"]) == {
            Grant("node", "web-", True, "write"),
            Grant("service", "", True, "read"),
            Grant("agent", "web-", True, "read"),
            Grant("key", GOSSIP_PATH, False, "read"),
        }
        assert parse_rules(policies["web-agent-read"]["rules"]) == {Grant("agent", "web-", True, "read")}
        assert all(p["datacenters"] == ["dc1"] for p in policies.values())
        # No token is created, and no token secret is read: the VM logs in at boot.
        assert not self.mocks.of_type("consul:index/aclToken:AclToken")
        assert not [c for c in self.mocks.calls if c.token.startswith("consul:")]

    async def test_without_a_gossip_key_the_agent_policy_reads_no_key(self) -> None:
        await self.make()
        rules = self.mocks.named("web-agent").inputs["rules"]
        assert rules == agent_rules("web") and "key" not in {g.resource for g in parse_rules(rules)}

    async def test_user_data_holds_no_secret_and_no_node_name(self) -> None:
        vm = await self.make(cluster=replace(JOIN, ca_pem=CA_PEM), login=replace(LOGIN, gossip_key_path=GOSSIP_PATH))
        text = await value(vm.cloud_config)
        assert await is_secret(vm.cloud_config) is False
        files = unpack_cloud_config(text)
        consul_hcl = hcl2.loads(files["/etc/consul.d/consul.hcl"])
        for absent in ("node_name", "encrypt"):
            assert absent not in consul_hcl
        assert "tokens" not in consul_hcl["acl"][0]
        assert "token" not in hcl2.loads(files["/etc/consul.d/service-web.hcl"])["service"][0]
        # Where the VM logs in, and where it finds the gossip key: the KV path, never the key.
        assert env_of(files["/etc/consul.d/login.env"]) == {
            "MESH_SERVICE": "web",
            "LOGIN_METHODS": f"agent={PREFIX}-agent service={PREFIX}-service dns={PREFIX}-dns",
            # The roles each token must carry; the same names the VM's binding rules and roles use.
            "LOGIN_ROLES": f"agent={PREFIX}-web-agent service={PREFIX}-web-agent-read dns={PREFIX}-dns",
            "LOGIN_SERVER_ID": PREFIX,
            "LOGIN_HTTP_ADDRS": "https://10.0.1.10:8501",
            "CONSUL_CACERT": "/etc/consul.d/ca.pem",
            "CONSUL_TLS_SERVER_NAME": "server.dc1.consul",
            "GOSSIP_KEY_PATH": GOSSIP_PATH,
        }
        envoy = env_of(files["/etc/envoy/web.env"])
        assert envoy["CONSUL_HTTP_TOKEN_FILE"] == "/run/consul-login/service.token"
        assert "CONSUL_HTTP_TOKEN" not in envoy
        assert "SECRET-" not in text and GOSSIP_KEY not in text and CONSUL_TOKEN not in text
        assert generated_of("") not in text  # nothing the stack generates in secret either
        assert "/etc/systemd/system/consul-login.service" in files
        for plain in (vm.instance_id, vm.private_ip, vm.node_name, vm.virtual_hostname, vm.port):
            assert await is_secret(plain) is False

    async def test_node_name_is_the_service_and_the_instance_id(self) -> None:
        vm = await self.make()
        assert await value(vm.node_name) == "web-web-instance-id"
        assert await value(vm.instance_id) == "web-instance-id"
        summary = await value(vm.summary())
        assert summary["nodeName"] == "web-web-instance-id" and summary["instanceId"] == "web-instance-id"

    async def test_every_instance_of_a_service_gets_the_same_user_data(self) -> None:
        first = await self.make()
        first_text = await value(first.cloud_config)
        first_encoded = self.mocks.named("web-instance").inputs["userDataBase64"]
        # A separate run (fresh mocks): another instance of the same service, under another name.
        self.setUp()
        second = await self.make("web-b")
        assert await value(second.cloud_config) == first_text
        assert self.mocks.named("web-b-instance").inputs["userDataBase64"] == first_encoded
        assert await value(second.node_name) == "web-web-b-instance-id" != await value(first.node_name)

    async def test_join_and_login_settings_may_be_outputs_such_as_stack_references_give(self) -> None:
        cluster = ConsulJoinArgs(
            datacenter=pulumi.Output.from_input("dc2"),
            retry_join=pulumi.Output.from_input([AUTO_JOIN]),
            ca_pem=pulumi.Output.from_input(CA_PEM),
            cloud_auto_join=True,
        )
        login = LoginArgs(
            prefix=PREFIX,
            iam_path=IAM_PATH,
            server_id=pulumi.Output.from_input(PREFIX),
            http_addrs=pulumi.Output.from_input(["https://10.0.1.10:8501", "https://10.0.2.10:8501"]),
            gossip_key_path=pulumi.Output.from_input(GOSSIP_PATH),
        )
        vm = await self.make(cluster=cluster, login=login)
        files = unpack_cloud_config(await value(vm.cloud_config))
        assert f'retry_join  = ["{AUTO_JOIN}"]' in files["/etc/consul.d/consul.hcl"]
        assert 'datacenter  = "dc2"' in files["/etc/consul.d/consul.hcl"]
        assert "CONSUL_GRPC_ADDR=127.0.0.1:8502" in files["/etc/envoy/web.env"]
        assert files["/etc/consul.d/ca.pem"] == CA_PEM
        login_env = env_of(files["/etc/consul.d/login.env"])
        assert login_env["LOGIN_HTTP_ADDRS"] == "https://10.0.1.10:8501 https://10.0.2.10:8501"
        assert login_env["GOSSIP_KEY_PATH"] == GOSSIP_PATH
        assert self.mocks.named("web-agent").inputs["datacenters"] == ["dc2"]
        assert self.mocks.named("web-agent").inputs["rules"] == agent_rules("web", GOSSIP_PATH)
        assert sorted(p.name for p in self.mocks.of_type(ROLE_POLICY)) == ["web-auto-join", "web-login"]

    async def test_output_retry_join_needs_an_explicit_auto_join_choice(self) -> None:
        cluster = ConsulJoinArgs(datacenter="dc1", retry_join=pulumi.Output.from_input([AUTO_JOIN]))
        with self.assertRaisesRegex(ValueError, "cloud_auto_join must be set"):
            MeshVm("web", vm_args(cluster=cluster))

    async def test_security_group_admits_envoy_and_gossip_from_members_and_ssh_from_admins_only(self) -> None:
        await self.make(admin_cidrs=("203.0.113.0/24", "198.51.100.7/32"))
        rules = self.mocks.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        seen = sorted(
            (
                r.inputs["ipProtocol"],
                int(r.inputs["fromPort"]),
                r.inputs.get("referencedSecurityGroupId") or r.inputs["cidrIpv4"],
            )
            for r in rules
        )
        assert seen == [
            ("tcp", 22, "198.51.100.7/32"),
            ("tcp", 22, "203.0.113.0/24"),
            ("tcp", 8301, "sg-0mesh"),
            ("tcp", 21000, "sg-0mesh"),
            ("udp", 8301, "sg-0mesh"),
        ]
        # The application's port is reachable only through Envoy: no rule names it.
        assert all(int(r.inputs["fromPort"]) != 9090 for r in rules)
        assert all(r.inputs["fromPort"] == r.inputs["toPort"] for r in rules)

    async def test_no_admin_cidrs_means_no_ssh_rule(self) -> None:
        await self.make(admin_cidrs=())
        rules = self.mocks.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        assert rules and all(int(r.inputs["fromPort"]) != 22 for r in rules)

    async def test_iam_role_is_tagged_with_its_service_under_the_stacks_path_and_may_read_itself(self) -> None:
        await self.make()
        (role,) = self.mocks.of_type("aws:iam/role:Role")
        assert role.name == "web-role"
        assert role.inputs["path"] == IAM_PATH == "/consul-tproxy-vms/test/"
        assert role.inputs["tags"][identity.SERVICE_TAG] == "web"
        assert role.inputs["tags"]["consul-tproxy-vms:service"] == "web"
        (profile,) = self.mocks.of_type("aws:iam/instanceProfile:InstanceProfile")
        assert profile.name == "web-profile" and profile.inputs["role"] == "web-role"
        (login,) = self.mocks.of_type(ROLE_POLICY)
        assert login.name == "web-login" and login.inputs["role"] == "web-role-id"
        own_arn = f"arn:aws:iam::123456789012:role{IAM_PATH}web-role"
        assert json.loads(login.inputs["policy"]) == {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["iam:GetRole"], "Resource": [own_arn]}],
        }

    async def test_describe_instances_only_for_cloud_auto_join(self) -> None:
        await self.make()
        assert [p.name for p in self.mocks.of_type(ROLE_POLICY)] == ["web-login"]
        self.mocks.resources.clear()
        vm = MeshVm("api", vm_args(cluster=replace(JOIN, retry_join=[AUTO_JOIN])))
        await value(vm.instance_id)
        policies = {p.name: p for p in self.mocks.of_type(ROLE_POLICY)}
        assert sorted(policies) == ["api-auto-join", "api-login"]
        assert json.loads(policies["api-auto-join"].inputs["policy"]) == json.loads(AUTO_JOIN_POLICY)
        assert (
            json.loads(policies["api-auto-join"].inputs["policy"])["Statement"][0]["Action"] == "ec2:DescribeInstances"
        )

    def test_join_args_carry_no_gossip_key_and_vm_args_carry_the_login(self) -> None:
        assert "gossip_key" not in {f.name for f in fields(ConsulJoinArgs)}
        names = {f.name for f in fields(MeshVmArgs)}
        assert "login" in names and "dns_policy_name" not in names
        assert vm_args().login is LOGIN


class ServiceIntentionsTest(MockedTestCase):
    async def test_one_entry_per_destination_with_its_sources_and_actions(self) -> None:
        given = [
            IntentionSpec("web", "api", "allow"),
            IntentionSpec("batch", "api", "deny", "batch must use the queue"),
            IntentionSpec("api", "db", "allow"),
        ]
        component = ServiceIntentions("mesh", ServiceIntentionsArgs(intentions=given))
        applied = await value(component.applied)
        entries = {
            r.inputs["name"]: r
            for r in self.mocks.of_type("consul:index/configEntryServiceIntentions:ConfigEntryServiceIntentions")
        }
        assert sorted(entries) == ["api", "db"]
        assert entries["api"].inputs["sources"] == [
            {"name": "batch", "action": "deny", "type": "consul", "description": "batch must use the queue"},
            {"name": "web", "action": "allow", "type": "consul"},
        ]
        assert entries["db"].inputs["sources"] == [{"name": "api", "action": "allow", "type": "consul"}]
        assert entries["api"].name == "mesh-api"
        assert self.mocks.parents["mesh-api"].endswith(f"${PROJECT}:index:ServiceIntentions::mesh")
        # Applied = given, as a set: every intention maps to exactly one source entry.
        assert sorted(map(tuple, (d.values() for d in applied))) == sorted(
            (i.source, i.destination, i.action) for i in given
        )

    async def test_no_intentions_no_entries(self) -> None:
        component = ServiceIntentions("mesh", ServiceIntentionsArgs(intentions=[]))
        assert await value(component.applied) == []
        assert not self.mocks.of_type("consul:index/configEntryServiceIntentions:ConfigEntryServiceIntentions")


class MeshDefaultsTest(MockedTestCase):
    async def test_mesh_entry_service_defaults_and_dns_policy(self) -> None:
        component = MeshDefaults(
            "mesh",
            MeshDefaultsArgs(
                mesh_destinations_only=True,
                protocols={"web": "http", "db": "tcp"},
                dns_policy_name="p",
                datacenter="dc1",
            ),
        )
        assert await value(component.dns_policy_name) == "p"
        entries = {
            (r.inputs["kind"], r.inputs["name"]): json.loads(r.inputs["configJson"])
            for r in self.mocks.of_type("consul:index/configEntry:ConfigEntry")
        }
        assert entries == {
            ("mesh", "mesh"): {"TransparentProxy": {"MeshDestinationsOnly": True}},
            ("service-defaults", "db"): {"Protocol": "tcp"},
            ("service-defaults", "web"): {"Protocol": "http"},
        }
        (policy,) = self.mocks.of_type("consul:index/aclPolicy:AclPolicy")
        assert policy.inputs["rules"] == dns_rules()
        assert 'node_prefix "" {\n  policy = "read"' in dns_rules() and "write" not in dns_rules()
        assert policy.inputs["datacenters"] == ["dc1"]


class MeshNetworkTest(MockedTestCase):
    async def test_creates_a_vpc_with_public_subnets_one_per_zone(self) -> None:
        network = MeshNetwork(
            "net", MeshNetworkArgs(vpc_cidr="10.42.0.0/16", subnet_cidrs=("10.42.0.0/20", "10.42.16.0/20"))
        )
        assert await value([network.vpc_id, network.subnet_ids, network.mesh_security_group_id]) == [
            "net-vpc-id",
            ["net-subnet-0-id", "net-subnet-1-id"],
            "net-members-id",
        ]
        (vpc,) = self.mocks.of_type("aws:ec2/vpc:Vpc")
        assert vpc.inputs["cidrBlock"] == "10.42.0.0/16" and vpc.inputs["enableDnsHostnames"] is True
        subnets = self.mocks.of_type("aws:ec2/subnet:Subnet")
        assert [(s.inputs["cidrBlock"], s.inputs["availabilityZone"]) for s in subnets] == [
            ("10.42.0.0/20", "us-east-1a"),
            ("10.42.16.0/20", "us-east-1b"),
        ]
        assert all(s.inputs["mapPublicIpOnLaunch"] is True for s in subnets)
        (route,) = self.mocks.of_type("aws:ec2/route:Route")
        assert route.inputs["destinationCidrBlock"] == "0.0.0.0/0" and route.inputs["gatewayId"] == "net-igw-id"
        associations = self.mocks.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation")
        assert sorted(a.inputs["subnetId"] for a in associations) == ["net-subnet-0-id", "net-subnet-1-id"]
        assert all(a.inputs["routeTableId"] == "net-public-id" for a in associations)
        # Membership carries no rules: VMs' own groups admit members.
        assert not self.mocks.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        # Servers (a fixed set) take the subnets in turn; a VM's subnet comes from its name alone.
        assert [await value(network.subnet_at(i)) for i in range(3)] == [
            "net-subnet-0-id",
            "net-subnet-1-id",
            "net-subnet-0-id",
        ]
        assert await value(network.subnet_for("web")) == f"net-subnet-{placement_index('web', 2)}-id"
        assert [await value(network.zone_at(i)) for i in range(2)] == ["us-east-1a", "us-east-1b"]
        # What carries the deployer's traffic: Consul resources depend on it, so destroy keeps it to the end.
        path = sorted(urn.rsplit("::", 1)[-1] for urn in await value([r.urn for r in network.path]))
        assert path == ["net-default-route", "net-igw", "net-subnet-0-public", "net-subnet-1-public"]

    async def test_more_zones_than_the_region_has_is_a_clear_error(self) -> None:
        cidrs = tuple(f"10.42.{16 * i}.0/20" for i in range(4))  # the mocked region has three zones
        network = MeshNetwork("net", MeshNetworkArgs(subnet_cidrs=cidrs))
        with self.assertRaisesRegex(pulumi.RunError, "zoneCount: 4 zones asked for, but the region has 3"):
            await value(network.subnet_ids)

    async def test_given_subnets_find_their_vpc_and_create_no_network(self) -> None:
        network = MeshNetwork(
            "net", MeshNetworkArgs(subnet_ids=("subnet-0cccccccccccccccc", "subnet-0dddddddddddddddd"))
        )
        assert await value([network.vpc_id, network.subnet_ids]) == [
            "vpc-0fromsubnet000000",
            ["subnet-0cccccccccccccccc", "subnet-0dddddddddddddddd"],
        ]
        assert not self.mocks.of_type("aws:ec2/vpc:Vpc") and not self.mocks.of_type("aws:ec2/subnet:Subnet")
        assert network.path == []  # the stack does not own the given subnets' routes
        # Their zones (for the servers' data volumes) are looked up.
        lookups = {c.args["id"] for c in self.mocks.calls if c.token == "aws:ec2/getSubnet:getSubnet"}
        assert lookups == {"subnet-0cccccccccccccccc", "subnet-0dddddddddddddddd"}


def test_placement_depends_on_the_name_and_the_subnet_count_alone() -> None:
    names = ["api", "web", "db", "billing", "reports"]
    placed = [placement_index(name, 3) for name in names]
    # Whatever else the mesh holds, and in whatever order it is declared: the same subnets.
    grown = {name: placement_index(name, 3) for name in reversed(["aaa", *names, "zzz"])}
    assert [grown[name] for name in names] == placed
    assert all(0 <= index < 3 for index in placed) and len(set(placed)) > 1  # it does spread
    assert placement_index("web", 1) == 0


def test_offering_zones_keeps_the_region_order_and_drops_a_zone_missing_a_type() -> None:
    names = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"]
    offerings = [("t3.small", z) for z in ("us-east-1d", "us-east-1a", "us-east-1c")] + [("m5.large", z) for z in names]
    assert offering_zones(names, offerings, ["t3.small", "m5.large"]) == ["us-east-1a", "us-east-1c", "us-east-1d"]
    assert offering_zones(names, offerings, ["m5.large"]) == names
    assert offering_zones(names, offerings, ["c7i.large"]) == []
    assert offerings_query(["t3.small", "m5.large", "t3.small"]) == {
        "location_type": "availability-zone",
        "filters": [{"name": "instance-type", "values": ["m5.large", "t3.small"]}],
    }


class GivenZonesTest(MockedTestCase):
    async def test_created_subnets_go_into_the_zones_given(self) -> None:
        cidrs = ("10.42.0.0/20", "10.42.16.0/20")
        network = MeshNetwork("net", MeshNetworkArgs(subnet_cidrs=cidrs, zones=("us-east-1c", "us-east-1f")))
        assert await value(network.zones) == ["us-east-1c", "us-east-1f"]
        assert not [c for c in self.mocks.calls if c.token.endswith("getAvailabilityZones")]
        with self.assertRaisesRegex(ValueError, "2 subnets to create, 1 zones given"):
            MeshNetwork("net2", MeshNetworkArgs(subnet_cidrs=cidrs, zones=("us-east-1c",)))
