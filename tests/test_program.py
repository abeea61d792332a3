"""The whole stack under Pulumi's mocks: resources, wiring, secrets, outputs, blast radius."""

from __future__ import annotations

import json
from typing import Any

import pulumi

from components import program
from components.render import unwrap, user_data_by_vm
from components.spec import PROJECT
from components.userdata import decode_user_data, unpack_cloud_config
from tests.mocks import CONSUL_TOKEN, GOSSIP_KEY, STACK, MockedTestCase, demo_config, is_secret, secret_id_of, value

DEMO = {**demo_config(), "consulToken": CONSUL_TOKEN}


def user_data_of(mocks: Any, service: str) -> str:
    return decode_user_data(user_data_by_vm(mocks)[service])


class DemoStack(MockedTestCase):
    config = DEMO

    async def test_declares_the_mesh(self) -> None:
        outputs = program.main()
        await value(outputs)
        types = sorted({r.typ for r in self.mocks.resources})
        assert "aws:ec2/instance:Instance" in types
        instances = self.mocks.of_type("aws:ec2/instance:Instance")
        assert sorted(r.name for r in instances) == ["api-instance", "web-instance"]
        tokens = sorted(r.name for r in self.mocks.of_type("consul:index/aclToken:AclToken"))
        assert tokens == ["api-agent-token", "api-service-token", "web-agent-token", "web-service-token"]
        entries = self.mocks.of_type("consul:index/configEntry:ConfigEntry")
        assert sorted((r.inputs["kind"], r.inputs["name"]) for r in entries) == [
            ("mesh", "mesh"),
            ("service-defaults", "api"),
            ("service-defaults", "web"),
        ]
        assert len(self.mocks.of_type("pulumi:providers:consul")) == 1

    async def test_outputs_contract(self) -> None:
        outputs = await value(program.main())
        assert outputs["services"]["web"] == {
            "instanceId": "web-instance-id",
            "privateIp": outputs["services"]["web"]["privateIp"],
            "nodeName": "web",
            "virtualHostname": "web.virtual.consul",
            "port": 9090,
        }
        assert outputs["services"]["web"]["privateIp"].startswith("10.0.1.")
        assert outputs["services"]["api"]["virtualHostname"] == "api.virtual.consul"
        assert outputs["intentions"] == [{"source": "web", "destination": "api", "action": "allow"}]
        assert outputs["consulHttpAddr"] == "https://10.0.1.10:8501"
        assert outputs["consulDatacenter"] == "dc1"
        assert outputs["consulRetryJoin"] == ["10.0.1.10"]
        assert outputs["meshSecurityGroupId"] == "network-members-id"
        assert outputs["vpcId"] == "vpc-0default0000000000"
        assert outputs["subnetId"] == "subnet-0aaaaaaaaaaaaaaaa"  # the smallest id: a stable choice
        assert outputs["dnsPolicyName"] == f"{PROJECT}-{STACK}-dns-read"
        assert "consulGossipKey" not in outputs
        # Every output name is camelCase: other projects read them through stack references.
        for key in outputs:
            assert key[0].islower() and "_" not in key and "-" not in key, key

    async def test_no_output_carries_a_secret_in_plain_text(self) -> None:
        self.set_config({**DEMO, "consulGossipKey": GOSSIP_KEY})
        outputs = program.main()
        assert await is_secret(outputs["consulGossipKey"])
        plain = {k: v for k, v in outputs.items() if not await is_secret(v)}
        text = json.dumps(await value(plain))
        secret_ids = [
            secret_id_of(f"accessor-{svc}-{kind}-token") for svc in ("web", "api") for kind in ("agent", "service")
        ]
        for secret in [CONSUL_TOKEN, GOSSIP_KEY, *secret_ids]:
            assert secret not in text

    async def test_consul_resources_use_the_explicit_provider(self) -> None:
        await value(program.main())
        (provider,) = self.mocks.of_type("pulumi:providers:consul")
        assert provider.inputs["address"] == "10.0.1.10:8501"
        assert provider.inputs["scheme"] == "https"
        assert provider.inputs["datacenter"] == "dc1"
        assert unwrap(provider.inputs["token"]) == CONSUL_TOKEN
        consul_resources = [r for r in self.mocks.resources if r.typ.startswith("consul:index/")]
        assert consul_resources
        for resource in consul_resources:
            # A provider reference is "<urn>::<id>"; a default provider would be named default_<version>.
            assert (resource.provider or "").endswith("$pulumi:providers:consul::consul::consul-id"), resource.name

    async def test_user_data_carries_each_vms_own_tokens(self) -> None:
        await value(program.main())
        web = unpack_cloud_config(user_data_of(self.mocks, "web"))
        assert f'agent   = "{secret_id_of("accessor-web-agent-token")}"' in web["/etc/consul.d/consul.hcl"]
        assert f"CONSUL_HTTP_TOKEN={secret_id_of('accessor-web-service-token')}" in web["/etc/envoy/web.env"]
        assert secret_id_of("accessor-api-service-token") not in user_data_of(self.mocks, "web")
        instance = self.mocks.named("web-instance")
        assert instance.inputs["userDataReplaceOnChange"] is True

    async def test_gossip_key_from_config_reaches_the_agents(self) -> None:
        self.set_config({**DEMO, "consulGossipKey": GOSSIP_KEY})
        await value(program.main())
        hcl = unpack_cloud_config(user_data_of(self.mocks, "api"))["/etc/consul.d/consul.hcl"]
        assert f'encrypt     = "{GOSSIP_KEY}"' in hcl


def test_dns_policy_name_is_valid_for_consul_whatever_the_stack_name() -> None:
    assert program.dns_policy_name("dev") == f"{PROJECT}-dev-dns-read"
    assert program.dns_policy_name("team.prod") == f"{PROJECT}-team-prod-dns-read"


class BadConfig(MockedTestCase):
    async def test_bad_config_fails_before_any_resource(self) -> None:
        bad_cases = [
            {**DEMO, "services": {"Web": {"port": 9090}}},
            {**DEMO, "intentions": [{"source": "web", "destination": "db", "action": "allow"}]},
            {**DEMO, "services": {"web": {"port": 99999}}, "intentions": []},
            {k: v for k, v in DEMO.items() if k != "consulToken"},
        ]
        for config in bad_cases:
            self.set_config(config)
            with self.assertRaises(pulumi.RunError) as caught:
                program.main()
            assert "invalid stack config for consul-tproxy-vms" in str(caught.exception)
            assert self.mocks.resources == [], config

    async def test_typo_in_a_config_key_is_named(self) -> None:
        self.set_config({**DEMO, "intentionz": []})
        with self.assertRaises(pulumi.RunError) as caught:
            program.main()
        assert 'intentionz: "[]" is not a config key of consul-tproxy-vms' in str(caught.exception)
        assert self.mocks.resources == []


class BlastRadius(MockedTestCase):
    """Growing the mesh or changing intentions leaves every existing VM's user data as it was."""

    async def user_data(self, config: dict[str, Any]) -> dict[str, str]:
        self.mocks.resources.clear()
        self.set_config(config)
        await value(program.main())
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
        assert sorted(after) == ["api", "db", "web"]
        for name, data in before.items():
            assert after[name] == data, f"user data of {name} changed"

    async def test_intention_entries_change_when_intentions_do(self) -> None:
        await self.user_data({**DEMO, "intentions": [{"source": "web", "destination": "api", "action": "deny"}]})
        (entry,) = self.mocks.of_type("consul:index/configEntryServiceIntentions:ConfigEntryServiceIntentions")
        assert [(s["name"], s["action"]) for s in entry.inputs["sources"]] == [("web", "deny")]
