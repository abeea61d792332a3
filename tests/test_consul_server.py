"""ConsulServer under Pulumi's mocks: what the servers boot with, and what they admit."""

from __future__ import annotations

import json
import shlex
from typing import Any

import hcl2
import pulumi
import pulumi_aws as aws

from components import identity, lifecycle
from components.consul_server import JOIN_TAG_KEY, ConsulServer, ConsulServerArgs
from components.ec2 import AUTO_JOIN_POLICY
from components.render import SECRET_MARKER, stand_in_host, stand_in_volume_id, unwrap, user_data_by_vm
from components.spec import PROJECT
from components.userdata import decode_user_data, unpack_cloud_config
from tests.mocks import STACK, MeshMocks, MockedTestCase, generated_of, is_secret, value

INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
PARAMETER = "aws:ssm/parameter:Parameter"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
PREFIX = identity.login_prefix(STACK)
IAM_PATH = identity.iam_path(STACK)
PARAMETERS = f"/{PROJECT}/{PREFIX}"
GOSSIP_PARAMETER = f"{PARAMETERS}/gossip-key"
SSM_ARN = "arn:aws:ssm:us-east-1:123456789012:parameter"
SECRETS_KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/consul-server-secrets-key"
NODES = [f"consul-server-{i}" for i in range(3)]
# What the mocks generate in secret (tests/mocks.py generated_of): none may reach a server's user data.
MANAGEMENT_TOKEN = generated_of("consul-server-management-token (uuid)")
GOSSIP_KEY = generated_of("consul-server-gossip-key (base64)")


def private_key(name: str) -> str:
    return generated_of(f"{name} private key")


def tls_parameter(node: str) -> str:
    return f"{PARAMETERS}/{node}/tls-key"


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
        "zones": ["us-east-1a", "us-east-1b"],
        "login_prefix": PREFIX,
        "iam_path": IAM_PATH,
        "region": "us-east-1",
    }
    return ConsulServerArgs(**{**args, **overrides})


def unquote(value: str) -> str:
    """python-hcl2 keeps string literals quoted and escaped; the agent reads them unescaped."""
    return json.loads(value)


def env_of(text: str) -> dict[str, str]:
    """KEY=VALUE lines of an environment file, as systemd and the shell read them."""
    pairs = (shlex.split(line)[0] for line in text.splitlines() if line and not line.startswith("#"))
    return dict(pair.split("=", 1) for pair in pairs)


class ConsulServerTest(MockedTestCase):
    async def make(self, **overrides: Any) -> ConsulServer:
        server = ConsulServer("consul-server", server_args(**overrides))
        await value([server.http_addr, server.ca_pem, server.management_token, server.gossip_key, server.servers])
        return server

    def files_of(self, node: str) -> dict[str, str]:
        return unpack_cloud_config(decode_user_data(user_data_by_vm(self.mocks)[node]))

    def config_of(self, node: str) -> dict[str, Any]:
        return hcl2.loads(self.files_of(node)["/etc/consul.d/consul.hcl"])

    async def test_servers_boot_with_acls_default_deny_tls_and_ui_and_no_secret_in_their_config(self) -> None:
        await self.make()
        for index in range(3):
            hcl = self.config_of(f"consul-server-{index}")
            assert hcl["server"] is True and hcl["bootstrap_expect"] == 3
            assert unquote(hcl["node_name"]) == f"consul-server-{index}"
            # The gossip key comes from SSM at boot (gossip.hcl), not from the user data.
            assert "encrypt" not in hcl
            acl = hcl["acl"][0]
            assert acl["enabled"] is True and unquote(acl["default_policy"]) == "deny"
            # No initial management token: the stack's gate bootstraps ACLs over the API.
            assert "tokens" not in acl
            tls = hcl["tls"][0]
            assert tls["internal_rpc"][0]["verify_incoming"] is True
            assert tls["internal_rpc"][0]["verify_server_hostname"] is True
            assert unquote(tls["defaults"][0]["key_file"]) == "/etc/consul.d/server-key.pem"
            assert hcl["auto_encrypt"][0]["allow_tls"] is True
            assert hcl["ui_config"][0]["enabled"] is True
            # Consul's built-in Connect CA: its key is generated on the servers, never in user data.
            connect = hcl["connect"][0]
            assert unquote(connect["ca_provider"]) == "consul" and "ca_config" not in connect
            assert [unquote(t) for t in hcl["retry_join"]] == [
                f"provider=aws tag_key={JOIN_TAG_KEY} tag_value=consul-tproxy-vms-test"
            ]

    async def test_each_server_reads_its_secrets_from_ssm_and_logs_in_for_its_token(self) -> None:
        await self.make()
        for node in NODES:
            files = self.files_of(node)
            assert env_of(files["/etc/consul.d/secrets.env"]) == {
                "AWS_REGION": "us-east-1",
                "GOSSIP_KEY_PARAMETER": GOSSIP_PARAMETER,
                "TLS_KEY_PARAMETER": tls_parameter(node),
            }
            login = env_of(files["/etc/consul.d/login.env"])
            assert login["LOGIN_METHOD"] == f"{PREFIX}-server" and login["LOGIN_SERVER_ID"] == PREFIX
            # The login needs the region (command/login/aws.go: "AWS region not found").
            assert login["AWS_REGION"] == "us-east-1"
            # Its data volume is found at boot by the id of the volume declared for it.
            assert env_of(files["/etc/consul.d/data-volume.env"]) == {
                "DATA_VOLUME_ID": stand_in_volume_id(f"{node}-data"),
                "DATA_DEVICE": "/dev/sdf",
            }
            assert "/etc/systemd/system/consul-server-secrets.service" in files
            assert "/etc/systemd/system/consul-server-login.service" in files

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
            assert request.inputs["ipAddresses"] == ["127.0.0.1", "203.0.113.147"]
        certs = self.mocks.of_type("tls:index/locallySignedCert:LocallySignedCert")
        assert sorted(c.inputs["certRequestPem"].split("\n")[1] for c in certs) == sorted(r.name for r in requests)
        assert all(c.inputs["caCertPem"].split("\n")[1] == "consul-server-ca" for c in certs)
        assert all("server_auth" in c.inputs["allowedUses"] for c in certs)
        keys = {r.name for r in self.mocks.of_type("tls:index/privateKey:PrivateKey")}
        assert keys == {"consul-server-ca-key", "consul-server-0-key", "consul-server-1-key", "consul-server-2-key"}
        # The certificate is in the user data; the key is not: it is in the server's own SSM parameter.
        files = self.files_of("consul-server-1")
        assert "consul-server-1-cert" in files["/etc/consul.d/server.pem"]
        assert "/etc/consul.d/server-key.pem" not in files
        tls_key = self.mocks.named("consul-server-1-tls-key-parameter").inputs
        assert tls_key["name"] == tls_parameter("consul-server-1")
        assert private_key("consul-server-1-key") in unwrap(tls_key["value"])

    async def test_generated_secrets_stay_secret_and_out_of_the_user_data(self) -> None:
        server = await self.make()
        assert await is_secret(server.management_token)
        assert await is_secret(server.gossip_key)
        assert await value(server.management_token) == MANAGEMENT_TOKEN
        assert await value(server.gossip_key) == GOSSIP_KEY
        assert not await is_secret(server.ca_pem) and not await is_secret(server.http_addr)
        generated = [MANAGEMENT_TOKEN, GOSSIP_KEY, private_key("consul-server-ca-key")]
        generated += [private_key(f"{node}-key") for node in NODES]
        instances = self.mocks.of_type("aws:ec2/instance:Instance")
        assert [i.name for i in instances] == [f"{node}-instance" for node in NODES]
        for instance in instances:
            # Not a secret any more: nothing in it is.
            user_data = instance.inputs["userDataBase64"]
            assert isinstance(user_data, str) and SECRET_MARKER not in user_data
            text = decode_user_data(user_data)
            for secret in generated:
                assert secret not in text, (instance.name, secret)
            assert "GENERATED-" not in text
            assert instance.inputs["metadataOptions"]["httpTokens"] == "required"

    async def test_the_gossip_key_and_tls_keys_are_secure_string_parameters(self) -> None:
        await self.make()
        parameters = {p.name: p.inputs for p in self.mocks.of_type(PARAMETER)}
        assert sorted(parameters) == sorted(
            ["consul-server-gossip-key-parameter", *(f"{node}-tls-key-parameter" for node in NODES)]
        )
        expected = {"consul-server-gossip-key-parameter": (GOSSIP_PARAMETER, GOSSIP_KEY)}
        expected |= {f"{node}-tls-key-parameter": (tls_parameter(node), private_key(f"{node}-key")) for node in NODES}
        for name, (path, secret) in expected.items():
            inputs = parameters[name]
            assert inputs["type"] == "SecureString" and inputs["name"] == path
            assert inputs["keyId"] == SECRETS_KEY_ARN  # the stack's own key, not aws/ssm
            # Sent to the engine as a secret, holding the generated value.
            assert isinstance(inputs["value"], dict) and inputs["value"][SECRET_MARKER]
            assert secret in unwrap(inputs["value"])
        assert unwrap(parameters["consul-server-gossip-key-parameter"]["value"]) == GOSSIP_KEY
        (key,) = self.mocks.of_type("aws:kms/key:Key")
        assert key.name == "consul-server-secrets-key" and key.inputs["enableKeyRotation"] is True
        assert "policy" not in key.inputs  # the default key policy: IAM policies decide who decrypts

    async def test_the_api_address_is_a_fixed_public_ip_on_server_zero(self) -> None:
        server = await self.make()
        assert await value(server.http_addr) == "https://203.0.113.147:8501"
        # On server 0's own network interface, not its instance: a replaced instance leaves it in place.
        association = self.mocks.named("consul-server-api-ip-association")
        assert association.inputs["allocationId"] == "eipalloc-consul-server-api-ip"
        assert association.inputs["networkInterfaceId"] == "consul-server-0-eni-id"
        assert "instanceId" not in association.inputs
        # Keyed by name: mock registrations arrive in a different order on each run.
        subnets = {
            i.name: i.inputs["subnetId"] for i in self.mocks.of_type("aws:ec2/networkInterface:NetworkInterface")
        }
        assert subnets == {
            "consul-server-0-eni": "subnet-0aaaaaaaaaaaaaaaa",
            "consul-server-1-eni": "subnet-0bbbbbbbbbbbbbbbb",
            "consul-server-2-eni": "subnet-0aaaaaaaaaaaaaaaa",
        }
        assert [s["nodeName"] for s in await value(server.servers)] == [f"consul-server-{i}" for i in range(3)]

    async def test_servers_find_each_other_by_tag_with_describe_instances(self) -> None:
        server = await self.make()
        for instance in self.mocks.of_type("aws:ec2/instance:Instance"):
            assert instance.inputs["tags"][JOIN_TAG_KEY] == "consul-tproxy-vms-test"
        auto_join = [p for p in self.mocks.of_type(ROLE_POLICY) if p.name.endswith("-auto-join")]
        assert [p.name for p in auto_join] == [f"{node}-auto-join" for node in NODES]
        for policy in auto_join:
            assert json.loads(policy.inputs["policy"]) == json.loads(AUTO_JOIN_POLICY)
        assert server.retry_join == [f"provider=aws tag_key={JOIN_TAG_KEY} tag_value=consul-tproxy-vms-test"]

    async def test_each_server_has_its_own_role_reading_only_its_own_secrets(self) -> None:
        await self.make()
        roles = {r.name: r.inputs for r in self.mocks.of_type("aws:iam/role:Role")}
        assert sorted(roles) == [f"{node}-role" for node in NODES]  # no shared role any more
        profiles = {p.name: p.inputs for p in self.mocks.of_type("aws:iam/instanceProfile:InstanceProfile")}
        assert sorted(profiles) == [f"{node}-profile" for node in NODES]
        policies = {p.name: p.inputs for p in self.mocks.of_type(ROLE_POLICY)}
        assert sorted(policies) == sorted(
            f"{node}-{kind}" for node in NODES for kind in ("auto-join", "login", "secrets")
        )
        for node in NODES:
            role = roles[f"{node}-role"]
            assert role["path"] == IAM_PATH == "/consul-tproxy-vms/test/"
            # The node tag names the node identity its aws-iam login gets.
            assert role["tags"][identity.NODE_TAG] == node
            assert profiles[f"{node}-profile"]["role"] == f"{node}-role"
            assert self.mocks.named(f"{node}-instance").inputs["iamInstanceProfile"] == f"{node}-profile"
            assert all(policies[f"{node}-{kind}"]["role"] == f"{node}-role-id" for kind in ("login", "secrets"))
            own_arn = f"arn:aws:iam::123456789012:role{IAM_PATH}{node}-role"
            assert json.loads(policies[f"{node}-login"]["policy"]) == {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": ["iam:GetRole"], "Resource": [own_arn]}],
            }
            reads, decrypt = json.loads(policies[f"{node}-secrets"]["policy"])["Statement"]
            assert reads["Effect"] == "Allow" and reads["Action"] == ["ssm:GetParameter"]
            assert sorted(reads["Resource"]) == sorted(
                [f"{SSM_ARN}{GOSSIP_PARAMETER}", f"{SSM_ARN}{tls_parameter(node)}"]
            )
            others = [f"{SSM_ARN}{tls_parameter(other)}" for other in NODES if other != node]
            assert not set(others) & set(reads["Resource"])
            # The parameters' own key: SSM decrypts with the caller's rights (not the account's aws/ssm
            # key), and only for this server's own parameters (SSM's encryption context names each).
            assert decrypt == {
                "Effect": "Allow",
                "Action": ["kms:Decrypt"],
                "Resource": [SECRETS_KEY_ARN],
                "Condition": {"StringEquals": {"kms:EncryptionContext:PARAMETER_ARN": reads["Resource"]}},
            }

    async def test_security_group_admits_exactly_the_mesh_and_the_admins(self) -> None:
        server = await self.make(admin_cidrs=["198.51.100.7/32", "203.0.113.0/24"])
        # Without the stack's gate the mesh members have no way to the API (no bootstrap window).
        assert [r.inputs["fromPort"] for r in self.mocks.of_type(INGRESS)].count(8501) == 2
        await value(server.admit_mesh_to_api([]).id)
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
            ("tcp", 8501, "sg-0mesh"),
            ("udp", 8301, "sg-0mesh"),
            ("udp", 8302, "consul-server-sg-id"),
        ]
        # Mesh VMs log in (and read the gossip key) over the HTTPS API before their agent runs.
        mesh = self.mocks.named("consul-server-mesh-https").inputs
        assert (mesh["fromPort"], mesh["toPort"], mesh["referencedSecurityGroupId"]) == (8501, 8501, "sg-0mesh")
        assert "cidrIpv4" not in mesh
        # The groups are the server's network interface's, kept across instance replacements.
        interface = self.mocks.named("consul-server-0-eni")
        assert interface.inputs["securityGroups"] == ["consul-server-sg-id", "sg-0mesh"]
        assert "vpcSecurityGroupIds" not in self.mocks.named("consul-server-0-instance").inputs

    async def test_each_server_keeps_its_data_address_and_image_apart_from_its_instance(self) -> None:
        await self.make(ami_id="ami-0fedcba9876543210")
        for index, zone in enumerate(["us-east-1a", "us-east-1b", "us-east-1a"]):
            node = f"consul-server-{index}"
            data = self.mocks.named(f"{node}-data").inputs
            assert (data["availabilityZone"], data["encrypted"], data["type"]) == (zone, True, "gp3")
            attachment = self.mocks.named(f"{node}-data-attachment").inputs
            assert attachment == {
                "deviceName": "/dev/sdf",
                "volumeId": stand_in_volume_id(f"{node}-data"),
                "instanceId": f"{node}-instance-id",
                "stopInstanceBeforeDetaching": True,
            }
            instance = self.mocks.named(f"{node}-instance").inputs
            assert instance["primaryNetworkInterface"] == {
                "networkInterfaceId": f"{node}-eni-id",
                "deleteOnTermination": False,
            }
            assert instance["ami"] == "ami-0fedcba9876543210" and "subnetId" not in instance
            # Every server has a public address of its own (packages at boot); server 0's is the API's.
            public = "consul-server-api-ip" if index == 0 else f"{node}-public-ip"
            association = "consul-server-api-ip-association" if index == 0 else f"{node}-public-ip-association"
            assert self.mocks.named(association).inputs["allocationId"] == f"eipalloc-{public}"

    async def test_each_server_has_a_gate_watching_its_instance(self) -> None:
        server = await self.make()
        assert [await value(gate.node_name) for gate in server.gates] == [f"consul-server-{i}" for i in range(3)]
        for index in range(3):
            gate = self.mocks.named(f"consul-server-{index}-ready").inputs
            assert gate["http_addr"] == "https://203.0.113.147:8501"
            assert gate["node_name"] == f"consul-server-{index}"
            assert gate["triggers"] == [f"consul-server-{index}-instance-id", "t3.small"]
            assert SECRET_MARKER in gate["token"]
        names = [urn.rsplit("::", 1)[-1] for urn in await value([r.urn for r in server.api_access])]
        # The admin rules only: the mesh members' 8501 rule carries no request of the deployer's.
        assert sorted(names) == ["consul-server-api-ip-association", "consul-server-https-0"]

    async def test_mesh_vms_log_in_at_each_servers_private_https_address(self) -> None:
        server = await self.make()
        servers = await value(server.servers)
        addrs = await value(server.private_https_addrs)
        assert addrs == [f"https://{s['privateIp']}:8501" for s in servers]
        # Each server's own network interface's address (the mocks' stand-in), kept across replacements.
        hosts = [stand_in_host(f"{node}-eni") for node in NODES]
        assert addrs == [f"https://10.42.{h // 250}.{h % 250 + 4}:8501" for h in hosts]
        assert len(set(addrs)) == 3

    async def test_certificates_renew_ahead_of_expiry(self) -> None:
        await self.make()
        for cert in self.mocks.of_type("tls:index/locallySignedCert:LocallySignedCert"):
            assert cert.inputs["earlyRenewalHours"] == 90 * 24
            assert cert.inputs["validityPeriodHours"] == 2 * 365 * 24

    async def test_children_are_parented_to_the_component_and_named_after_it(self) -> None:
        await self.make(count=1)
        children = [r for r in self.mocks.resources if r.name != "consul-server"]
        assert children
        for child in children:
            assert child.name.startswith("consul-server-"), child.name
            assert self.mocks.parents[child.name].endswith(f"${PROJECT}:index:ConsulServer::consul-server")
        assert self.config_of("consul-server-0")["bootstrap_expect"] == 1


def test_servers_wait_for_each_other_and_for_the_network_path() -> None:
    """The recorded dependencies: the one-at-a-time chain, and the route before anything on the API."""

    def declare() -> ConsulServer:
        gateway = aws.ec2.InternetGateway("net-igw", vpc_id="vpc-0aaaaaaaaaaaaaaaa")
        route = aws.ec2.Route("net-default-route", route_table_id="rtb-0", gateway_id=gateway.id)
        server = ConsulServer("consul-server", server_args(network_path=[gateway, route], protect_data=True))
        gate = aws.ec2.Vpc(
            "stand-in-gate", cidr_block="10.9.0.0/16", opts=pulumi.ResourceOptions(depends_on=server.api_access)
        )
        server.admit_mesh_to_api([gate])
        return server

    record = lifecycle.run(declare, MeshMocks()).record

    def urn(name: str) -> str:
        return lifecycle.urn_named(record, name)

    assert urn("consul-server-0-ready") not in record[urn("consul-server-0-instance")].needs
    for index in (1, 2):
        assert urn(f"consul-server-{index - 1}-ready") in record[urn(f"consul-server-{index}-instance")].dependencies
    for index in range(3):
        gate = record[urn(f"consul-server-{index}-ready")]
        assert {
            urn("net-igw"),
            urn(f"consul-server-{index}-data-attachment"),
            urn("consul-server-https-0"),
        } <= gate.needs
        assert urn(f"consul-server-{index}-instance") in gate.property_dependencies["triggers"]
        data = record[urn(f"consul-server-{index}-data")].options
        assert data.retain_on_delete and data.protect  # protect on request (protect_data)
        assert record[urn(f"consul-server-{index}-instance")].options.delete_before_replace
    assert urn("net-igw") in record[urn("consul-server-api-ip-association")].dependencies
    for index in range(3):
        node = f"consul-server-{index}"
        # Its first boot runs apt (the route to the internet, its public address) and reads its
        # parameters with its role (their key, the role's policies through the profile).
        association = "consul-server-api-ip-association" if index == 0 else f"{node}-public-ip-association"
        instance = record[urn(f"{node}-instance")].dependencies
        assert {
            urn(n)
            for n in (
                "net-igw",
                "net-default-route",
                association,
                "consul-server-gossip-key-parameter",
                f"{node}-tls-key-parameter",
                "consul-server-secrets-key",
                f"{node}-profile",
            )
        } <= instance
        profile = record[urn(f"{node}-profile")].dependencies
        assert {urn(f"{node}-{kind}") for kind in ("auto-join", "login", "secrets")} <= profile
    # The mesh members' API rule waits for the gate (which bootstraps ACLs); the gate never for it.
    mesh_rule = urn("consul-server-mesh-https")
    assert urn("stand-in-gate") in record[mesh_rule].dependencies
    assert not lifecycle.depends_transitively(record, urn("stand-in-gate"), mesh_rule)
