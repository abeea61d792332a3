"""Test your own stack config with Pulumi's mocks, offline: the public test kit.

    from consul_tproxy_vms.testing import MESH_VM, run_stack

    def test_every_service_gets_a_vm():
        result = run_stack(Path("Pulumi.mystack.yaml"), stack="mystack")
        assert {vm.name for vm in result.of_type(MESH_VM)} == {"web", "api"}

`run_stack` validates the config exactly as `pulumi up` does (the same MeshSpecError messages),
runs the very program `pulumi up` runs (program.build) under `StackMocks`, waits until every
registration has settled, and returns what was declared (`StackResult`). Nothing goes online:
adminCidrs "deployer" becomes a documentation address (192.0.2.1/32), every invoke the components
make is answered by the mocks, and secrets (consulToken, consulGossipKey, generated tokens and keys)
are placeholders starting with `SECRET_PLACEHOLDER`, never the values a stack file holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import re
import warnings
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pulumi


@contextlib.contextmanager
def _provider_deprecations_ignored() -> Iterator[None]:
    """The provider SDKs' own DeprecationWarnings, ignored while the kit imports and runs the program:
    pulumi_consul warns on import about its getCatalog* functions and pulumi_aws about
    ec2.EncryptionControl, none of which the program uses and none a kit user can act on. Scoped to
    warnings raised in those packages' modules; every other warning reaches the user's own filters,
    which are restored on the way out."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"pulumi_(aws|consul)(\.|$)")
        yield


with _provider_deprecations_ignored():
    from .program import build, instance_architectures, preflight, region_zones, resolve_admin_cidrs, resolve_zones
    from .render import (
        DEPLOYER_STAND_IN,
        INSTANCE,
        LAUNCH_TEMPLATE,
        PlanMocks,
        _integers,
        check_stack_name,
        load_stack_config,
        placeholder,
        set_plan_mocks,
        settle,
        unwrap,
    )
    from .spec import PROJECT, SECRET_KEYS, MeshSpec, MeshSpecError, load_spec
    from .userdata import decode_user_data, unpack_cloud_config

__all__ = [
    "CONSUL_SERVER",
    "DEPLOYER_STAND_IN",
    "GROUP",
    "INSTANCE",
    "INTENTIONS",
    "LAUNCH_TEMPLATE",
    "MESH_VM",
    "SECRET_PLACEHOLDER",
    "MeshSpecError",
    "Resource",
    "StackMocks",
    "StackResult",
    "UnansweredInvoke",
    "answer_instance_type",
    "answer_offerings",
    "graviton",
    "run_stack",
]

MESH_VM = f"{PROJECT}:index:MeshVm"
"""The component type of a service's VM (named after the service)."""
CONSUL_SERVER = f"{PROJECT}:index:ConsulServer"
"""The component type of the Consul servers a stack creates."""
INTENTIONS = "consul:index/configEntryServiceIntentions:ConfigEntryServiceIntentions"
"""One `service-intentions` config entry per destination service. For a destination with a
`pathPrefix` rule its sources are all `deny`: the rules are in the generic config entry
`intentions-<destination>-entry` (type consul:index/configEntry:ConfigEntry, kind
service-intentions, its `configJson`), see components/intentions.py."""
GROUP = "aws:autoscaling/group:Group"
"""The Auto Scaling group of a service of many instances (`<service>-group`; its launch template,
LAUNCH_TEMPLATE, is `<service>-template`)."""
SECRET_PLACEHOLDER = "secret-not-rendered:"
"""How every secret value starts under the kit: no real secret is ever read or made up."""

_GOSSIP_STAND_IN = base64.b64encode(b"placeholder-gossip-key-32-bytes!").decode()


class UnansweredInvoke(RuntimeError):
    """The program made an invoke the mocks have no answer for (a new data source in a component)."""


OFFERINGS_INVOKE = "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings"
INSTANCE_TYPE_INVOKE = "aws:ec2/getInstanceType:getInstanceType"
# AWS's instance type names: <family><generation><attributes>.<size>, where the attribute "g" is
# "AWS Graviton processors" (Amazon EC2 Instance Types guide, "Instance type naming conventions");
# a1 is the first Graviton family. What AWS reports as the architectures of such a type: arm64.
_TYPE_NAME = re.compile(r"^(?P<family>[a-z]+)(?P<generation>\d+)(?P<attributes>[a-z-]*)\.")


def graviton(instance_type: str) -> bool:
    """Whether AWS's name for an instance type says AWS Graviton (arm64)."""
    match = _TYPE_NAME.match(instance_type)
    if match is None:
        return False
    return match["family"] + match["generation"] == "a1" or "g" in match["attributes"]


def answer_offerings(
    args: Mapping[str, Any], zones: Sequence[str], offered_in: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """get_instance_type_offerings as AWS answers it: one (type, zone) pair per zone of `zones`
    offering a type the filter names (`offered_in`: type -> its zones; a type it does not name is
    offered in every zone). Refuses what would not answer with zones: AWS's default location type
    is "region" (EC2 API DescribeInstanceTypeOfferings, LocationType)."""
    if args.get("locationType") != "availability-zone":
        raise UnansweredInvoke(f"{OFFERINGS_INVOKE}: locationType {args.get('locationType')!r}, not availability-zone")
    filters = {f["name"]: list(f["values"]) for f in args.get("filters") or []}
    if set(filters) != {"instance-type"}:
        raise UnansweredInvoke(f"{OFFERINGS_INVOKE}: filters {sorted(filters)}, expected instance-type alone")
    pairs = [
        (instance_type, zone)
        for instance_type in filters["instance-type"]
        for zone in zones
        if zone in offered_in.get(instance_type, zones)
    ]
    return {
        "id": "offerings",
        "instanceTypes": [t for t, _ in pairs],
        "locations": [z for _, z in pairs],
        "locationTypes": ["availability-zone" for _ in pairs],
    }


def answer_instance_type(args: Mapping[str, Any], architectures: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """get_instance_type as AWS answers it: the type's supported architectures (`architectures`
    overrides; otherwise arm64 for a Graviton name, else x86_64)."""
    instance_type = str(args.get("instanceType") or "")
    if not instance_type:
        raise UnansweredInvoke(f"{INSTANCE_TYPE_INVOKE}: no instanceType")
    reported = architectures.get(instance_type) or (["arm64"] if graviton(instance_type) else ["x86_64"])
    return {"id": instance_type, "instanceType": instance_type, "supportedArchitectures": list(reported)}


class StackMocks(PlanMocks):
    """Pulumi mocks that answer every resource and invoke the components use, offline.

    Built on the render's PlanMocks: stand-in addresses, ARNs and IDs derived from resource names
    (repeatable), placeholders for every generated secret, and a record of what was declared and
    of each resource's parent. An invoke it has no answer for raises `UnansweredInvoke` naming its
    token instead of handing the program an empty result. `zones` are the availability zones the
    region is taken to have, `offered_in` the zones offering an instance type (a type not named is
    offered in every zone), both checked against zoneCount as `pulumi up` does; `architectures`
    what AWS reports for an instance type (default: arm64 for a Graviton name, else x86_64).
    """

    KNOWN_INVOKES = frozenset(
        {
            "consul:index/getAclTokenSecretId:getAclTokenSecretId",
            "aws:ec2/getAmi:getAmi",
            "aws:ec2/getVpc:getVpc",
            "aws:ec2/getSubnets:getSubnets",
            "aws:ec2/getSubnet:getSubnet",
            "aws:index/getCallerIdentity:getCallerIdentity",
            "aws:index/getPartition:getPartition",
            "aws:index/getRegion:getRegion",
            "aws:index/getAvailabilityZones:getAvailabilityZones",
            OFFERINGS_INVOKE,
            INSTANCE_TYPE_INVOKE,
        }
    )
    """The invokes the program makes, each answered by PlanMocks.call or here."""

    def __init__(
        self,
        zones: tuple[str, ...] = ("us-east-1a", "us-east-1b", "us-east-1c"),
        offered_in: Mapping[str, Sequence[str]] | None = None,
        architectures: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        self.zones = zones
        self.offered_in = dict(offered_in or {})
        self.architectures = dict(architectures or {})

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        """Answer an invoke like AWS or Consul would, from stand-ins; refuse unknown ones loudly."""
        if args.token not in self.KNOWN_INVOKES:
            raise UnansweredInvoke(f"StackMocks has no answer for the invoke {args.token}")
        if args.token == OFFERINGS_INVOKE:
            self.calls.append(args)
            return answer_offerings(args.args, self.zones, self.offered_in)
        if args.token == INSTANCE_TYPE_INVOKE:
            self.calls.append(args)
            return answer_instance_type(args.args, self.architectures)
        answer = super().call(args)
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            answer = {"names": list(self.zones), "zoneIds": [f"use1-az{i + 1}" for i in range(len(self.zones))]}
        return answer


@dataclass(frozen=True)
class Resource:
    """One resource (or component) the program declared, as the engine received it."""

    type: str
    """The type token, e.g. `aws:ec2/instance:Instance` or MESH_VM."""
    name: str
    """The resource's logical name."""
    inputs: dict[str, Any]
    """Its inputs (camelCase), secrets unwrapped and whole numbers as integers."""
    parent: str | None
    """The parent's name, None for a resource at the stack's top level."""
    parent_type: str | None
    """The parent's type token, None for a resource at the stack's top level."""
    custom: bool
    """True for a cloud resource, False for a component."""


@dataclass
class StackResult:
    """What a stack config declares: every resource, the resolved outputs, the spec's warnings."""

    resources: list[Resource]
    """Every resource and component, sorted by type and name (the engine's order varies per run)."""
    outputs: dict[str, Any]
    """The stack outputs, resolved (secret outputs as their placeholder values)."""
    warnings: tuple[str, ...]
    """Valid but probably unintended config, in the order the spec found it: each element one
    message (a str, one line) that opens with the config key it concerns, e.g. `"adminCidrs:
    0.0.0.0/0 opens SSH and the Consul API and UI to the whole internet"` or `"services.web.upstreams:
    ..."`; the very text `pulumi up` prints as a warning (pulumi.log.warn). Empty: nothing to warn
    about. Not Python `warnings.WarningMessage`s: the kit raises no Python warning for them."""
    spec: MeshSpec
    """The validated spec the program ran with."""
    mocks: StackMocks = field(repr=False)
    """The mocks of the run (e.g. `mocks.calls`, the invokes made). Mocks passed to another
    run_stack record that run instead: `resources` here stays this run's."""

    def of_type(self, typ: str) -> list[Resource]:
        """The resources of a type token, sorted by name."""
        return [r for r in self.resources if r.type == typ]

    def named(self, name: str, typ: str | None = None) -> Resource:
        """The one resource called `name` (of type `typ`, when names repeat across types)."""
        found = [r for r in self.resources if r.name == name and typ in (None, r.type)]
        if len(found) != 1:
            kinds = ", ".join(r.type for r in found) or "none"
            raise KeyError(f"{len(found)} resources named {name!r} (types: {kinds}); pass typ to choose")
        return found[0]

    def children(self, parent: str) -> list[Resource]:
        """The resources whose parent is called `parent` (e.g. a MeshVm's own resources)."""
        return [r for r in self.resources if r.parent == parent]

    def vms(self) -> list[str]:
        """The names of every VM (or group of VMs) that has user data: each service's MeshVm (a lone
        VM's instance, or a group's launch template), the gateway's and each Consul server's."""
        lone = [r.name.removesuffix("-instance") for r in self.of_type(INSTANCE)]
        return sorted(lone + [r.name.removesuffix("-template") for r in self.of_type(LAUNCH_TEMPLATE)])

    def user_data(self, vm: str) -> str:
        """The cloud-config text cloud-init reads on `vm` (a service name, or a server's name); for a
        service of many instances, what every VM of its group reads (its launch template's)."""
        for typ, suffix, key in ((INSTANCE, "-instance", "userDataBase64"), (LAUNCH_TEMPLATE, "-template", "userData")):
            found = [r for r in self.of_type(typ) if r.name in (f"{vm}{suffix}", vm)]
            if found:
                return decode_user_data(found[0].inputs[key])
        raise KeyError(f"no VM {vm!r}; the VMs are: {', '.join(self.vms())}")

    def files(self, vm: str) -> dict[str, str]:
        """Path -> content of every file the cloud-config of `vm` writes on it."""
        return unpack_cloud_config(self.user_data(vm))


def _parent(urn: str | None) -> tuple[str | None, str | None]:
    """(type, name) of the resource a URN names; (None, None) for the stack or no URN."""
    if not urn:
        return None, None
    parts = urn.split("::", 3)
    if len(parts) != 4:
        return None, None
    typ = parts[2].rpartition("$")[2]
    if typ == "pulumi:pulumi:Stack":
        return None, None
    return typ, parts[3]


def _validated(config: Mapping[str, Any], stack: str) -> tuple[MeshSpec, dict[str, str]]:
    """The spec `pulumi up` would run with, and the placeholder secrets; raises MeshSpecError.
    What `pulumi up` asks AWS first (the zones, the instance types' architectures) it asks of the
    mocks, which must be set."""
    raw = {k: v for k, v in config.items() if k not in SECRET_KEYS}
    secrets = {key: placeholder(key) for key in SECRET_KEYS if key in config}
    raw.update(secrets)
    gossip_key = SECRET_KEYS[1]
    if gossip_key in raw:
        # load_spec checks the gossip key's form: a well-formed stand-in, never the stack file's.
        raw[gossip_key] = _GOSSIP_STAND_IN
    spec = resolve_admin_cidrs(load_spec(raw), lambda: DEPLOYER_STAND_IN)
    zones = cache(region_zones)
    problems = preflight(spec, stack, zones, instance_architectures)
    if problems:
        raise MeshSpecError(problems)
    return resolve_zones(spec, zones), secrets


def _run_to_completion(run: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """Run the program in a fresh event loop. When it fails, the registrations it started fail too:
    their futures are collected here, quietly, rather than whenever the garbage collector next runs
    (in the middle of another test, where asyncio would log each one)."""
    failed = False

    def quiet_after_failure(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not failed:
            loop.default_exception_handler(context)

    with asyncio.Runner() as runner:
        runner.get_loop().set_exception_handler(quiet_after_failure)
        try:
            return runner.run(run())
        except Exception as err:
            failed = True
            # The traceback's frames hold the failed futures: drop them, then collect them now.
            err.__traceback__ = None
            err.__context__ = None
            error = err
    gc.collect()
    raise error


def run_stack(
    config: Mapping[str, Any] | Path | str,
    stack: str = "test",
    mocks: StackMocks | None = None,
) -> StackResult:
    """Run the program for a stack config under mocks, to completion, and return what it declared.

    `config` is the project's config without the `consul-tproxy-vms:` prefix (a mapping), or the
    path of a Pulumi.<stack>.yaml (its `consul-tproxy-vms:` keys are read; `secure:` values only
    count as set; a file that is not YAML or not a stack file raises MeshSpecError naming it).
    `stack` is the stack name, which resource names and tags carry (a name Pulumi refuses raises
    MeshSpecError). Pass `mocks` (a StackMocks, e.g. with other `zones`) to change the stand-ins;
    the same mocks may serve any number of runs, each recorded alone.

    Bad config raises MeshSpecError with the message `pulumi up` gives, before anything is
    declared. The event loop is run here (asyncio.run): call it from a plain, not async, test.
    """
    check_stack_name(stack)
    if isinstance(config, (str, Path)):
        config = load_stack_config(Path(config))
    if not isinstance(config, Mapping):
        raise MeshSpecError([f"config: {type(config).__name__} is not a mapping of key to value, nor a stack file"])
    mocks = mocks if mocks is not None else StackMocks()
    mocks.forget()  # a StackMocks reused from an earlier run records this one alone
    validated: list[MeshSpec] = []

    async def run() -> dict[str, Any]:
        set_plan_mocks(mocks, stack)
        # Before anything is declared, as `pulumi up` does: a MeshSpecError leaves no resource.
        spec, secrets = _validated(config, stack)
        validated.append(spec)
        token_key, gossip_key = SECRET_KEYS
        token = secrets.get(token_key) if spec.consul is not None else None
        return await settle(build(spec, token, secrets.get(gossip_key)))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("run_stack runs its own event loop: call it from a plain (not async) function")
    with _provider_deprecations_ignored():
        outputs = _run_to_completion(run)
    (spec,) = validated

    resources = []
    for r in sorted(mocks.resources, key=lambda r: (r.typ, r.name)):
        parent_type, parent_name = _parent(mocks.parent_of.get((r.typ, r.name)))
        resources.append(
            Resource(
                type=r.typ,
                name=r.name,
                inputs=_integers(unwrap(dict(r.inputs))),
                parent=parent_name,
                parent_type=parent_type,
                custom=bool(r.custom),
            )
        )
    return StackResult(resources=resources, outputs=_integers(outputs), warnings=spec.warnings, spec=spec, mocks=mocks)
