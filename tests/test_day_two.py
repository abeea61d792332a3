"""Day two: what a later `pulumi up` of the stack would replace, update, create and delete.

Each scenario runs the whole program twice under the lifecycle simulator (components/lifecycle.py):
a first `up` of one config, then an `up` (or a preview) of another over the state it left, and
asserts the engine's plan. Some scenarios then swap one protection out and show the plan the issue
describes coming back, so each protection is shown to be what makes its scenario pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from components import ec2, lifecycle, program
from components.lifecycle import REPLACE, SAME, UPDATE
from components.network import MeshNetwork
from components.userdata import decode_user_data
from tests.lifecycle import ADMIN, DEMO, first_up, named, of_type, plan, stack_program
from tests.mocks import CONSUL_TOKEN, MeshMocks

NOTHING: dict[str, list[str]] = {"replaced": [], "updated": [], "created": [], "deleted": []}
INSTANCE = "aws:ec2/instance:Instance"
NEWER_IMAGE = "ami-0ffffffffffffff01"
DYNAMIC = "pulumi-python:dynamic/consul-tproxy-vms"
THREE = {**DEMO, "serverCount": 3}
WITH_DB = {
    **DEMO,
    "services": {**DEMO["services"], "db": {"port": 5432, "protocol": "tcp"}},
    "intentions": [*DEMO["intentions"], {"source": "api", "destination": "db", "action": "allow"}],
}
EXISTING = {
    **DEMO,
    "adminCidrs": [],
    "consulHttpAddr": "https://10.0.1.10:8501",
    "consulRetryJoin": ["10.0.1.10"],
    "consulToken": CONSUL_TOKEN,
    "vpcId": "vpc-0aaaaaaaaaaaaaaaa",
    "subnetIds": ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"],
}


SERVER_IDENTITY_TYPES = (
    "aws:iam/role:Role",
    "aws:iam/rolePolicy:RolePolicy",
    "aws:iam/instanceProfile:InstanceProfile",
    "aws:ssm/parameter:Parameter",
    "aws:kms/key:Key",
)
SERVER_SECRET_PARTS = ("role", "profile", "auto-join", "login", "secrets", "tls-key-parameter")


def server_identity(record: lifecycle.Record) -> list[str]:
    """The servers' IAM roles, profiles, policies and SSM parameters (issue 12: one set per server)."""
    return sorted(
        r.name for r in record.values() if r.type in SERVER_IDENTITY_TYPES and r.name.startswith("consul-server")
    )


def touched(plan: lifecycle.Plan) -> set[str]:
    """Every resource the plan replaces, updates, creates or deletes."""
    return {name for names in plan.changed().values() for name in names}


def belongs_to(names: list[str], *owners: str) -> bool:
    """Every name is one of `owners`' resources (its own, or the stack's entry named after it)."""
    return all(any(n.startswith(f"{o}-") or n.endswith(f"-{o}") or f"-{o}-" in n for o in owners) for n in names)


def servers_are_replaced_one_at_a_time(plan: lifecycle.Plan, count: int) -> None:
    """Server i+1 is not touched before server i's gate, updated in this plan, has seen it back."""
    record = plan.after
    for i in range(count - 1):
        gate = lifecycle.urn_named(record, f"consul-server-{i}-ready")
        assert plan.steps[gate].kind == UPDATE, f"gate {i} does not wait in this plan"
        assert lifecycle.depends_transitively(record, gate, lifecycle.urn_named(record, f"consul-server-{i}-instance"))
        following = lifecycle.urn_named(record, f"consul-server-{i + 1}-instance")
        assert lifecycle.depends_transitively(record, following, gate), f"server {i + 1} does not wait for server {i}"


# --- nothing changed, images ---------------------------------------------------------------------


@pytest.mark.parametrize("preview", [False, True])
def test_an_up_with_nothing_changed_changes_nothing(preview: bool) -> None:
    assert plan(DEMO, DEMO, preview=preview).changed() == NOTHING


def test_a_newer_ubuntu_release_replaces_nothing() -> None:
    newer = plan(THREE, THREE, latest_image=NEWER_IMAGE)
    assert newer.changed() == NOTHING
    assert newer.step("image").kind == SAME


def test_a_new_explicit_image_replaces_every_vm_and_the_servers_one_at_a_time() -> None:
    moved = plan({**THREE, "amiId": "ami-0aaaaaaaaaaaaaaa1"}, {**THREE, "amiId": "ami-0aaaaaaaaaaaaaaa2"})
    assert sorted(n for n in moved.replaced if n.endswith("-instance")) == [
        "api-instance",
        "consul-server-0-instance",
        "consul-server-1-instance",
        "consul-server-2-instance",
        "web-instance",
    ]
    assert moved.step("image").kind == UPDATE
    servers_are_replaced_one_at_a_time(moved, 3)


# --- services and intentions ----------------------------------------------------------------------

# The mesh gate (components/mesh_ready.py) waits again whenever the VMs, the services or the
# intentions change: it is updated (its update only waits), never replaced.
MESH_GATE = "mesh-ready"


@pytest.mark.parametrize("name", ["aaa", "zzz"])
def test_adding_a_service_creates_its_resources_and_moves_nothing(name: str) -> None:
    grown = plan(DEMO, {**DEMO, "services": {**DEMO["services"], name: {"port": 7000}}})
    assert grown.replaced == [] and grown.updated == [MESH_GATE] and grown.deleted == []
    assert f"{name}-instance" in grown.created
    assert belongs_to(grown.created, name), grown.created


def test_removing_a_service_deletes_its_resources_only() -> None:
    shrunk = plan(WITH_DB, DEMO)
    assert shrunk.replaced == [] and shrunk.updated == [MESH_GATE] and shrunk.created == []
    assert "db-instance" in shrunk.deleted and "intentions-db" in shrunk.deleted
    assert belongs_to(shrunk.deleted, "db"), shrunk.deleted


def test_renaming_a_service_is_a_delete_and_a_create_of_that_service_only() -> None:
    renamed = {**DEMO, "services": {**DEMO["services"], "store": {"port": 5432, "protocol": "tcp"}}}
    renamed["intentions"] = [*DEMO["intentions"], {"source": "api", "destination": "store", "action": "allow"}]
    moved = plan(WITH_DB, renamed)
    assert moved.replaced == [] and moved.updated == [MESH_GATE]
    assert belongs_to(moved.deleted, "db") and belongs_to(moved.created, "store")
    assert "store-instance" in moved.created and "db-instance" in moved.deleted


def test_intentions_added_flipped_and_removed_touch_only_their_entries() -> None:
    added = plan(DEMO, WITH_DB)
    flipped = plan(DEMO, {**DEMO, "intentions": [{**DEMO["intentions"][0], "action": "deny"}]})
    removed = plan(DEMO, {**DEMO, "intentions": []})
    assert flipped.changed() == {**NOTHING, "updated": ["intentions-api", MESH_GATE]}
    assert removed.changed() == {**NOTHING, "updated": [MESH_GATE], "deleted": ["intentions-api"]}
    assert "intentions-db" in added.created and added.replaced == [] and added.updated == [MESH_GATE]


def user_data(record: lifecycle.Record, vm: str) -> str:
    return decode_user_data(named(record, f"{vm}-instance").inputs["userDataBase64"])


def test_a_vm_s_user_data_is_the_same_for_every_instance_of_its_service() -> None:
    """Issue 12: a VM's user data holds no token, gossip key or node name (written at boot from the
    instance id), so every instance of a service boots from the same bytes, and the stack renders
    the same bytes on every run of the same config."""
    first = first_up(DEMO).record
    again = lifecycle.run(stack_program(DEMO), MeshMocks()).record
    for vm in ("api", "web"):
        instance = named(first, f"{vm}-instance")
        assert instance.inputs["userDataBase64"] == named(again, f"{vm}-instance").inputs["userDataBase64"]
        # Nothing secret in it: it is not a Pulumi secret any more (preview --diff shows it).
        assert "userDataBase64" not in instance.secret_inputs
        # It depends on stack-wide things only (the servers' interfaces, the CA), none of the VM's own.
        deps = {lifecycle.name_of(u) for u in instance.property_dependencies.get("userDataBase64", ())}
        assert not [d for d in deps if d.startswith(f"{vm}-")], deps
        assert instance.id is not None and instance.id not in user_data(first, vm)
    # A second instance of the service (a new image replaces the VM) boots from the very same user data.
    moved = plan({**DEMO, "amiId": "ami-0aaaaaaaaaaaaaaa1"}, {**DEMO, "amiId": "ami-0aaaaaaaaaaaaaaa2"})
    for vm in ("api", "web"):
        assert moved.step(f"{vm}-instance").kind == REPLACE
        assert moved.step(f"{vm}-instance").paths == ("ami",)
        assert user_data(moved.after, vm) == user_data(moved.before, vm)


@pytest.mark.parametrize(
    ("before", "after", "kwargs"),
    [
        (THREE, {**THREE, "intentions": [{**DEMO["intentions"][0], "action": "deny"}]}, {}),
        (THREE, {**THREE, "intentions": []}, {}),
        (THREE, {**THREE, "services": {**DEMO["services"], "aaa": {"port": 7000}}}, {}),
        (THREE, {**THREE, "envoyVersion": "1.35.4"}, {}),
        (THREE, {**THREE, "adminCidrs": ["203.0.113.0/24"]}, {}),
        (THREE, {**THREE, "consulVersion": "1.22.2"}, {}),
        (THREE, {**THREE, "serverInstanceType": "t3.medium"}, {}),
        (THREE, THREE, {"renewed": [f"consul-server-{i}-cert" for i in range(3)]}),
    ],
    ids=["intention-flipped", "intentions-removed", "service-added", "envoy", "admins", "consul", "resize", "renewal"],
)
def test_what_rotates_no_secret_never_touches_a_server_s_role_or_parameters(
    before: dict[str, Any], after: dict[str, Any], kwargs: dict[str, Any]
) -> None:
    """The servers' IAM roles, profiles, policies and SSM parameters (issue 12) change only with the
    secrets or the servers themselves: mesh changes, upgrades, resizes and certificate renewals
    (a new certificate, the same TLS key) leave every one of them as it is."""
    changed = plan(before, after, **kwargs)
    identity = server_identity(changed.after)
    expected = {f"consul-server-{i}-{part}" for i in range(3) for part in SERVER_SECRET_PARTS}
    assert expected | {"consul-server-gossip-key-parameter"} <= set(identity)
    assert not touched(changed) & set(identity), sorted(touched(changed) & set(identity))
    assert all(changed.step(name).kind == SAME for name in identity)


# --- versions, servers, certificates, admin networks ------------------------------------------------


def test_a_consul_upgrade_replaces_every_vm_and_the_servers_one_at_a_time() -> None:
    upgrade = plan(THREE, {**THREE, "consulVersion": "1.22.2"})
    instances = of_type(upgrade.after, INSTANCE)
    assert sorted(n for n in upgrade.replaced if n.endswith("-instance")) == instances
    # Each server's data volume is attached anew; nothing that holds state or an address moves.
    assert [n for n in upgrade.replaced if not n.endswith("-instance")] == [
        f"consul-server-{i}-data-attachment" for i in range(3)
    ]
    assert upgrade.updated == ["consul-ready", *[f"consul-server-{i}-ready" for i in range(3)], MESH_GATE]
    servers_are_replaced_one_at_a_time(upgrade, 3)
    # Issue 12: each server's role, policies and SSM parameters are its own and hold no version:
    # a new instance borrows them unchanged.
    assert not touched(upgrade) & set(server_identity(upgrade.after))


def test_a_consul_upgrade_replaces_the_mesh_vms_after_the_last_server() -> None:
    """Consul's upgrade process: every server first, one at a time, then the client agents
    (https://developer.hashicorp.com/consul/docs/upgrade, "Standard Upgrades": "Once all the server
    agents are upgraded, begin a rollout of client agents").

    Before issue 12 the VMs waited for the last server's gate through their ACL tokens (served by
    the consul provider, which waits for the cluster gate). Since issue 12 a VM's instance needs
    nothing from Consul, so nothing orders it after the servers: this fails until the VMs' instances
    are ordered after the gates again on an upgrade (a REGRESSION, reported, not papered over).
    """
    upgrade = plan(THREE, {**THREE, "consulVersion": "1.22.2"})
    last_gate = lifecycle.urn_named(upgrade.after, "consul-server-2-ready")
    late = [
        vm
        for vm in ("api-instance", "web-instance")
        if not lifecycle.depends_transitively(upgrade.after, lifecycle.urn_named(upgrade.after, vm), last_gate)
    ]
    assert late == [], f"{late} are replaced while the servers still run the old version"


def test_an_envoy_upgrade_replaces_the_mesh_vms_only() -> None:
    upgrade = plan(DEMO, {**DEMO, "envoyVersion": "1.35.4"})
    assert upgrade.changed() == {**NOTHING, "replaced": ["api-instance", "web-instance"], "updated": [MESH_GATE]}


def test_resizing_the_servers_restarts_them_in_place_one_at_a_time() -> None:
    resized = plan(THREE, {**THREE, "serverInstanceType": "t3.medium"})
    # instance_type changes in place (the provider stops and starts the instance): no new server,
    # but each gate waits for its server before the next one is stopped.
    assert resized.replaced == [] and resized.created == [] and resized.deleted == []
    assert resized.updated == [f"consul-server-{i}-{part}" for i in range(3) for part in ("instance", "ready")]
    servers_are_replaced_one_at_a_time(resized, 3)


def test_growing_from_one_server_to_three() -> None:
    grown = plan(DEMO, THREE)
    # bootstrap_expect is in server 0's user data: it is replaced (data and address kept) first.
    # (Whether the mesh VMs are replaced too: test_growing_the_servers_replaces_no_mesh_vm.)
    assert [n for n in grown.replaced if n.startswith("consul-server")] == [
        "consul-server-0-data-attachment",
        "consul-server-0-instance",
    ]
    assert grown.updated == ["consul-ready", "consul-server-0-ready"]
    assert grown.deleted == []
    assert belongs_to(grown.created, "consul-server-1", "consul-server-2")
    # Issue 12: each new server gets its own IAM role, profile and policies (auto-join, login, its
    # own secrets) and an SSM parameter for its TLS key; server 0's and the gossip key's stay.
    parts = ("instance", "data", "eni", "cert", "ready", *SERVER_SECRET_PARTS)
    for i in (1, 2):
        assert {f"consul-server-{i}-{part}" for part in parts} <= set(grown.created)
    for kept in ("consul-server-gossip-key-parameter", *server_identity(grown.before)):
        assert grown.step(kept).kind == SAME, kept
    record = grown.after
    for i in (1, 2):
        following = lifecycle.urn_named(record, f"consul-server-{i}-instance")
        assert lifecycle.depends_transitively(
            record, following, lifecycle.urn_named(record, f"consul-server-{i - 1}-ready")
        )
    # The cluster gate now waits for three healthy voters.
    assert named(record, "consul-ready").inputs["expect_voters"] == 3


@pytest.mark.parametrize(("before", "after"), [(DEMO, THREE), (THREE, DEMO)], ids=["1-to-3", "3-to-1"])
def test_growing_the_servers_replaces_no_mesh_vm(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Before issue 12 a change of server count replaced server 0 only. Since issue 12 every mesh
    VM's user data lists each server's private HTTPS address (login.env LOGIN_HTTP_ADDRS, from
    ConsulServer.private_https_addrs), so adding or removing a server replaces EVERY mesh VM: a
    REGRESSION, reported, not papered over (this fails until the login addresses no longer follow
    the server count, e.g. a fixed address or discovery at boot)."""
    moved = plan(before, after)
    vms = [n for n in moved.replaced if n in ("api-instance", "web-instance")]
    assert vms == [], f"{vms} replaced: {[moved.step(v).paths for v in vms]} (LOGIN_HTTP_ADDRS changed)"


def test_certificate_renewal_replaces_the_servers_one_at_a_time() -> None:
    certs = [f"consul-server-{i}-cert" for i in range(3)]
    renewal = plan(THREE, THREE, renewed=certs)
    assert sorted(n for n in renewal.replaced if n.endswith("-instance")) == [
        f"consul-server-{i}-instance" for i in range(3)
    ]
    assert set(certs) <= set(renewal.replaced)
    assert not [n for n in renewal.replaced if n.startswith(("web", "api"))]
    assert renewal.created == [] and renewal.deleted == []
    servers_are_replaced_one_at_a_time(renewal, 3)
    # Renewal comes ahead of expiry, in the first `up` of the certificate's last 90 days.
    assert named(renewal.after, "consul-server-0-cert").inputs["earlyRenewalHours"] == 90 * 24


def test_changing_the_admin_networks_updates_rules_in_place() -> None:
    changed = plan(DEMO, {**DEMO, "adminCidrs": ["203.0.113.0/24", "198.51.100.0/24"]})
    assert changed.replaced == [] and changed.deleted == []
    assert changed.updated == ["api-ssh-0", "consul-server-https-0", "consul-server-ssh-0", "web-ssh-0"]
    assert changed.created == ["api-ssh-1", "consul-server-https-1", "consul-server-ssh-1", "web-ssh-1"]


# --- server state, preview, destroy -----------------------------------------------------------------


def test_a_single_server_keeps_its_data_volume_and_address_across_its_replacement() -> None:
    upgrade = plan(DEMO, {**DEMO, "consulVersion": "1.22.2"})
    assert upgrade.step("consul-server-0-instance").kind == REPLACE
    for kept in (
        "consul-server-0-data",
        "consul-server-0-eni",
        "consul-server-api-ip",
        "consul-server-api-ip-association",
    ):
        assert upgrade.step(kept).kind == SAME, kept
    record = upgrade.after
    instance = named(record, "consul-server-0-instance")
    interface = named(record, "consul-server-0-eni")
    assert (
        instance.inputs["primaryNetworkInterface"]["networkInterfaceId"]
        == named(first_up(DEMO).record, "consul-server-0-eni").id
    )
    assert "subnetId" not in instance.inputs and interface.inputs["subnetId"] == "network-subnet-0-id"
    # The interface is the instance's primary: the old instance goes first.
    assert instance.options.delete_before_replace
    data = named(record, "consul-server-0-data")
    assert data.options.retain_on_delete and data.inputs["encrypted"] is True
    attachment = named(record, "consul-server-0-data-attachment")
    assert attachment.inputs["volumeId"] == named(first_up(DEMO).record, "consul-server-0-data").id
    assert attachment.inputs["stopInstanceBeforeDetaching"] is True


@pytest.mark.parametrize(
    "after",
    [
        {**DEMO, "consulVersion": "1.22.2"},
        {**THREE, "consulVersion": "1.22.2"},
        {**DEMO, "envoyVersion": "1.35.4"},
        {**DEMO, "intentions": []},
    ],
    ids=["server-replaced", "three-servers-replaced", "vms-replaced", "intentions"],
)
def test_preview_shows_what_the_update_does(after: dict[str, Any]) -> None:
    before = THREE if after.get("serverCount") == 3 else DEMO
    previewed, updated = plan(before, after, preview=True), plan(before, after)
    assert previewed.changed() == updated.changed()
    # The provider's configuration is known at preview, and unchanged: its Consul objects show
    # only the changes the update makes.
    assert previewed.step("consul").kind == SAME


def test_destroy_deletes_every_consul_object_and_gate_before_the_way_to_the_api() -> None:
    record = first_up(THREE).record
    rank = lifecycle.delete_rank(lifecycle.delete_waves(record))

    def last(urns: list[str]) -> int:
        return max(rank[u] for u in urns)

    def first(names: list[str]) -> int:
        return min(rank[lifecycle.urn_named(record, n)] for n in names)

    consul_side = [
        urn
        for urn, r in record.items()
        if r.type.startswith("consul:") or r.type in (f"{DYNAMIC}:ConsulReady", "pulumi:providers:consul")
    ]
    server_gates = [urn for urn, r in record.items() if r.type == f"{DYNAMIC}:ServerReady"]
    assert len(consul_side) > 10 and len(server_gates) == 3
    way_to_the_api = [
        "network-igw",
        "network-default-route",
        "network-subnet-0-public",
        "network-subnet-1-public",
        "consul-server-api-ip-association",
        "consul-server-https-0",
    ]
    servers = [f"consul-server-{i}-{part}" for i in range(3) for part in ("instance", "data-attachment")]
    # Every Consul object, the provider and the cluster gate go while the servers and the way to
    # them still stand; the server gates (whose delete does nothing) before the way to the API.
    assert last(consul_side) < first(way_to_the_api + servers)
    assert last(server_gates) < first(way_to_the_api)
    # The data volumes are left in AWS, so destroy completes without deleting Consul's state.
    assert all(named(record, f"consul-server-{i}-data").options.retain_on_delete for i in range(3))
    assert not [r.name for r in record.values() if r.options.protect]


def test_a_rotated_token_reaches_the_gate_and_the_provider() -> None:
    rotated = plan(EXISTING, {**EXISTING, "consulToken": "11111111-2222-4333-8444-rotated00000"})
    assert rotated.updated == ["consul", "consul-ready"]
    assert rotated.replaced == [] and rotated.created == [] and rotated.deleted == []


def test_the_force_new_table_knows_every_resource_type_of_the_stack() -> None:
    for config in (THREE, EXISTING):
        assert lifecycle.plan_of(first_up(config).record, first_up(config).record, {}).unmodeled_types() == []
        dynamic = {
            r.type.rsplit(":", 1)[-1] for r in first_up(config).record.values() if r.type.startswith("pulumi-python")
        }
        assert dynamic <= set(lifecycle.DYNAMIC_PROVIDERS)


# --- traffic: L7 intentions, splits, access logs and Envoy metrics (issue 19) -----------------------

LOGS_AND_METRICS = {**DEMO, "accessLogs": True, "envoyMetrics": True}
METRICS_RULES = ["api-metrics", "api-metrics-admin-0", "web-metrics", "web-metrics-admin-0"]
WITH_CANARY = {
    **DEMO,
    "services": {**DEMO["services"], "canary": {"port": 9092}},
    "intentions": [*DEMO["intentions"], {"source": "web", "destination": "canary", "action": "allow"}],
}
CANARY_SPLIT = {
    **WITH_CANARY,
    "services": {
        **WITH_CANARY["services"],
        "api": {
            **WITH_CANARY["services"]["api"],
            "splits": [{"weight": 90, "service": "api"}, {"weight": 10, "service": "canary"}],
        },
    },
}


def test_turning_access_logs_and_metrics_on_and_off_replaces_nothing() -> None:
    """A config entry and security group rules: the metrics port is kept out of the redirect on every
    VM whether metrics are on or not (userdata.redirect_exclusions), so no user data changes."""
    on = plan(DEMO, LOGS_AND_METRICS)
    assert on.changed() == {**NOTHING, "created": sorted(["defaults-proxy-defaults", *METRICS_RULES])}
    off = plan(LOGS_AND_METRICS, DEMO)
    assert off.changed() == {**NOTHING, "deleted": sorted(["defaults-proxy-defaults", *METRICS_RULES])}
    logs_then_metrics = plan({**DEMO, "accessLogs": True}, LOGS_AND_METRICS)
    assert logs_then_metrics.changed() == {**NOTHING, "updated": ["defaults-proxy-defaults"], "created": METRICS_RULES}


def test_adding_and_removing_a_split_touches_its_splitter_only() -> None:
    added = plan(WITH_CANARY, CANARY_SPLIT)
    assert added.changed() == {**NOTHING, "created": ["splits-api"]}
    reweighted = {**CANARY_SPLIT, "services": {**CANARY_SPLIT["services"]}}
    reweighted["services"]["api"] = {
        **CANARY_SPLIT["services"]["api"],
        "splits": [{"weight": 50, "service": "api"}, {"weight": 50, "service": "canary"}],
    }
    assert plan(CANARY_SPLIT, reweighted).changed() == {**NOTHING, "updated": ["splits-api"]}
    assert plan(CANARY_SPLIT, WITH_CANARY).changed() == {**NOTHING, "deleted": ["splits-api"]}


def test_an_intention_turned_l7_updates_its_entry_and_the_gate_only() -> None:
    health = [{"action": "allow", "http": {"pathExact": "/health", "methods": ["GET"]}}]
    l7 = {**DEMO, "intentions": [{"source": "web", "destination": "api", "permissions": health}]}
    assert plan(DEMO, l7).changed() == {**NOTHING, "updated": ["intentions-api", MESH_GATE]}


# --- each protection, swapped out ----------------------------------------------------------------


@contextmanager
def placement_by_position(services: list[str]) -> Iterator[None]:
    """The old placement: a VM's subnet by its position in the sorted service list."""
    original = MeshNetwork.subnet_for
    MeshNetwork.subnet_for = lambda self, key: self.subnet_ids[sorted(services).index(key) % len(self.subnet_ids)]  # type: ignore[method-assign]
    try:
        yield
    finally:
        MeshNetwork.subnet_for = original  # type: ignore[method-assign]


def by_position(config: dict[str, Any]) -> Any:
    def main() -> Any:
        with placement_by_position(list(config["services"])):
            return program.main(deployer_lookup=lambda: ADMIN)

    return stack_program(config, around=main)


def test_without_stable_placement_adding_a_service_replaces_the_others() -> None:
    grown = {**DEMO, "services": {**DEMO["services"], "aaa": {"port": 7000}}}
    first = lifecycle.run(by_position(DEMO), MeshMocks())
    moved = lifecycle.plan_after(first, by_position(grown), MeshMocks())
    assert {"api-instance", "web-instance"} <= set(moved.replaced)
    assert moved.step("web-instance").paths == ("subnetId",)


def unpinned(config: dict[str, Any]) -> Any:
    def main() -> Any:
        original = ec2.pinned_image
        # The old way: every run's lookup goes straight into the instances.
        ec2.pinned_image = lambda *a, **k: SimpleNamespace(image_id=ec2.ubuntu_image_output(None))  # type: ignore[assignment]
        try:
            return program.main(deployer_lookup=lambda: ADMIN)
        finally:
            ec2.pinned_image = original  # type: ignore[assignment]

    return stack_program(config, around=main)


def test_without_the_image_pin_a_newer_release_replaces_every_vm_and_server() -> None:
    first = lifecycle.run(unpinned(DEMO), MeshMocks())
    moved = lifecycle.plan_after(first, unpinned(DEMO), MeshMocks(), latest_image=NEWER_IMAGE)
    assert sorted(n for n in moved.replaced if n.endswith("-instance")) == of_type(moved.after, INSTANCE)
    assert moved.step("web-instance").kind == REPLACE and moved.step("web-instance").paths == ("ami",)


# --- the first `up`'s schedule: mesh VMs boot while the servers come up --------------------------

READY = f"{DYNAMIC}:ConsulReady"
# A slow readiness gate (the servers boot, install Consul, elect a leader), against a minute per
# EC2 instance and a second for everything else: figures for the model, not measurements of AWS.
SLOW_GATE_SECONDS = 900.0


def slow_gate(reg: lifecycle.Registration) -> float:
    return SLOW_GATE_SECONDS if reg.type == READY else 60.0 if reg.type == INSTANCE else 1.0


def mesh_vm_instances(record: lifecycle.Record) -> list[str]:
    return sorted(
        urn
        for urn, r in record.items()
        if r.type == INSTANCE and r.parent.endswith(f"MeshVm::{r.name[: -len('-instance')]}")
    )


@pytest.mark.parametrize("config", [DEMO, THREE], ids=["demo", "three-servers"])
def test_the_mesh_vms_are_created_before_the_readiness_gate_ends(config: dict[str, Any]) -> None:
    """Scheduled from the recorded graph (each resource starts once its parent, dependencies,
    input sources and providers exist: lifecycle.schedule), the VM instances are up long before the
    gate: only their Consul roles wait for the provider, which waits for the gate."""
    record = first_up(config).record
    times = lifecycle.schedule(record, slow_gate)
    (gate,) = [urn for urn, r in record.items() if r.type == READY]
    vms = mesh_vm_instances(record)
    assert len(vms) == len(config["services"])
    late = [lifecycle.name_of(u) for u in vms if times[u][1] >= times[gate][1]]
    assert not late, f"created only after the gate ends: {late}"
    # The Consul resources of the VMs still wait for the provider, and so for the gate.
    roles = [urn for urn, r in record.items() if r.type == "consul:index/aclRole:AclRole" and "MeshVm" in r.parent]
    assert roles and all(times[u][0] >= times[gate][1] for u in roles)


@pytest.mark.parametrize("config", [DEMO, THREE], ids=["demo", "three-servers"])
def test_mesh_members_reach_the_api_only_after_the_gate_bootstrapped_acls(config: dict[str, Any]) -> None:
    """`PUT /v1/acl/bootstrap` needs no token: the one 8501 rule for other sources than the admin
    networks (the mesh members') is created after the gate, which bootstraps ACLs through the admin
    rules alone. Scheduled from the recorded graph, the rule opens only once the gate has ended."""
    record = first_up(config).record
    (gate,) = [urn for urn, r in record.items() if r.type == READY]
    api_rules = [
        urn
        for urn, r in record.items()
        if r.type == "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule" and r.inputs.get("fromPort") == 8501
    ]
    from_members = [u for u in api_rules if "cidrIpv4" not in record[u].inputs]
    assert [lifecycle.name_of(u) for u in from_members] == ["consul-server-mesh-https"]
    (rule,) = from_members
    assert lifecycle.depends_transitively(record, rule, gate)
    assert not any(lifecycle.depends_transitively(record, gate, u) for u in from_members)
    times = lifecycle.schedule(record, slow_gate)
    assert times[rule][0] >= times[gate][1]


def test_a_zone_that_stops_offering_an_instance_type_moves_only_its_subnet() -> None:
    """The created subnets take the first zoneCount zones offering every instance type, in the
    region's order: a type the second zone lacks (as one us-east-1 zone lacks t3) moves the second
    subnet alone, and what lives in it. The move creates a subnet with the same CIDR, which AWS
    refuses while the old one exists: the subnet is deleted first (with what depends on it)."""
    mocks = MeshMocks()
    mocks.offered_in = {"t3.small": ["us-east-1a", "us-east-1c"]}
    moved = lifecycle.plan_after(first_up(DEMO), stack_program(DEMO), mocks)
    assert moved.step("network-subnet-1").kind == REPLACE and moved.step("network-subnet-0").kind == SAME
    assert named(moved.after, "network-subnet-1").inputs["availabilityZone"] == "us-east-1c"
    assert named(moved.after, "network-subnet-1").options.delete_before_replace
    in_moved = [
        s
        for s in ("web", "api")
        if named(moved.after, f"{s}-instance").inputs["subnetId"].startswith("network-subnet-1")
    ]
    assert in_moved == ["web", "api"]  # both land in subnet 1 (network.placement_index)
    assert all(moved.step(f"{s}-instance").kind == REPLACE for s in in_moved)
    assert moved.step("consul-server-0-instance").kind == SAME  # server 0 lives in subnet 0
