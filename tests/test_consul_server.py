"""ConsulServer under Pulumi's mocks: what the servers boot with, and what they admit."""

from __future__ import annotations

import json
from typing import Any

import hcl2

from components.consul_server import JOIN_TAG_KEY, ConsulServer, ConsulServerArgs
from components.ec2 import AUTO_JOIN_POLICY
from components.render import SECRET_MARKER, user_data_by_vm
from components.spec import PROJECT
from components.userdata import decode_user_data, unpack_cloud_config
from tests.mocks import MockedTestCase, generated_of, is_secret, value

INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"


def server_args(**overrides: Any) -> ConsulServerArgs:
    args: dict[str, Any] = {
        "datacenter": "dc1",
        "consul_version": "1.22.1",
        "count": 3,
        "instance_type": "t3.small",
        "join_tag_value": "consul-tproxy-vms-test",
        "subnet_ids": ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"],
        "vpc_id": "vpc-0aaaaaaaaaaaaaaaa",
        "mesh_security_group_id": "sg-0mesh",
        "admin_cidrs": ["198.51.100.7/32"],
    }
    return ConsulServerArgs(**{**args, **overrides})


def unquote(value: str) -> str:
    """python-hcl2 keeps string literals quoted and escaped; the agent reads them unescaped."""
    return json.loads(value)


class ConsulServerTest(MockedTestCase):
    async def make(self, **overrides: Any) -> ConsulServer:
        server = ConsulServer("consul-server", server_args(**overrides))
        await value([server.http_addr, server.ca_pem, server.management_token, server.gossip_key, server.servers])
        return server

    def config_of(self, node: str) -> dict[str, Any]:
        files = unpack_cloud_config(decode_user_data(user_data_by_vm(self.mocks)[node]))
        return hcl2.loads(files["/etc/consul.d/consul.hcl"])

    async def test_servers_boot_with_acls_default_deny_gossip_encryption_tls_and_ui(self) -> None:
        await self.make()
        for index in range(3):
            hcl = self.config_of(f"consul-server-{index}")
            assert hcl["server"] is True and hcl["bootstrap_expect"] == 3
            assert unquote(hcl["node_name"]) == f"consul-server-{index}"
            assert unquote(hcl["encrypt"]) == generated_of("consul-server-gossip-key (base64)")
            acl = hcl["acl"][0]
            assert acl["enabled"] is True and unquote(acl["default_policy"]) == "deny"
            assert unquote(acl["tokens"][0]["initial_management"]) == generated_of(
                "consul-server-management-token (uuid)"
            )
            tls = hcl["tls"][0]
            assert tls["internal_rpc"][0]["verify_incoming"] is True
            assert tls["internal_rpc"][0]["verify_server_hostname"] is True
            assert hcl["auto_encrypt"][0]["allow_tls"] is True
            assert hcl["ui_config"][0]["enabled"] is True
            assert unquote(hcl["connect"][0]["ca_config"][0]["root_cert"]).strip().endswith("END CERTIFICATE-----")
            assert [unquote(t) for t in hcl["retry_join"]] == [
                f"provider=aws tag_key={JOIN_TAG_KEY} tag_value=consul-tproxy-vms-test"
            ]

    async def test_each_server_has_its_own_key_and_a_certificate_from_the_stacks_ca(self) -> None:
        await self.make()
        (ca,) = self.mocks.of_type("tls:index/selfSignedCert:SelfSignedCert")
        assert ca.inputs["isCaCertificate"] is True
        assert "cert_signing" in ca.inputs["allowedUses"]
        requests = self.mocks.of_type("tls:index/certRequest:CertRequest")
        assert len(requests) == 3
        for request in requests:
            assert request.inputs["dnsNames"] == ["server.dc1.consul", "localhost"]
            # The API's public address, which Pulumi dials, is in every certificate.
            assert request.inputs["ipAddresses"] == ["127.0.0.1", "203.0.113.10"]
        certs = self.mocks.of_type("tls:index/locallySignedCert:LocallySignedCert")
        assert sorted(c.inputs["certRequestPem"].split("\n")[1] for c in certs) == sorted(r.name for r in requests)
        assert all(c.inputs["caCertPem"].split("\n")[1] == "consul-server-ca" for c in certs)
        assert all("server_auth" in c.inputs["allowedUses"] for c in certs)
        keys = {r.name for r in self.mocks.of_type("tls:index/privateKey:PrivateKey")}
        assert keys == {"consul-server-ca-key", "consul-server-0-key", "consul-server-1-key", "consul-server-2-key"}
        files = unpack_cloud_config(decode_user_data(user_data_by_vm(self.mocks)["consul-server-1"]))
        assert "consul-server-1-key private key" in files["/etc/consul.d/server-key.pem"]
        assert "consul-server-1-cert" in files["/etc/consul.d/server.pem"]

    async def test_generated_secrets_stay_secret(self) -> None:
        server = await self.make()
        assert await is_secret(server.management_token)
        assert await is_secret(server.gossip_key)
        assert not await is_secret(server.ca_pem) and not await is_secret(server.http_addr)
        for instance in self.mocks.of_type("aws:ec2/instance:Instance"):
            assert SECRET_MARKER in instance.inputs["userDataBase64"]
            assert instance.inputs["metadataOptions"]["httpTokens"] == "required"

    async def test_the_api_address_is_a_fixed_public_ip_on_server_zero(self) -> None:
        server = await self.make()
        assert await value(server.http_addr) == "https://203.0.113.10:8501"
        (association,) = self.mocks.of_type("aws:ec2/eipAssociation:EipAssociation")
        assert association.inputs["instanceId"] == "consul-server-0-instance-id"
        subnets = [i.inputs["subnetId"] for i in self.mocks.of_type("aws:ec2/instance:Instance")]
        assert subnets == ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb", "subnet-0aaaaaaaaaaaaaaaa"]
        assert [s["nodeName"] for s in await value(server.servers)] == [f"consul-server-{i}" for i in range(3)]

    async def test_servers_find_each_other_by_tag_with_describe_instances_only(self) -> None:
        server = await self.make()
        for instance in self.mocks.of_type("aws:ec2/instance:Instance"):
            assert instance.inputs["tags"][JOIN_TAG_KEY] == "consul-tproxy-vms-test"
        (policy,) = self.mocks.of_type("aws:iam/rolePolicy:RolePolicy")
        assert json.loads(policy.inputs["policy"]) == json.loads(AUTO_JOIN_POLICY)
        assert server.retry_join == [f"provider=aws tag_key={JOIN_TAG_KEY} tag_value=consul-tproxy-vms-test"]

    async def test_security_group_admits_exactly_the_mesh_and_the_admins(self) -> None:
        await self.make(admin_cidrs=["198.51.100.7/32", "203.0.113.0/24"])
        seen = sorted(
            (
                r.inputs["ipProtocol"],
                int(r.inputs["fromPort"]),
                r.inputs.get("referencedSecurityGroupId") or r.inputs["cidrIpv4"],
            )
            for r in self.mocks.of_type(INGRESS)
        )
        assert seen == [
            ("tcp", 22, "198.51.100.7/32"),
            ("tcp", 22, "203.0.113.0/24"),
            ("tcp", 8300, "sg-0mesh"),
            ("tcp", 8301, "sg-0mesh"),
            ("tcp", 8302, "consul-server-sg-id"),
            ("tcp", 8501, "198.51.100.7/32"),
            ("tcp", 8501, "203.0.113.0/24"),
            ("udp", 8301, "sg-0mesh"),
            ("udp", 8302, "consul-server-sg-id"),
        ]
        instance = self.mocks.named("consul-server-0-instance")
        assert instance.inputs["vpcSecurityGroupIds"] == ["consul-server-sg-id", "sg-0mesh"]

    async def test_children_are_parented_to_the_component_and_named_after_it(self) -> None:
        await self.make(count=1)
        children = [r for r in self.mocks.resources if r.name != "consul-server"]
        assert children
        for child in children:
            assert child.name.startswith("consul-server-"), child.name
            assert self.mocks.parents[child.name].endswith(f"${PROJECT}:index:ConsulServer::consul-server")
        assert self.config_of("consul-server-0")["bootstrap_expect"] == 1
