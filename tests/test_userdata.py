"""The user-data renderer, without Pulumi: content, order, determinism, size."""

from __future__ import annotations

import base64
import re
from dataclasses import replace

import hcl2
import pytest
import yaml

from components.spec import RedirectExclusions
from components.userdata import (
    EC2_USER_DATA_LIMIT,
    HASHICORP_KEY_FINGERPRINT,
    SCRIPTS,
    decode_user_data,
    encode_user_data,
    redirect_exclusions,
    render_cloud_config,
    render_server_cloud_config,
    server_files,
    unpack_cloud_config,
    vm_files,
)
from tests.helpers import (
    CA_PEM,
    SERVER,
    all_recipes,
    custom_app_recipe,
    grouped_recipe,
    recipe,
    server_made_recipe,
    tls_recipe,
)


def files_of(text: str) -> dict[str, str]:
    return unpack_cloud_config(text)


def test_rendering_is_byte_identical_for_identical_input() -> None:
    for the_recipe in all_recipes().values():
        first = render_cloud_config(the_recipe)
        again = render_cloud_config(replace(the_recipe))
        assert first == again
        assert encode_user_data(first) == encode_user_data(again)


def test_user_data_round_trips_through_gzip_and_base64() -> None:
    text = render_cloud_config(recipe())
    assert decode_user_data(encode_user_data(text)) == text


def test_files_in_user_data_equal_the_rendered_files() -> None:
    for the_recipe in all_recipes().values():
        doc = yaml.safe_load(render_cloud_config(the_recipe))
        rendered = vm_files(the_recipe)
        assert [(f["path"], f["content"], f["permissions"], f["owner"]) for f in doc["write_files"]] == [
            (f.path, f.content, f.permissions, f.owner) for f in rendered
        ]
        # Deferred: written after the packages (which would otherwise ship their own consul.hcl) and
        # after users and groups exist (owners root:consul, root:envoy).
        assert all(f["defer"] is True for f in doc["write_files"])


def test_boot_order_users_packages_files_then_units() -> None:
    doc = yaml.safe_load(render_cloud_config(recipe()))
    users = [u if isinstance(u, str) else u["name"] for u in doc["users"]]
    assert users == ["default", "consul", "envoy"]  # "default" keeps the image's login user
    assert doc["groups"] == ["consul", "envoy"]
    assert all(u["system"] and u["shell"] == "/usr/sbin/nologin" for u in doc["users"][1:])
    # The signing key is fetched and pinned by bootcmd, before apt is configured; no keyserver at boot
    # (tests/test_apt_key.py runs it).
    source = doc["apt"]["sources"]["hashicorp"]
    assert "keyid" not in source and "key" not in source and "signed-by=" in source["source"]
    assert f"fingerprint={HASHICORP_KEY_FINGERPRINT}" in doc["bootcmd"][0]
    # iptables is named: consul connect redirect-traffic runs it.
    assert doc["packages"][:3] == [["consul", "1.22.1-*"], ["hashicorp-envoy", "1.35.3-*"], ["iptables", "*"]]
    assert doc["package_update"] is True
    started = [cmd[-1] for cmd in doc["runcmd"] if cmd[:3] == ["systemctl", "enable", "--now"]]
    # The application starts before Envoy, whose ExecStartPre redirects traffic: after the
    # redirect, with MeshDestinationsOnly, nothing outside the mesh (apt included) is reachable.
    # The metadata guard before anything an unprivileged user runs; the login (tokens, node name,
    # gossip key) before the agent, which waits for it.
    assert started == [
        "mesh-imds-guard.service",
        "consul-login.service",
        "consul.service",
        "mesh-app.service",
        "envoy@web.service",
    ]
    assert doc["runcmd"].index(["systemctl", "restart", "systemd-resolved.service"]) < doc["runcmd"].index(
        ["systemctl", "enable", "--now", "consul.service"]
    )


def test_consul_agent_config() -> None:
    hcl = files_of(render_cloud_config(recipe()))["/etc/consul.d/consul.hcl"]
    for line in [
        'datacenter  = "dc1"',
        "server      = false",
        'client_addr = "127.0.0.1"',
        'retry_join  = ["10.0.1.10", "consul.internal"]',
        "grpc     = 8502",
        "grpc_tls = -1",
        'default_policy           = "deny"',
    ]:
        assert line in hcl, line
    # Node name, tokens and gossip key come from the boot login (node.hcl, tokens.hcl, gossip.hcl):
    # none is in the user data, and there is no default token at all.
    settings = [line for line in hcl.splitlines() if not line.lstrip().startswith("#")]
    assert not any(re.match(r"\s*(node_name|encrypt|tokens|agent|default)\s*[={]", line) for line in settings)
    assert re.search(r"connect \{\s+enabled = true\s+\}", hcl)
    assert "encrypt" not in hcl and "auto_encrypt" not in hcl and "ca_file" not in hcl


def test_tls_when_the_cluster_has_it_and_the_gossip_key_from_kv() -> None:
    files = files_of(render_cloud_config(tls_recipe()))
    hcl = files["/etc/consul.d/consul.hcl"]
    assert "encrypt" not in hcl.replace("auto_encrypt", "")
    assert re.search(r"auto_encrypt \{\s+tls = true\s+\}", hcl)
    assert 'ca_file         = "/etc/consul.d/ca.pem"' in hcl
    assert "verify_server_hostname = true" in hcl
    assert files["/etc/consul.d/ca.pem"] == CA_PEM
    login = files_of(render_cloud_config(server_made_recipe()))["/etc/consul.d/login.env"].splitlines()
    assert 'GOSSIP_KEY_PATH="consul-tproxy-vms/consul-tproxy-vms-test/gossip-key"' in login


def test_login_settings_name_the_methods_the_servers_and_their_ca() -> None:
    env = files_of(render_cloud_config(tls_recipe()))["/etc/consul.d/login.env"].splitlines()
    for line in [
        'MESH_SERVICE="web"',
        'LOGIN_METHODS="agent=consul-tproxy-vms-test-agent service=consul-tproxy-vms-test-service '
        'dns=consul-tproxy-vms-test-dns"',
        'LOGIN_SERVER_ID="consul-tproxy-vms-test"',
        'LOGIN_HTTP_ADDRS="https://10.0.1.10:8501"',
        'CONSUL_CACERT="/etc/consul.d/ca.pem"',
        'CONSUL_TLS_SERVER_NAME="server.dc1.consul"',
    ]:
        assert line in env, line


def test_service_registration_in_transparent_mode() -> None:
    hcl = files_of(render_cloud_config(recipe()))["/etc/consul.d/service-web.hcl"]
    assert 'name  = "web"' in hcl and "port  = 9090" in hcl
    assert not re.search(r"^\s*token\s*=", hcl, re.M)  # acl.tokens.config_file_service_registration
    assert 'mode = "transparent"' in hcl
    assert "port = 21000" in hcl  # a fixed public listener, so the security group can name it
    assert 'http     = "http://127.0.0.1:9090/health"' in hcl


def test_custom_app_gets_its_packages_command_and_a_tcp_check() -> None:
    the_recipe = custom_app_recipe()
    text = render_cloud_config(the_recipe)
    doc = yaml.safe_load(text)
    files = files_of(text)
    assert ["openjdk-21-jre-headless", "*"] in doc["packages"]
    assert "ExecStart=/opt/billing/bin/server --listen 127.0.0.1:8080" in files["/etc/systemd/system/mesh-app.service"]
    assert 'tcp      = "127.0.0.1:8080"' in files["/etc/consul.d/service-billing.hcl"]
    assert "/usr/local/bin/mesh-demo-app" not in files
    env = files["/etc/envoy/billing.env"]
    assert 'REDIRECT_EXCLUDE_INBOUND_PORTS="9100 20200"' in env
    assert 'REDIRECT_EXCLUDE_OUTBOUND_PORTS="5432"' in env
    assert 'REDIRECT_EXCLUDE_OUTBOUND_CIDRS="10.0.1.10/32 10.20.0.0/16 169.254.169.254/32"' in env
    assert 'REDIRECT_EXCLUDE_UIDS="1001"' in env


def test_systemd_percent_in_a_command_is_escaped() -> None:
    the_recipe = custom_app_recipe()
    app = replace(the_recipe.service.app, command="/usr/bin/date +%s")
    the_recipe = replace(the_recipe, service=replace(the_recipe.service, app=app))
    unit = files_of(render_cloud_config(the_recipe))["/etc/systemd/system/mesh-app.service"]
    assert "ExecStart=/usr/bin/date +%%s" in unit


def test_demo_app_calls_its_upstreams_by_virtual_hostname() -> None:
    files = files_of(render_cloud_config(recipe()))
    unit = files["/etc/systemd/system/mesh-app.service"]
    assert 'Environment="UPSTREAM_URIS=http://api.virtual.consul"' in unit
    assert 'Environment="LISTEN_ADDR=127.0.0.1:9090"' in unit  # loopback: only Envoy reaches it
    # The source without its comment lines (tests/test_demo_app.py runs this very copy).
    source = (SCRIPTS / "mesh-demo-app.py").read_text().splitlines()
    shipped = files["/usr/local/bin/mesh-demo-app"].splitlines()
    assert shipped[0] == source[0] and "comments removed" in shipped[1]
    assert shipped[2:] == [line for line in source[1:] if not line.lstrip().startswith("#")]


@pytest.mark.parametrize(("port", "needs_cap"), [(80, True), (1023, True), (1024, False), (9090, False)])
def test_an_app_on_a_port_below_1024_gets_that_one_capability(port: int, needs_cap: bool) -> None:
    """A DynamicUser cannot bind a port below 1024 without CAP_NET_BIND_SERVICE (capabilities(7))."""
    for the_recipe in (
        recipe(port=port),
        replace(custom_app_recipe(), service=replace(custom_app_recipe().service, port=port)),
    ):
        unit = files_of(render_cloud_config(the_recipe))["/etc/systemd/system/mesh-app.service"].splitlines()
        granted = [line for line in unit if line.startswith(("AmbientCapabilities=", "CapabilityBoundingSet="))]
        expected = ["AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]
        assert granted == (expected if needs_cap else [])


def test_the_application_and_envoy_never_reach_the_metadata_service() -> None:
    """IMDS hands the instance role's credentials to any local process, and with them a login as the VM
    (PUT /v1/acl/login needs no token): the guard runs before either starts, and their units deny it."""
    files = files_of(render_cloud_config(recipe()))
    for unit in ("mesh-app.service", "envoy@.service"):
        lines = files[f"/etc/systemd/system/{unit}"].splitlines()
        assert "IPAddressDeny=169.254.169.254/32" in lines, unit
        assert "Requires=mesh-imds-guard.service" in lines and "After=mesh-imds-guard.service" in lines, unit
    guard = files["/etc/systemd/system/mesh-imds-guard.service"].splitlines()
    assert "ExecStart=/usr/local/sbin/mesh-imds-guard consul" in guard
    assert files["/usr/local/sbin/mesh-imds-guard"].startswith("#!/bin/bash\n")
    runcmd = yaml.safe_load(render_cloud_config(recipe()))["runcmd"]
    assert runcmd[2] == ["systemctl", "enable", "--now", "mesh-imds-guard.service"]


def test_envoy_unit_and_its_environment() -> None:
    files = files_of(render_cloud_config(recipe()))
    unit = files["/etc/systemd/system/envoy@.service"]
    for line in [
        "User=envoy",
        "EnvironmentFile=/etc/envoy/%i.env",
        "ExecStartPre=+/usr/local/sbin/consul-redirect-traffic %i",
        "ExecStart=/usr/bin/consul connect envoy -sidecar-for=%i -admin-bind=127.0.0.1:19000",
        "ExecStopPost=+/usr/local/sbin/consul-cleanup-traffic",
        "Restart=on-failure",
        "RestartSec=5",
    ]:
        assert line in unit.splitlines(), line
    assert re.search(r"^After=.*consul\.service", unit, re.M)
    assert re.search(r"^Wants=.*consul\.service", unit, re.M)
    env = files["/etc/envoy/web.env"]
    # consul connect envoy does not fall back to the agent's default token: the login's service token.
    assert 'CONSUL_HTTP_TOKEN_FILE="/run/consul-login/service.token"' in env.splitlines()
    assert "CONSUL_GRPC_ADDR=127.0.0.1:8502" in env.splitlines()


def test_agent_config_files_are_not_world_readable() -> None:
    files = {f.path: f for f in vm_files(tls_recipe())}
    for path, owner in [
        ("/etc/consul.d/consul.hcl", "root:consul"),
        ("/etc/consul.d/service-web.hcl", "root:consul"),
        ("/etc/envoy/web.env", "root:envoy"),
    ]:
        assert (files[path].permissions, files[path].owner) == ("0640", owner)


def test_the_same_user_data_serves_every_instance_of_a_service() -> None:
    """Nothing per instance (no node name, no token) is in it: a launch template could carry it."""
    text = render_cloud_config(server_made_recipe())
    assert "i-" not in re.sub(r"<instance id>|[a-z]i-", "", text.split("write_files:")[1].split("content:")[0])
    assert render_cloud_config(server_made_recipe()) == text


def test_dns_forwarding_drop_in() -> None:
    conf = files_of(render_cloud_config(recipe()))["/etc/systemd/resolved.conf.d/consul.conf"]
    assert conf.splitlines()[1:] == ["[Resolve]", "DNS=127.0.0.1:8600", "DNSSEC=false", "Domains=~consul"]


def test_scripts_are_shipped_as_in_the_repository_without_their_comment_lines() -> None:
    files = files_of(render_cloud_config(recipe()))
    for path, script in [
        ("/usr/local/sbin/consul-redirect-traffic", "consul-redirect-traffic.sh"),
        ("/usr/local/sbin/consul-cleanup-traffic", "consul-cleanup-traffic.sh"),
        ("/usr/local/sbin/consul-login", "consul-login.sh"),
    ]:
        source = (SCRIPTS / script).read_text().splitlines()
        shipped = files[path].splitlines()
        code = [line for line in source[1:] if not line.lstrip().startswith("#") or "shellcheck" in line]
        assert shipped[0] == source[0] and shipped[2:] == code, script
        assert shipped[1].startswith(f"# {script} of consul-tproxy-vms")


def test_exclusions_always_keep_metadata_and_servers_reachable() -> None:
    assert redirect_exclusions(recipe()).outbound_cidrs == ("10.0.1.10/32", "169.254.169.254/32")
    auto_join = replace(recipe(), retry_join=("provider=aws tag_key=consul tag_value=dc1",))
    assert redirect_exclusions(auto_join).outbound_cidrs == ("169.254.169.254/32",)


def test_user_data_stays_far_below_the_ec2_limit_with_many_exclusions() -> None:
    many = RedirectExclusions(
        inbound_ports=tuple(range(9000, 9020)),
        outbound_ports=tuple(range(5000, 5020)),
        outbound_cidrs=tuple(f"10.{i}.0.0/16" for i in range(20)),
        uids=tuple(range(2000, 2020)),
    )
    the_recipe = replace(tls_recipe(), service=replace(tls_recipe().service, exclusions=many))
    # EC2 counts the bytes before base64: the gzip. The scripts and units are most of it (the apt key
    # is fetched at boot, not embedded); leave a quarter of the limit for what comes next.
    sent = len(base64.b64decode(encode_user_data(render_cloud_config(the_recipe))))
    assert sent < EC2_USER_DATA_LIMIT * 3 / 4


def test_a_group_vms_user_data_keeps_an_eighth_of_the_limit_free_with_many_exclusions() -> None:
    """A VM of an Auto Scaling group carries the lifecycle program, its units and settings too
    (about 2.5 KB gzipped): the lone VM's quarter of headroom does not hold for it; an eighth does."""
    many = RedirectExclusions(
        inbound_ports=tuple(range(9000, 9020)),
        outbound_ports=tuple(range(5000, 5020)),
        outbound_cidrs=tuple(f"10.{i}.0.0/16" for i in range(20)),
        uids=tuple(range(2000, 2020)),
    )
    grouped = grouped_recipe()
    the_recipe = replace(grouped, service=replace(grouped.service, exclusions=many))
    sent = len(base64.b64decode(encode_user_data(render_cloud_config(the_recipe))))
    assert sent < EC2_USER_DATA_LIMIT * 7 / 8


def test_oversized_user_data_is_refused_at_program_time() -> None:
    noise = "".join(f"{i:08x}{(i * 7919) % 65521:08x}" for i in range(4000))  # incompressible enough
    with pytest.raises(ValueError, match="over EC2's limit of 16384"):
        encode_user_data(f"#cloud-config\n# {noise}\n" * 2)


def test_envoy_reaches_its_agent_over_plaintext_grpc_on_loopback_only() -> None:
    for the_recipe in all_recipes().values():
        files = files_of(render_cloud_config(the_recipe))
        hcl = files["/etc/consul.d/consul.hcl"]
        assert re.search(r"grpc\s+= 8502\n\s+grpc_tls = -1", hcl)
        assert 'client_addr = "127.0.0.1"' in hcl and "addresses" not in hcl
        env = files[f"/etc/envoy/{the_recipe.service.name}.env"].splitlines()
        assert "CONSUL_GRPC_ADDR=127.0.0.1:8502" in env
        assert not any(line.startswith("CONSUL_GRPC_CACERT") for line in env)


def test_server_config() -> None:
    text = render_server_cloud_config(SERVER)
    doc = yaml.safe_load(text)
    assert [u["name"] for u in doc["users"][1:]] == ["consul"]
    assert doc["packages"] == [["consul", "1.22.1-*"], ["python3-boto3", "*"]]
    # The data volume is mounted and the secrets read from SSM before Consul starts (consul.service
    # requires both at every boot); the login for its agent token waits for the cluster: no-block.
    assert [cmd for cmd in doc["runcmd"] if cmd[:2] == ["systemctl", "enable"]] == [
        ["systemctl", "enable", "--now", "consul-data.service"],
        ["systemctl", "enable", "--now", "consul-server-secrets.service"],
        ["systemctl", "enable", "--now", "consul.service"],
        ["systemctl", "enable", "--now", "--no-block", "consul-server-login.service"],
    ]
    drop_in = {f.path: f.content for f in server_files(SERVER)}["/etc/systemd/system/consul.service.d/data-volume.conf"]
    assert "Requires=consul-data.service" in drop_in and "RequiresMountsFor=/var/lib/consul" in drop_in
    files = {f.path: f for f in server_files(SERVER)}
    hcl = hcl2.loads(files["/etc/consul.d/consul.hcl"].content)

    def string(value: str) -> str:
        return value.strip('"')

    assert hcl["server"] is True and hcl["bootstrap_expect"] == 3
    # No gossip key, no management or agent token: from SSM, the API bootstrap and the login.
    assert "encrypt" not in hcl and "tokens" not in hcl["acl"][0]
    acl = hcl["acl"][0]
    assert acl["enabled"] is True and string(acl["default_policy"]) == "deny"
    secrets_env = files["/etc/consul.d/secrets.env"].content.splitlines()
    assert f'TLS_KEY_PARAMETER="{SERVER.tls_key_parameter}"' in secrets_env
    assert f'GOSSIP_KEY_PARAMETER="{SERVER.gossip_key_parameter}"' in secrets_env
    tls = hcl["tls"][0]
    assert tls["internal_rpc"][0] == {
        "verify_incoming": True,
        "verify_server_hostname": True,
        **_meta(tls["internal_rpc"][0]),
    }
    assert tls["https"][0]["verify_incoming"] is False
    assert string(tls["defaults"][0]["cert_file"]) == "/etc/consul.d/server.pem"
    assert hcl["auto_encrypt"][0]["allow_tls"] is True
    assert hcl["ui_config"][0]["enabled"] is True
    assert hcl["ports"][0]["https"] == 8501 and hcl["ports"][0]["grpc"] == -1
    assert string(hcl["addresses"][0]["https"]) == "0.0.0.0" and string(hcl["client_addr"]) == "127.0.0.1"
    assert hcl["retry_join"] == [f'"{SERVER.retry_join[0]}"']
    # The Connect CA is Consul's built-in one: no CA key, no ca_config in any file.
    assert hcl["connect"][0]["enabled"] is True and string(hcl["connect"][0]["ca_provider"]) == "consul"
    assert "ca_config" not in hcl["connect"][0]
    assert "PRIVATE KEY" not in files["/etc/consul.d/consul.hcl"].content
    assert files["/etc/consul.d/server.pem"].content == SERVER.cert_pem
    assert files["/etc/consul.d/ca.pem"].content == CA_PEM


def _meta(block: dict[str, object]) -> dict[str, object]:
    """python-hcl2's bookkeeping keys, so a block can be compared whole."""
    return {k: v for k, v in block.items() if k.startswith("__")}


def test_server_user_data_holds_no_key_and_is_deterministic() -> None:
    text = render_server_cloud_config(SERVER)
    assert "-----BEGIN EC PRIVATE KEY-----\n" not in text
    assert not any(line.strip().startswith("initial_management") for line in text.splitlines())
    assert "/etc/consul.d/server-key.pem" not in {f.path for f in server_files(SERVER)}
    assert render_server_cloud_config(replace(SERVER)) == text
