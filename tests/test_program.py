"""The whole stack under Pulumi's mocks: both modes, wiring, readiness, secrets, outputs, blast radius."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest import mock

import pulumi
import pytest
from hypothesis import given
from hypothesis import strategies as st

from components import identity, lifecycle, program
from components.identity import NODE_TAG, SERVICE_TAG, gossip_key_path, iam_path, login_prefix
from components.network import placement_index
from components.render import INSTANCE, READY, SECRET_MARKER, set_plan_mocks, unwrap, user_data_by_vm
from components.spec import PROJECT, MeshSpecError
from components.userdata import decode_user_data, unpack_cloud_config
from tests.lifecycle import DEMO as DEMO_LIFECYCLE
from tests.lifecycle import first_up, named
from tests.mocks import (
    CONSUL_TOKEN,
    GOSSIP_KEY,
    STACK,
    MeshMocks,
    MockedTestCase,
    demo_config,
    generated_of,
    is_secret,
    value,
)
from tests.test_readiness import free_port

DEMO = demo_config()
ADMIN = "198.51.100.7/32"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBexisting\n-----END CERTIFICATE-----\n"
EXISTING = {
    **DEMO,
    "adminCidrs": [],
    "consulHttpAddr": "https://10.0.1.10:8501",
    "consulRetryJoin": ["10.0.1.10"],
    "consulCaPem": CA_PEM,
    "consulToken": CONSUL_TOKEN,
    "vpcId": "vpc-0aaaaaaaaaaaaaaaa",
    "subnetIds": ["subnet-0aaaaaaaaaaaaaaaa"],
}
GENERATED_TOKEN = generated_of("consul-server-management-token (uuid)")
GENERATED_GOSSIP = generated_of("consul-server-gossip-key (base64)")
PREFIX = login_prefix(STACK)
IAM_PATH = iam_path(STACK)
AUTH_METHOD = "consul:index/aclAuthMethod:AclAuthMethod"
BINDING_RULE = "consul:index/aclBindingRule:AclBindingRule"
KEYS = "consul:index/keys:Keys"
PROVIDER_REF = "$pulumi:providers:consul::consul::consul-id"
IMAGE_PIN = "pulumi-python:dynamic/consul-tproxy-vms:ImagePin"


def run_main() -> dict[str, Any]:
    return program.main(deployer_lookup=lambda: ADMIN)


def user_data_of(mocks: Any, vm: str) -> str:
    return decode_user_data(user_data_by_vm(mocks)[vm])


def consul_resources(mocks: Any) -> list[Any]:
    return [r for r in mocks.resources if r.typ.startswith("consul:index/")]


def no_token_is_created_or_read(mocks: Any) -> None:
    assert not mocks.of_type("consul:index/aclToken:AclToken")
    assert not [c.token for c in mocks.calls if "getAclTokenSecretId" in c.token]


def user_data_holds_none_of(mocks: Any, secrets: list[str]) -> None:
    """No instance's user data (servers included) holds a secret, or is marked secret."""
    instances = mocks.of_type(INSTANCE)
    assert instances
    for instance in instances:
        assert SECRET_MARKER not in json.dumps(instance.inputs["userDataBase64"]), instance.name
        text = user_data_of(mocks, instance.name.removesuffix("-instance"))
        for secret in secrets:
            assert secret not in text, (instance.name, secret)


def method_config(path: str = IAM_PATH) -> dict[str, Any]:
    return {
        "BoundIAMPrincipalARNs": [f"arn:aws:iam::123456789012:role{path}*"],
        "EnableIAMEntityDetails": True,
        "IAMEntityTags": [SERVICE_TAG, NODE_TAG],
        "ServerIDHeaderValue": PREFIX,
    }


def auth_methods(mocks: Any) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {
        r.name: (r.inputs["name"], r.inputs["type"], json.loads(r.inputs["configJson"]))
        for r in mocks.of_type(AUTH_METHOD)
    }


def binding_rules(mocks: Any) -> list[tuple[str, str, str]]:
    return sorted(
        (r.inputs["authMethod"], r.inputs["bindType"], r.inputs["bindName"]) for r in mocks.of_type(BINDING_RULE)
    )


SERVICE_TAG_VALUE = f"${{entity_tags.{SERVICE_TAG}}}"
VM_BINDING_RULES = [
    (f"{PREFIX}-agent", "role", f"{PREFIX}-{SERVICE_TAG_VALUE}-agent"),
    (f"{PREFIX}-dns", "role", f"{PREFIX}-dns"),
    (f"{PREFIX}-service", "role", f"{PREFIX}-{SERVICE_TAG_VALUE}-agent-read"),
    (f"{PREFIX}-service", "service", SERVICE_TAG_VALUE),
]


class NewServers(MockedTestCase):
    """The demo stack: no existing cluster, so network, server, gate and mesh all come from one `up`."""

    config = DEMO

    async def test_declares_network_server_gate_and_mesh(self) -> None:
        await value(run_main())
        assert len(self.mocks.of_type("aws:ec2/vpc:Vpc")) == 1
        assert len(self.mocks.of_type("aws:ec2/subnet:Subnet")) == 2
        assert len(self.mocks.of_type(f"{PROJECT}:index:ConsulServer")) == 1
        assert sorted(r.name for r in self.mocks.of_type("aws:ec2/instance:Instance")) == [
            "api-instance",
            "consul-server-0-instance",
            "web-instance",
        ]
        no_token_is_created_or_read(self.mocks)
        roles = sorted(r.inputs["name"] for r in self.mocks.of_type("consul:index/aclRole:AclRole"))
        assert roles == [
            f"{PREFIX}-api-agent",
            f"{PREFIX}-api-agent-read",
            f"{PREFIX}-dns",
            f"{PREFIX}-web-agent",
            f"{PREFIX}-web-agent-read",
        ]
        assert len(self.mocks.of_type(READY)) == 1
        assert len(self.mocks.of_type("pulumi:providers:consul")) == 1

    async def test_every_consul_resource_uses_the_provider_configured_from_known_values(self) -> None:
        await value(run_main())
        (provider,) = self.mocks.of_type("pulumi:providers:consul")
        # The API's fixed address (the Elastic IP) and the generated token: known at preview.
        assert (provider.inputs["address"], provider.inputs["scheme"]) == ("203.0.113.147:8501", "https")
        assert provider.inputs["datacenter"] == "dc1"
        assert unwrap(provider.inputs["token"]) == GENERATED_TOKEN
        assert SECRET_MARKER in provider.inputs["token"]
        assert provider.inputs["caPem"] == "-----BEGIN CERTIFICATE-----\nconsul-server-ca\n-----END CERTIFICATE-----\n"
        resources = consul_resources(self.mocks)
        assert resources
        for resource in resources:
            # A provider reference is "<urn>::<id>"; a default provider would be named default_<version>.
            assert (resource.provider or "").endswith(PROVIDER_REF), resource.name

    async def test_the_gate_polls_the_new_servers_api_with_their_ca_and_the_management_token(self) -> None:
        await value(run_main())
        (gate,) = self.mocks.of_type(READY)
        assert gate.inputs["http_addr"] == "https://203.0.113.147:8501"
        assert gate.inputs["ca_pem"].split("\n")[1] == "consul-server-ca"
        assert unwrap(gate.inputs["token"]) == GENERATED_TOKEN and SECRET_MARKER in gate.inputs["token"]
        assert gate.inputs["timeout_seconds"] == 600
        # A rebuilt server changes the triggers, so the next `up` waits for the cluster again, and for
        # as many healthy voters as the stack has servers.
        assert gate.inputs["triggers"] == ["consul-server-0-instance-id"]
        assert gate.inputs["expect_voters"] == 1
        # The servers hold no management token: the gate bootstraps the ACL system with it.
        assert gate.inputs["bootstrap"] is True

    async def test_mesh_vms_join_by_tag_log_in_for_the_gossip_key_and_use_tls_and_loopback_xds(self) -> None:
        await value(run_main())
        files = unpack_cloud_config(user_data_of(self.mocks, "web"))
        hcl = files["/etc/consul.d/consul.hcl"]
        assert f'retry_join  = ["provider=aws tag_key=consul-tproxy-vms-cluster tag_value={PROJECT}-{STACK}"]' in hcl
        # No gossip key, node name or token: the login at boot writes them.
        assert not re.search(r"^\s*(encrypt|node_name)\s*=", hcl, re.M) and "tokens {" not in hcl
        login_env = files["/etc/consul.d/login.env"]
        assert f'GOSSIP_KEY_PATH="{gossip_key_path(PREFIX)}"' in login_env
        assert 'LOGIN_HTTP_ADDRS="https://10.42.1.104:8501"' in login_env  # the server's private address
        assert f'LOGIN_SERVER_ID="{PREFIX}"' in login_env
        assert files["/etc/envoy/web.env"].count("CONSUL_HTTP_TOKEN") == 1
        assert 'CONSUL_HTTP_TOKEN_FILE="/run/consul-login/service.token"' in files["/etc/envoy/web.env"]
        assert "auto_encrypt {\n  tls = true\n}" in hcl
        assert "grpc     = 8502" in hcl and "grpc_tls = -1" in hcl  # plaintext xDS, on loopback only
        assert files["/etc/consul.d/ca.pem"].split("\n")[1] == "consul-server-ca"
        assert "CONSUL_GRPC_ADDR=127.0.0.1:8502" in files["/etc/envoy/web.env"]
        (policy,) = [p for p in self.mocks.of_type("aws:iam/rolePolicy:RolePolicy") if p.name == "web-auto-join"]
        assert "ec2:DescribeInstances" in policy.inputs["policy"]

    async def test_deployer_admin_cidr_opens_the_api_and_ssh_to_this_machine_only(self) -> None:
        await value(run_main())
        rules = self.mocks.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        by_cidr = sorted((r.name, int(r.inputs["fromPort"])) for r in rules if r.inputs.get("cidrIpv4"))
        assert by_cidr == [
            ("api-ssh-0", 22),
            ("consul-server-https-0", 8501),
            ("consul-server-ssh-0", 22),
            ("web-ssh-0", 22),
        ]
        assert {r.inputs["cidrIpv4"] for r in rules if r.inputs.get("cidrIpv4")} == {ADMIN}

    async def test_outputs_for_consumers(self) -> None:
        outputs = await value(run_main())
        assert outputs["services"]["web"] == {
            "instances": 1,
            "instanceId": "web-instance-id",
            "privateIp": outputs["services"]["web"]["privateIp"],
            "publicIp": outputs["services"]["web"]["publicIp"],
            "nodeName": "web-web-instance-id",  # <service>-<instance id>, as the VM names itself
            "virtualHostname": "web.virtual.consul",
            "port": 9090,
        }
        assert outputs["intentions"] == [{"source": "web", "destination": "api", "action": "allow"}]
        assert outputs["consulHttpAddr"] == "https://203.0.113.147:8501"
        assert outputs["consulUiUrl"] == "https://203.0.113.147:8501/ui/"
        assert outputs["consulDatacenter"] == "dc1"
        assert outputs["consulRetryJoin"] == [
            f"provider=aws tag_key=consul-tproxy-vms-cluster tag_value={PROJECT}-{STACK}"
        ]
        assert outputs["consulCaPem"].split("\n")[1] == "consul-server-ca" and "consulGrpcCaPem" not in outputs
        assert outputs["consulManagementToken"] == GENERATED_TOKEN
        assert outputs["consulGossipKey"] == GENERATED_GOSSIP
        assert [s["nodeName"] for s in outputs["consulServers"]] == ["consul-server-0"]
        assert outputs["vpcId"] == "network-vpc-id"
        assert outputs["subnetIds"] == ["network-subnet-0-id", "network-subnet-1-id"]
        assert outputs["meshSecurityGroupId"] == "network-members-id"
        assert outputs["dnsPolicyName"] == f"{PROJECT}-{STACK}-dns-read"
        assert outputs["consulLogin"] == {
            "prefix": PREFIX,
            "iamPath": IAM_PATH,
            "serverId": PREFIX,
            "httpAddrs": ["https://10.42.1.104:8501"],
            "gossipKeyPath": gossip_key_path(PREFIX),
        }
        # Every output name is camelCase: other projects read them through stack references.
        for key in outputs:
            assert key[0].islower() and "_" not in key and "-" not in key, key

    async def test_secrets_are_secret_outputs_and_absent_from_plain_ones(self) -> None:
        outputs = run_main()
        for key in ("consulManagementToken", "consulGossipKey"):
            assert await is_secret(outputs[key]), key
        plain = {k: v for k, v in outputs.items() if not await is_secret(v)}
        assert {"consulHttpAddr", "consulCaPem", "services", "vpcId"} <= set(plain)
        assert not await is_secret(outputs["consulLogin"])
        text = json.dumps(await value(plain))
        assert "GENERATED-" not in text  # no generated token, gossip key or private key

    async def test_no_token_is_created_or_read_and_no_user_data_holds_a_secret(self) -> None:
        await value(run_main())
        no_token_is_created_or_read(self.mocks)
        keys = self.mocks.of_type("tls:index/privateKey:PrivateKey")
        private_keys = [generated_of(f"{k.name} private key") for k in keys]
        assert len(private_keys) == 2  # the CA's and the server's
        user_data_holds_none_of(self.mocks, [GENERATED_TOKEN, GENERATED_GOSSIP, *private_keys, "GENERATED-"])
        assert sorted(user_data_by_vm(self.mocks)) == ["api", "consul-server-0", "web"]

    async def test_aws_iam_auth_methods_and_binding_rules(self) -> None:
        await value(run_main())
        config = method_config()
        kinds = ("agent", "service", "dns", "server")
        assert auth_methods(self.mocks) == {f"identity-{k}": (f"{PREFIX}-{k}", "aws-iam", config) for k in kinds}
        assert config["BoundIAMPrincipalARNs"] == [f"arn:aws:iam::123456789012:role/{PROJECT}/{STACK}/*"]
        assert binding_rules(self.mocks) == sorted(
            [*VM_BINDING_RULES, (f"{PREFIX}-server", "node", f"${{entity_tags.{NODE_TAG}}}")]
        )
        # The VMs' and servers' IAM roles live under that path, tagged with what the rules read.
        roles = {r.name: r.inputs for r in self.mocks.of_type("aws:iam/role:Role")}
        assert {name: inputs["path"] for name, inputs in roles.items()} == {
            "api-role": IAM_PATH,
            "consul-server-0-role": IAM_PATH,
            "web-role": IAM_PATH,
        }
        assert roles["web-role"]["tags"][SERVICE_TAG] == "web"
        assert roles["consul-server-0-role"]["tags"][NODE_TAG] == "consul-server-0"

    async def test_the_gossip_key_reaches_consul_kv_as_a_secret(self) -> None:
        await value(run_main())
        (keys,) = self.mocks.of_type(KEYS)
        assert keys.name == "identity-gossip-key"
        assert SECRET_MARKER in json.dumps(keys.inputs["keys"])
        # delete: the entry goes with the resource (`pulumi destroy`), not left behind in KV.
        assert unwrap(keys.inputs["keys"]) == [
            {"path": gossip_key_path(PREFIX), "value": GENERATED_GOSSIP, "delete": True}
        ]
        assert gossip_key_path(PREFIX) == f"{PROJECT}/{PREFIX}/gossip-key"

    async def test_a_vms_subnet_depends_on_its_service_name_alone(self) -> None:
        await value(run_main())
        subnets = {r.name: r.inputs.get("subnetId") for r in self.mocks.of_type("aws:ec2/instance:Instance")}
        for service in ("api", "web"):
            assert subnets[f"{service}-instance"] == f"network-subnet-{placement_index(service, 2)}-id"

    async def test_every_instance_boots_the_stacks_pinned_image(self) -> None:
        await value(run_main())
        (pin,) = self.mocks.of_type(IMAGE_PIN)
        assert pin.name == "image" and pin.inputs["generation"] == 0 and pin.inputs["explicit"] is False
        amis = {r.name: r.inputs["ami"] for r in self.mocks.of_type("aws:ec2/instance:Instance")}
        assert set(amis.values()) == {pin.inputs["image_id"]}, amis
        assert len([c for c in self.mocks.calls if c.token == "aws:ec2/getAmi:getAmi"]) == 1


class GateMocks(MeshMocks):
    """The gate answers with an address of its own, to show the provider does not read it from there."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        rid, state = super().new_resource(args)
        if args.typ == READY:
            state["http_addr"] = "https://gate.invalid:8501"
        return rid, state


class ProviderAfterTheGate(MockedTestCase):
    config = DEMO

    async def test_provider_address_is_the_apis_fixed_address_not_a_gate_output(self) -> None:
        self.mocks = GateMocks()
        set_plan_mocks(self.mocks, STACK)
        self.set_config(DEMO)
        outputs = await value(run_main())
        (provider,) = self.mocks.of_type("pulumi:providers:consul")
        assert provider.inputs["address"] == "203.0.113.147:8501"
        assert outputs["consulHttpAddr"] == "https://203.0.113.147:8501"


def test_the_provider_and_so_every_consul_object_waits_for_the_gate() -> None:
    record = first_up(DEMO_LIFECYCLE).record
    provider = named(record, "consul")
    gate = lifecycle.urn_named(record, "consul-ready")
    assert gate in provider.dependencies
    assert not [key for key, deps in provider.property_dependencies.items() if gate in deps]
    for resource in record.values():
        if resource.type.startswith("consul:"):
            assert resource.provider == provider.urn, resource.name
            assert lifecycle.depends_transitively(record, resource.urn, gate)


SERVER_READY = "pulumi-python:dynamic/consul-tproxy-vms:ServerReady"


@pytest.mark.parametrize("config", [DEMO_LIFECYCLE, EXISTING], ids=["new-servers", "existing-cluster"])
def test_mesh_vms_boot_in_parallel_with_the_servers_needing_nothing_from_consul(config: dict[str, Any]) -> None:
    """A mesh VM's instance needs (transitively: recorded dependencies, property dependencies,
    provider, parents) no Consul object, no consul provider and not the cluster gate. Of the servers
    it waits for the last server's own gate only, which waits for nothing when first created (it
    orders an upgrade: servers first) - so on the first `up` the VMs boot while Consul does."""
    record = first_up(config).record
    instances = [r for r in record.values() if r.type == INSTANCE and not r.name.startswith("consul-server")]
    assert sorted(r.name for r in instances) == ["api-instance", "web-instance"]
    for instance in instances:
        needed = lifecycle.closure(record, instance.urn)
        assert instance.provider == ""  # the default aws provider
        consul_side = sorted(
            lifecycle.name_of(u)
            for u in needed
            if lifecycle.type_of(u).startswith(("consul:", "pulumi:providers:consul"))
            or lifecycle.type_of(u) in (READY, f"{PROJECT}:index:MeshIdentity", f"{PROJECT}:index:MeshDefaults")
        )
        assert consul_side == [], (instance.name, consul_side)
        gates = sorted(lifecycle.name_of(u) for u in needed if lifecycle.type_of(u) == SERVER_READY)
        assert gates == (["consul-server-0-ready"] if "consulHttpAddr" not in config else []), instance.name
        # Nor does its user data wait for a Consul object: it is known at the first `up`.
        assert not lifecycle.contains_unknown(instance.inputs["userDataBase64"]), instance.name


class ExistingCluster(MockedTestCase):
    config = EXISTING

    async def test_no_server_no_network_same_mesh(self) -> None:
        outputs = await value(run_main())
        assert not self.mocks.of_type(f"{PROJECT}:index:ConsulServer")
        assert not self.mocks.of_type("aws:ec2/vpc:Vpc") and not self.mocks.of_type(
            "random:index/randomUuid:RandomUuid"
        )
        assert sorted(r.name for r in self.mocks.of_type("aws:ec2/instance:Instance")) == [
            "api-instance",
            "web-instance",
        ]
        assert outputs["consulHttpAddr"] == "https://10.0.1.10:8501"
        assert outputs["consulRetryJoin"] == ["10.0.1.10"]
        assert outputs["consulCaPem"] == CA_PEM and "consulGrpcCaPem" not in outputs
        assert outputs["subnetIds"] == ["subnet-0aaaaaaaaaaaaaaaa"] and outputs["vpcId"] == "vpc-0aaaaaaaaaaaaaaaa"
        assert "consulServers" not in outputs and "consulGossipKey" not in outputs

    async def test_the_gate_and_provider_point_at_the_given_cluster_with_its_token(self) -> None:
        await value(run_main())
        (gate,) = self.mocks.of_type(READY)
        assert gate.inputs["http_addr"] == "https://10.0.1.10:8501" and gate.inputs["triggers"] == []
        assert unwrap(gate.inputs["token"]) == CONSUL_TOKEN
        assert gate.inputs["bootstrap"] is False  # an existing cluster's ACLs are bootstrapped already
        (provider,) = self.mocks.of_type("pulumi:providers:consul")
        assert provider.inputs["address"] == "10.0.1.10:8501" and unwrap(provider.inputs["token"]) == CONSUL_TOKEN
        assert provider.inputs["caPem"] == CA_PEM
        for resource in consul_resources(self.mocks):
            assert (resource.provider or "").endswith(PROVIDER_REF), resource.name

    async def test_agents_use_tls_but_plaintext_loopback_grpc_without_the_connect_ca(self) -> None:
        self.set_config({**EXISTING, "consulGossipKey": GOSSIP_KEY})
        outputs = run_main()
        assert await is_secret(outputs["consulGossipKey"]) and await is_secret(outputs["consulManagementToken"])
        await value(outputs)
        files = unpack_cloud_config(user_data_of(self.mocks, "api"))
        assert "encrypt     =" not in files["/etc/consul.d/consul.hcl"]
        assert f'GOSSIP_KEY_PATH="{gossip_key_path(PREFIX)}"' in files["/etc/consul.d/login.env"]
        assert 'LOGIN_HTTP_ADDRS="https://10.0.1.10:8501"' in files["/etc/consul.d/login.env"]
        assert files["/etc/consul.d/ca.pem"] == CA_PEM
        assert "CONSUL_GRPC_ADDR=127.0.0.1:8502" in files["/etc/envoy/api.env"]
        # Joined by address: no ec2:DescribeInstances; each VM's role may read itself (the login).
        policies = sorted(p.name for p in self.mocks.of_type("aws:iam/rolePolicy:RolePolicy"))
        assert policies == ["api-login", "web-login"]

    async def test_no_plain_output_carries_a_secret(self) -> None:
        self.set_config({**EXISTING, "consulGossipKey": GOSSIP_KEY})
        outputs = run_main()
        plain = {k: v for k, v in outputs.items() if not await is_secret(v)}
        text = json.dumps(await value(plain))
        for secret in [CONSUL_TOKEN, GOSSIP_KEY]:
            assert secret not in text

    async def test_no_token_is_created_or_read_and_no_user_data_holds_the_clusters_secrets(self) -> None:
        self.set_config({**EXISTING, "consulGossipKey": GOSSIP_KEY})
        await value(run_main())
        no_token_is_created_or_read(self.mocks)
        user_data_holds_none_of(self.mocks, [CONSUL_TOKEN, GOSSIP_KEY])
        assert sorted(user_data_by_vm(self.mocks)) == ["api", "web"]
        web = unpack_cloud_config(user_data_of(self.mocks, "web"))
        assert 'CONSUL_HTTP_TOKEN_FILE="/run/consul-login/service.token"' in web["/etc/envoy/web.env"]
        assert self.mocks.named("web-instance").inputs["userDataReplaceOnChange"] is True

    async def test_auth_methods_for_vms_only_and_the_gossip_key_in_kv(self) -> None:
        self.set_config({**EXISTING, "consulGossipKey": GOSSIP_KEY})
        outputs = await value(run_main())
        # The existing cluster's servers log in by their own means: no server method.
        assert auth_methods(self.mocks) == {
            f"identity-{kind}": (f"{PREFIX}-{kind}", "aws-iam", method_config()) for kind in ("agent", "service", "dns")
        }
        assert binding_rules(self.mocks) == VM_BINDING_RULES
        (keys,) = self.mocks.of_type(KEYS)
        assert SECRET_MARKER in json.dumps(keys.inputs["keys"])
        assert unwrap(keys.inputs["keys"]) == [{"path": gossip_key_path(PREFIX), "value": GOSSIP_KEY, "delete": True}]
        assert outputs["consulLogin"] == {
            "prefix": PREFIX,
            "iamPath": IAM_PATH,
            "serverId": PREFIX,
            "httpAddrs": ["https://10.0.1.10:8501"],
            "gossipKeyPath": gossip_key_path(PREFIX),
        }

    async def test_without_a_gossip_key_nothing_goes_to_kv(self) -> None:
        outputs = await value(run_main())
        assert not self.mocks.of_type(KEYS)
        assert outputs["consulLogin"]["gossipKeyPath"] == ""
        login_env = unpack_cloud_config(user_data_of(self.mocks, "web"))["/etc/consul.d/login.env"]
        assert 'GOSSIP_KEY_PATH=""' in login_env


def test_dns_policy_name_is_valid_for_consul_whatever_the_stack_name() -> None:
    assert program.dns_policy_name("dev") == f"{PROJECT}-dev-dns-read"
    # A stack name with a dot carries a hash of its exact name (identity.stack_label).
    assert program.dns_policy_name("team.prod") == f"{identity.login_prefix('team.prod')}-dns-read"
    assert program.dns_policy_name("team.prod") != program.dns_policy_name("team-prod")


@contextmanager
def answering(body: bytes) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def test_deployer_address_lookup() -> None:
    with answering(b"203.0.113.7\n") as url:
        assert program.deployer_cidr(url) == "203.0.113.7/32"
    with answering(b"<html>busy</html>") as url, pytest.raises(MeshSpecError, match="adminCidrs: 'deployer' could not"):
        program.deployer_cidr(url)
    with pytest.raises(MeshSpecError, match="did not answer"):
        program.deployer_cidr(f"http://127.0.0.1:{free_port()}/", timeout=2)


class BadConfig(MockedTestCase):
    async def test_bad_config_fails_before_any_resource(self) -> None:
        bad_cases = [
            {**DEMO, "services": {"Web": {"port": 9090}}},
            {**DEMO, "intentions": [{"source": "web", "destination": "db", "action": "allow"}]},
            {**DEMO, "adminCidrs": []},
            {**DEMO, "consulToken": CONSUL_TOKEN},
            {k: v for k, v in EXISTING.items() if k != "consulToken"},
            # The VMs log in over the existing cluster's API and receive their tokens: https only.
            {**EXISTING, "consulHttpAddr": "http://10.0.1.10:8500"},
        ]
        for config in bad_cases:
            self.set_config(config)
            with self.assertRaises(pulumi.RunError) as caught:
                run_main()
            assert "invalid stack config for consul-tproxy-vms" in str(caught.exception)
            assert self.mocks.resources == [], config

    async def test_an_existing_clusters_api_must_be_https(self) -> None:
        self.set_config({**EXISTING, "consulHttpAddr": "http://10.0.1.10:8500"})
        with self.assertRaises(pulumi.RunError) as caught:
            run_main()
        assert "consulHttpAddr" in str(caught.exception) and "must be https://" in str(caught.exception)
        assert self.mocks.resources == []

    async def test_failed_deployer_lookup_fails_before_any_resource(self) -> None:
        def offline() -> str:
            raise MeshSpecError(["adminCidrs: 'deployer' could not be resolved: offline"])

        self.set_config(DEMO)
        with self.assertRaisesRegex(pulumi.RunError, "adminCidrs: 'deployer' could not be resolved"):
            program.main(deployer_lookup=offline)
        assert self.mocks.resources == []

    async def test_typo_in_a_config_key_is_named(self) -> None:
        self.set_config({**DEMO, "intentionz": []})
        with self.assertRaises(pulumi.RunError) as caught:
            run_main()
        assert "intentionz: \"[]\" is not a known key (did you mean 'intentions'?)" in str(caught.exception)
        assert self.mocks.resources == []

    async def test_more_zones_than_the_region_has_fails_before_any_resource(self) -> None:
        self.set_config({**DEMO, "zoneCount": 4})  # the mocks' region has three zones
        with self.assertRaises(pulumi.RunError) as caught:
            run_main()
        assert "zoneCount: 4 is more than the 3 availability zones of this region" in str(caught.exception)
        assert self.mocks.resources == []

    async def test_a_partition_whose_logins_consul_cannot_check_fails_before_any_resource(self) -> None:
        self.set_config(DEMO)
        for partition in ("aws-cn", "aws-us-gov"):
            with (
                mock.patch.object(program, "region_partition", return_value=partition),
                self.assertRaises(pulumi.RunError) as caught,
            ):
                run_main()
            assert f"aws:region: the {partition!r} partition is not supported" in str(caught.exception)
            assert self.mocks.resources == []

    async def test_subnets_go_only_into_zones_offering_every_instance_type(self) -> None:
        # As in us-east-1, one zone offers no t3: the created subnets skip it, keeping the order.
        self.mocks.offered_in = {"t3.small": ["us-east-1a", "us-east-1c"]}
        self.set_config({**DEMO, "zoneCount": 2})
        await value(run_main())
        zones = {r.name: r.inputs["availabilityZone"] for r in self.mocks.of_type("aws:ec2/subnet:Subnet")}
        assert zones == {"network-subnet-0": "us-east-1a", "network-subnet-1": "us-east-1c"}
        (offerings,) = [c for c in self.mocks.calls if c.token.endswith("getInstanceTypeOfferings")]
        assert offerings.args["filters"] == [{"name": "instance-type", "values": ["t3.small"]}]

    async def test_more_zones_than_offer_the_instance_types_fails_before_any_resource(self) -> None:
        self.mocks.offered_in = {"m5.large": ["us-east-1b"]}
        self.set_config({**DEMO, "zoneCount": 2, "serverInstanceType": "m5.large"})
        with self.assertRaises(pulumi.RunError) as caught:
            run_main()
        assert (
            "zoneCount: 2 is more than the 1 availability zones of this region offering every instance type "
            "of the stack (m5.large, t3.small): us-east-1b" in str(caught.exception)
        )
        assert self.mocks.resources == []

    async def test_an_arm_instance_type_is_refused_before_any_resource(self) -> None:
        # Decided from what AWS reports for the type (the mocks: arm64 for a Graviton name).
        self.mocks.architectures = {"m6.odd": ["arm64"]}
        services = {**DEMO["services"], "api": {**DEMO["services"]["api"], "instanceType": "m6.odd"}}
        self.set_config({**DEMO, "services": services, "serverInstanceType": "t4g.small"})
        with self.assertRaises(pulumi.RunError) as caught:
            run_main()
        message = str(caught.exception)
        assert "serverInstanceType: 't4g.small' is not an x86_64 instance type (AWS reports arm64)" in message
        assert "services.api.instanceType: 'm6.odd' is not an x86_64 instance type (AWS reports arm64)" in message
        assert "services.web" not in message
        assert self.mocks.resources == []

    async def test_user_data_over_ec2s_limit_fails_before_any_resource(self) -> None:
        too_many = {"port": 9090, "excludeOutboundPorts": list(range(1, 6000))}
        self.set_config({**DEMO, "services": {**DEMO["services"], "web": too_many}})
        with self.assertRaises(pulumi.RunError) as caught:
            run_main()
        assert "services.web: its user data would be" in str(caught.exception)
        assert self.mocks.resources == []

    async def test_footguns_are_logged_as_warnings(self) -> None:
        warned: list[str] = []
        self.set_config({**DEMO, "adminCidrs": ["0.0.0.0/0"]})
        with mock.patch.object(pulumi.log, "warn", side_effect=lambda msg, *a, **k: warned.append(msg)):
            await value(run_main())
        assert any(w.startswith("adminCidrs: 0.0.0.0/0 opens SSH") for w in warned), warned


LONGEST_NAME = {**DEMO, "services": {"a" * 63: {"port": 9090}, "api": {"port": 9091}}, "intentions": []}


class NameLimits(MockedTestCase):
    """Every generated name fits its AWS limit, for the longest service name the spec accepts."""

    config = LONGEST_NAME

    async def test_the_longest_service_name_gives_an_iam_role_name_within_64(self) -> None:
        await value(run_main())
        for role in self.mocks.of_type("aws:iam/role:Role"):
            # Explicit prefix + the provider's 26 characters, or Pulumi's auto-name (+8).
            prefix = role.inputs.get("namePrefix")
            length = len(prefix) + 26 if prefix else len(role.name) + 8
            assert length <= 64, (role.name, length)
        assert any(r.inputs.get("namePrefix") for r in self.mocks.of_type("aws:iam/role:Role"))
        # Short names keep Pulumi's auto-naming: existing roles are not renamed.
        assert "namePrefix" not in self.mocks.named("api-role").inputs


class BlastRadius(MockedTestCase):
    """Growing the mesh or changing intentions leaves every existing VM's user data as it was."""

    async def user_data(self, config: dict[str, Any]) -> dict[str, str]:
        self.mocks.resources.clear()
        self.set_config(config)
        await value(run_main())
        return user_data_by_vm(self.mocks)

    async def test_new_service_and_intention_changes_replace_no_vm(self) -> None:
        before = await self.user_data(DEMO)
        grown = {
            **DEMO,
            "services": {**DEMO["services"], "db": {"port": 5432, "protocol": "tcp"}},
            "intentions": [
                {"source": "web", "destination": "api", "action": "deny"},
                {"source": "api", "destination": "db", "action": "allow"},
                {"source": "web", "destination": "db", "action": "deny"},
            ],
        }
        after = await self.user_data(grown)
        assert sorted(after) == ["api", "consul-server-0", "db", "web"]
        for name, data in before.items():
            assert after[name] == data, f"user data of {name} changed"

    async def test_intention_entries_change_when_intentions_do(self) -> None:
        await self.user_data({**DEMO, "intentions": [{"source": "web", "destination": "api", "action": "deny"}]})
        (entry,) = self.mocks.of_type("consul:index/configEntryServiceIntentions:ConfigEntryServiceIntentions")
        assert [(s["name"], s["action"]) for s in entry.inputs["sources"]] == [("web", "deny")]


def test_consul_names_fit_their_limits_for_the_longest_stack_and_service_names() -> None:
    """Consul: policy names at most 128 characters, role names 256 (agent/structs/acl.go)."""
    prefix = identity.login_prefix("s." * 50)  # Pulumi stack names are at most 100 characters
    role = identity.agent_read_role_name(prefix, "a" * 63)
    assert len(role) <= 256 and re.fullmatch(r"[A-Za-z0-9_-]+", role)
    policy = identity.policy_name_for(role)
    assert len(policy) <= 128 and policy != identity.policy_name_for(identity.agent_role_name(prefix, "a" * 63))


# Pulumi stack names: letters, digits, `-`, `_` and `.`, at most 100 characters; here always with a
# dot (built in, not filtered for: a filter would discard most names).
DOTTED_STACK_NAMES = st.builds(
    lambda head, tail: f"{head}.{tail}",
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,45}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_.-]{0,45}", fullmatch=True),
)


@given(DOTTED_STACK_NAMES)
def test_stacks_differing_only_by_dots_and_dashes_share_no_names(stack: str) -> None:
    """`a.b` and `a-b` once shared an IAM path and login prefix: each could log in as the other's VMs."""
    dashed = stack.replace(".", "-")
    assert identity.login_prefix(stack) != identity.login_prefix(dashed)
    assert identity.iam_path(stack) != identity.iam_path(dashed)
    for name in (identity.login_prefix(stack), identity.iam_path(stack).strip("/")):
        assert re.fullmatch(r"[A-Za-z0-9_/-]+", name), name


def test_stack_names_without_dots_keep_their_names() -> None:
    """Existing stacks whose names have no `.` keep every name (else every VM would be replaced)."""
    assert identity.login_prefix("dev") == "consul-tproxy-vms-dev"
    assert identity.iam_path("prod_eu-1") == "/consul-tproxy-vms/prod_eu-1/"


def test_keys_outside_the_namespace_that_look_like_ours_are_named() -> None:
    found = program.foreign_keys({"consul-tproxy:services", "myproject:adminCidrs", "aws:region", "other:color"})
    assert found == [
        "config key 'consul-tproxy:services' is not in the 'consul-tproxy-vms' namespace, so it is ignored: "
        "set it as consul-tproxy-vms:services",
        "config key 'myproject:adminCidrs' is not in the 'consul-tproxy-vms' namespace, so it is ignored: "
        "set it as consul-tproxy-vms:adminCidrs",
    ]
