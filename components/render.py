"""See the mesh before paying for it: run the program offline and write what it would create.

    consul-tproxy-vms-render render --stack dev --out out/dev
    consul-tproxy-vms-render render --config my-stack.yaml --stack mine --out out/mine
    consul-tproxy-vms-render diff before.yaml Pulumi.prod.yaml

The very same program (components.program.build) runs under Pulumi's mock runtime: no network, no
credentials. Secrets never reach it: token secret IDs, the provider token and the gossip key are
clear placeholders, so nothing secret can land in the output. It writes:

    <vm>/user-data.yaml         the cloud-config cloud-init reads
    <vm>/user-data.gz.b64       what EC2 receives (user_data_base64)
    <vm>/etc/..., <vm>/usr/...  every file the VM gets, with its mode
    plan.json, plan.md          every resource: type, name, parent, inputs (stand-in values listed)
    outputs.json                the stack outputs, secrets masked
    mesh.mmd, mesh.dot          services as nodes, intentions as edges (deny dashed and red)
    mesh.svg                    when Graphviz's `dot` is installed
    render-files.json           the list of these files with their SHA-256: a later render into the
                                same --out deletes exactly these (while unchanged), and refuses a
                                directory holding anything else

and prints a summary: resources by type, user data bytes per VM against EC2's limit.

`diff` runs the program for two stack files under the lifecycle simulator (components/lifecycle.py)
and prints what an `up` of the second over the state of the first would create, update, replace and
delete, in order; its exit status tells a CI job whether anything would be replaced or deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pulumi
import yaml
from pulumi.runtime import settings
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.stack import wait_for_rpcs

from .program import build, partition_problems, preflight, resolve_admin_cidrs
from .spec import (
    PROJECT,
    SECRET_KEYS,
    IntentionSpec,
    MeshSpec,
    MeshSpecError,
    headers_label,
    load_spec,
    path_label,
    stack_name_problem,
)
from .userdata import EC2_USER_DATA_LIMIT, decode_user_data

if TYPE_CHECKING:
    from .lifecycle import Plan

ROOT = Path(__file__).resolve().parent.parent
SECRET_MARKER = "4dabf18193072939515e22adb298388d"
INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
READY = "pulumi-python:dynamic/consul-tproxy-vms:ConsulReady"
# adminCidrs "deployer" stands for this machine's address; the render never goes online to learn it.
DEPLOYER_STAND_IN = "192.0.2.1/32"
# The region the render stands in for when the stack file sets no aws:region (`pulumi up` then
# takes the provider's own default: AWS_REGION or the AWS profile's region).
DEFAULT_REGION = "us-east-1"
# An AWS region's name: <area>[-<sub-area>]-<direction>-<number>, as every partition's regionRegex in
# botocore's endpoints.json (botocore/data/endpoints.json: us-east-1, us-gov-west-1, cn-north-1,
# eu-isoe-west-1, eusc-de-east-1), lower case.
REGION_NAME = re.compile(r"[a-z]{2,4}(-[a-z]+){1,2}-[1-9][0-9]?")
# Each partition's regions, by botocore/data/endpoints.json's regionRegex (most specific first).
PARTITIONS = (
    ("aws-us-gov", re.compile(r"us-gov-")),
    ("aws-iso-b", re.compile(r"us-isob-")),
    ("aws-iso-f", re.compile(r"us-isof-")),
    ("aws-iso", re.compile(r"us-iso-")),
    ("aws-iso-e", re.compile(r"eu-isoe-")),
    ("aws-eusc", re.compile(r"eusc-")),
    ("aws-cn", re.compile(r"cn-")),
)


def partition_of(region: str) -> str:
    """The AWS partition of a region name (aws unless another partition's regionRegex matches)."""
    return next((name for name, prefix in PARTITIONS if prefix.match(region)), "aws")


def check_region(region: Any) -> str:
    """The stack's aws:region, or MeshSpecError naming the key: not a region name, or a region of a
    partition the mesh refuses at `pulumi up` (program.partition_problems)."""
    if not isinstance(region, str) or not REGION_NAME.fullmatch(region):
        raise MeshSpecError(
            [f"aws:region: {region!r} is not an AWS region name (lower case, like us-east-1 or eu-west-2)"]
        )
    problems = partition_problems(partition_of(region))
    if problems:
        raise MeshSpecError([f"{problem} ({region!r})" for problem in problems])
    return region


def zone_id_prefix(region: str) -> str:
    """A stand-in for a region's zone-ID prefix (us-east-1 -> use1): AWS's own abbreviations
    differ (ap-southeast-2 is apse2), and the program never reads zone IDs."""
    area, *middle, number = region.split("-")
    return area + "".join(part[0] for part in middle) + number


def placeholder(what: str) -> str:
    """A stand-in for a secret, written with characters every file format takes as they are."""
    return "secret-not-rendered:" + re.sub(r"[^A-Za-z0-9.-]+", "-", what).strip("-")


def stand_in_host(name: str) -> int:
    """A number from 0 to 4095 that depends on `name` alone: the host part of stand-in addresses."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:2], "big") % 4096


def stand_in_volume_id(name: str) -> str:
    """An EBS volume id in EC2's form (vol- and 17 hex digits) that depends on `name` alone: a
    server's boot finds its data volume by this id, and refuses anything else."""
    return "vol-" + hashlib.sha256(name.encode()).hexdigest()[:17]


class PlanMocks(pulumi.runtime.Mocks):
    """Answers for every resource and invoke the program uses, and a record of what it declared."""

    def __init__(self, region: str = DEFAULT_REGION) -> None:
        self.region = region
        """The region every region invoke answers, its zones <region>a/b/c, and ARNs name."""
        self.partition = partition_of(region)
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []
        self.parents: dict[str, str] = {}
        """Resource name -> URN of its parent (MockResourceArgs does not carry it)."""
        self.parent_of: dict[tuple[str, str], str] = {}
        """(type, name) -> URN of its parent: names alone repeat across types."""

    def forget(self) -> None:
        """Drop the record of an earlier run: the mocks then record the next run alone."""
        self.resources.clear()
        self.calls.clear()
        self.parents.clear()
        self.parent_of.clear()

    def secret_id(self, accessor_id: str) -> str:
        return placeholder(f"SecretID of {accessor_id.removeprefix('accessor-')}")

    def generated(self, what: str) -> str:
        """A value the stack generates in secret (a token, a key): never a real one."""
        return placeholder(what)

    def pem(self, kind: str, name: str) -> str:
        return f"-----BEGIN {kind}-----\n{self.generated(name) if 'KEY' in kind else name}\n-----END {kind}-----\n"

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        state = dict(args.inputs)
        # Stand-in values are derived from the resource's name, never from arrival order: the engine
        # registers resources in a different order on each run, and the render must be repeatable.
        host = stand_in_host(args.name)
        if args.typ in (INSTANCE, "aws:ec2/networkInterface:NetworkInterface"):
            state.setdefault("privateIp", f"10.42.{host // 250}.{host % 250 + 4}")
        if args.typ == INSTANCE:
            state["publicIp"] = f"198.51.100.{host % 250 + 4}"
        elif args.typ == "aws:ec2/eip:Eip":
            state.update(publicIp=f"203.0.113.{host % 250 + 4}", allocationId=f"eipalloc-{args.name}")
        elif args.typ == "random:index/randomUuid:RandomUuid":
            state["result"] = self.generated(f"{args.name} (uuid)")
        elif args.typ == "random:index/randomId:RandomId":
            # Hex digits derived from the name: a stand-in the render can repeat, never a real id.
            state["hex"] = hashlib.sha256(args.name.encode()).hexdigest()[: 2 * int(args.inputs["byteLength"])]
        elif args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            # A new template's first version, its default (EC2 CreateLaunchTemplate; terraform-provider-aws
            # ec2_launch_template.go); an update makes the next one.
            state.update(latestVersion=1, defaultVersion=1)
            state["arn"] = f"arn:{self.partition}:ec2:{self.region}:123456789012:launch-template/{args.name}-id"
        elif args.typ == "aws:autoscaling/group:Group":
            # The group's id is its name (terraform-provider-aws autoscaling/group.go: d.SetId(asgName)).
            name = state.setdefault("name", args.name)
            state["arn"] = (
                f"arn:{self.partition}:autoscaling:{self.region}:123456789012:autoScalingGroup:"
                f"00000000-0000-0000-0000-000000000000:autoScalingGroupName/{name}"
            )
            return name, state
        elif args.typ == "random:index/randomBytes:RandomBytes":
            state["base64"] = self.generated(f"{args.name} (base64)")
        elif args.typ == "tls:index/privateKey:PrivateKey":
            state["privateKeyPem"] = self.pem("EC PRIVATE KEY", f"{args.name} private key")
            state["publicKeyPem"] = self.pem("PUBLIC KEY", args.name)
        elif args.typ in ("tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert"):
            state["certPem"] = self.pem("CERTIFICATE", args.name)
        elif args.typ == "tls:index/certRequest:CertRequest":
            state["certRequestPem"] = self.pem("CERTIFICATE REQUEST", args.name)
        elif args.typ == READY:
            state["leader"] = "10.42.0.10:8300"
        elif args.typ == "consul:index/aclToken:AclToken":
            state["accessorId"] = f"accessor-{args.name}"
        elif args.typ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
            state.setdefault("name", args.name)
            state["arn"] = f"arn:{self.partition}:iam::123456789012:role{state.get('path', '/')}{args.name}"
        elif args.typ == "aws:kms/key:Key":
            state["arn"] = f"arn:{self.partition}:kms:{self.region}:123456789012:key/{args.name}"
        elif args.typ == "aws:ssm/parameter:Parameter":
            state["arn"] = f"arn:{self.partition}:ssm:{self.region}:123456789012:parameter{state['name']}"
        elif args.typ == "aws:ebs/volume:Volume":
            return stand_in_volume_id(args.name), state
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        self.calls.append(args)
        if args.token == "consul:index/getAclTokenSecretId:getAclTokenSecretId":
            return {"accessorId": args.args["accessorId"], "secretId": self.secret_id(args.args["accessorId"])}
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0123456789abcdef0", "name": "ubuntu-noble-24.04"}
        if args.token == "aws:ec2/getVpc:getVpc":
            return {"id": "vpc-0default0000000000"}
        if args.token == "aws:ec2/getSubnets:getSubnets":
            return {"ids": ["subnet-0bbbbbbbbbbbbbbbb", "subnet-0aaaaaaaaaaaaaaaa"]}
        if args.token == "aws:ec2/getSubnet:getSubnet":
            return {"id": args.args["id"], "vpcId": "vpc-0fromsubnet000000", "availabilityZone": self.zones_of()[0]}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            arn = f"arn:{self.partition}:iam::123456789012:user/deployer"
            return {"accountId": "123456789012", "arn": arn, "userId": "AIDA"}
        if args.token == "aws:index/getPartition:getPartition":
            # Only the aws partition gets this far (check_region refuses the others, as `up` does).
            return {"partition": self.partition, "dnsSuffix": "amazonaws.com"}
        if args.token == "aws:index/getRegion:getRegion":
            return {"name": self.region, "region": self.region}
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            prefix = zone_id_prefix(self.region)
            return {"names": self.zones_of(), "zoneIds": [f"{prefix}-az{i}" for i in (1, 2, 4)]}
        return {}

    def zones_of(self) -> list[str]:
        """The stand-in zones of the region: <region>a, b and c."""
        return [f"{self.region}{letter}" for letter in "abc"]

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        """The resources of a type by name: the engine registers them in a different order each run."""
        return sorted((r for r in self.resources if r.typ == typ), key=lambda r: r.name)

    def named(self, name: str) -> pulumi.runtime.MockResourceArgs:
        (found,) = [r for r in self.resources if r.name == name]
        return found


class RecordingMonitor(MockMonitor):
    """The mock monitor, also noting each resource's parent."""

    def __init__(self, mocks: PlanMocks) -> None:
        super().__init__(mocks)
        self.recorder = mocks

    def RegisterResource(self, request: Any) -> Any:
        self.recorder.parents[request.name] = request.parent
        self.recorder.parent_of[(request.type, request.name)] = request.parent
        return super().RegisterResource(request)


def set_plan_mocks(mocks: PlanMocks, stack: str) -> None:
    # Forget RPCs of an earlier run (as pulumi.runtime.test does): they belong to a closed event loop.
    settings.SETTINGS.rpc_manager.clear()
    settings.SETTINGS.outputs.clear()
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=RecordingMonitor(mocks))


async def settle(output: Any) -> Any:
    """Resolve an Output (or data holding Outputs), then wait until every registration is done."""
    result = await pulumi.Output.from_input(output).future()
    await wait_for_rpcs()
    return result


def _map_secrets(value: Any, on_secret: Callable[[dict[str, Any]], Any]) -> Any:
    """Engine inputs with every secret-marked value passed through `on_secret`."""
    if isinstance(value, dict):
        if SECRET_MARKER in value:
            return on_secret(value)
        return {k: _map_secrets(v, on_secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_secrets(v, on_secret) for v in value]
    return value


def unwrap(value: Any) -> Any:
    """Inputs as the engine saw them, with secret values unwrapped."""
    return _map_secrets(value, lambda secret: unwrap(secret["value"]))


def masked(value: Any) -> Any:
    """Inputs for the plan, with secret values replaced by a mark and whole numbers as integers
    (the engine hands every number over as a float: a port would print as 8302.0)."""
    return _integers(_map_secrets(value, lambda _: "[secret]"))


def _integers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integers(v) for v in value]
    return value


class OneLineError(MeshSpecError):
    """A problem with what the command names (a file, a stack name), told in one line."""

    def __init__(self, message: str) -> None:
        self.problems = [message]
        ValueError.__init__(self, message)


class StackFileError(OneLineError):
    """A stack file the render cannot read: not UTF-8, not YAML, or not shaped like a stack file."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path}: {why}")


def check_stack_name(stack: Any) -> None:
    """OneLineError unless `stack` is a name Pulumi gives a stack (spec.stack_name_problem)."""
    problem = stack_name_problem(stack)
    if problem:
        raise OneLineError(problem)


class _Refused(Exception):
    """A YAML construct a stack file may not use; StackFileError names the file."""


# Deeper than this, a stack file is not a hand-written config (Pulumi.yaml's own are 3-4 levels
# deep), and PyYAML's composer recurses once per level.
MAX_YAML_DEPTH = 50
# Larger than this, a stack file is refused unread: PyYAML's scanner takes about 2 µs a byte on
# the worst input (a run of "["), so this bounds the time to refuse any file at about 2 seconds.
MAX_STACK_FILE_BYTES = 1 << 20


class _StackFileLoader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded: no aliases (a recursive alias, or an "alias bomb" of a few
    lines that expands to billions of nodes, cannot be expressed, so the work is linear in the
    file's size), no explicit tags and no merge keys (whose meaning in Pulumi's own YAML reader
    the render cannot vouch for), at most MAX_YAML_DEPTH levels; and a warning for a repeated key,
    which YAML resolves silently (the last one wins)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"line {line}: uses the YAML alias *{event.anchor}: write the value out in full")
        if getattr(event, "tag", None) not in (None, "!"):
            raise _Refused(f"line {line}: has the YAML tag {event.tag}: write the value without a tag")
        if self.depth >= MAX_YAML_DEPTH:
            raise _Refused(f"line {line}: is nested more than {MAX_YAML_DEPTH} levels deep")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _Refused(f"line {line}: uses a YAML merge key (<<): write the keys out in full")
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused(f"line {line}: has a list or a map as a key")
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                warn(f"{key}: appears twice in the stack file (line {line}); the last one wins")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def is_ciphertext(value: Any) -> bool:
    """Whether Pulumi reads `value` as an encrypted one: a map of the single key `secure` holding a
    string, anywhere in a config value (pulumi/pulumi sdk/go/common/resource/config/object.go
    isSecureValue). `{secure: 1}` or `{secure: x, other: y}` are plain objects."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("secure"), str)


def _holds_ciphertext(value: Any) -> bool:
    if is_ciphertext(value):
        return True
    if isinstance(value, dict):
        return any(_holds_ciphertext(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_ciphertext(v) for v in value)
    return False


def read_stack_file(path: Path) -> Any:
    """The YAML document of a stack file, or StackFileError naming what is wrong with it."""
    try:
        if path.stat().st_size > MAX_STACK_FILE_BYTES:
            raise StackFileError(path, f"is larger than {MAX_STACK_FILE_BYTES} bytes: no stack file is that large")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        byte = err.object[err.start]
        raise StackFileError(path, f"is not UTF-8 text (byte {byte:#04x} at offset {err.start})") from None
    except OSError as err:
        raise StackFileError(path, f"cannot be read: {err.strerror}") from None
    try:
        return yaml.load(text, Loader=_StackFileLoader)
    except _Refused as err:
        raise StackFileError(path, str(err)) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = ", ".join(part for part in (err.context, err.problem) if part)
        raise StackFileError(path, f"is not YAML: {where}{what}") from None
    except yaml.YAMLError as err:
        raise StackFileError(path, f"is not YAML: {' '.join(str(err).split())}") from None


def load_stack_config(path: Path) -> dict[str, Any]:
    """This project's keys from a Pulumi stack file, without the namespace. Raises StackFileError.

    A secret key's value is never kept: `secure:` ciphertexts and plain values alike only count as
    set (plan_spec gives them placeholders): the render never needs them and must never write
    them. Another key holding a ciphertext is refused, naming it: the render cannot decrypt it,
    and `pulumi up` would run with the decrypted value, not the ciphertext.
    """
    return load_stack(path)[0]


def load_stack(path: Path) -> tuple[dict[str, Any], Any]:
    """A stack file's config (load_stack_config) and its aws:region as written (DEFAULT_REGION when
    unset; check_region judges it). Raises StackFileError."""
    raw = _config_section(path)
    return _project_config(path, raw), raw.get("aws:region", DEFAULT_REGION)


def _config_section(path: Path) -> dict[Any, Any]:
    doc = read_stack_file(path)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise StackFileError(path, f"is not a stack file: it holds a {type(doc).__name__}, not a map with config:")
    raw = doc.get("config")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise StackFileError(path, f"config: is a {type(raw).__name__}, not a map of key: value")
    return raw


def _project_config(path: Path, raw: Mapping[Any, Any]) -> dict[str, Any]:
    prefix = f"{PROJECT}:"
    config: dict[str, Any] = {}
    for key, val in raw.items():
        if not isinstance(key, str) or not key.startswith(prefix):
            continue  # another namespace's key (aws:region), or not a key Pulumi could have set
        name = key[len(prefix) :]
        if name in SECRET_KEYS:
            config[name] = {"secure": True}
        elif _holds_ciphertext(val):
            raise StackFileError(
                path,
                f"{key}: is encrypted (secure:), which the render cannot decrypt offline: "
                "write its value in plain text in a copy of the stack file for the render",
            )
        else:
            config[name] = val
    return config


def plan_spec(config: Mapping[str, Any], stack: str = "dev") -> tuple[MeshSpec, bool]:
    """The validated spec of a stack, and whether it has a gossip key. Raises MeshSpecError."""
    gossip_key = SECRET_KEYS[1]
    raw = {k: v for k, v in config.items() if k not in SECRET_KEYS}
    # Secrets are only ever present or absent here: an existing cluster's get placeholders.
    raw.update({key: placeholder(key) for key in SECRET_KEYS if key in config})
    if gossip_key in raw:
        raw[gossip_key] = base64.b64encode(b"placeholder-gossip-key-32-bytes!").decode()
    spec = resolve_admin_cidrs(load_spec(raw), lambda: DEPLOYER_STAND_IN)
    # Offline, the region's zones are unknown: `pulumi up` checks zoneCount against them.
    problems = preflight(spec, stack, zones=None)
    if problems:
        raise MeshSpecError(problems)
    for message in spec.warnings:
        warn(message)
    return spec, gossip_key in config


def plan(spec: MeshSpec, with_gossip_key: bool, stack: str, region: str = DEFAULT_REGION) -> tuple[PlanMocks, dict]:
    """Run the program for `spec` under mocks in `region`; return the record and the resolved outputs."""
    mocks = PlanMocks(region)
    program = stack_program(spec, with_gossip_key)

    async def run() -> dict:
        set_plan_mocks(mocks, stack)
        return await settle(program())

    outputs = asyncio.run(run())
    return mocks, outputs


def stack_program(spec: MeshSpec, with_gossip_key: bool) -> Callable[[], Any]:
    """The program for `spec` as the mocks run it: secrets given as placeholders."""
    token_key, gossip_key = SECRET_KEYS

    def program() -> Any:
        token = placeholder(token_key) if spec.consul is not None else None
        return build(spec, token, placeholder(gossip_key) if with_gossip_key else None)

    return program


def user_data_by_vm(mocks: PlanMocks) -> dict[str, str]:
    """Each VM's (or each group's: its launch template's) base64 user data, by the VM's name."""
    found = {r.name.removesuffix("-instance"): unwrap(r.inputs["userDataBase64"]) for r in mocks.of_type(INSTANCE)}
    for template in mocks.of_type(LAUNCH_TEMPLATE):
        found[template.name.removesuffix("-template")] = unwrap(template.inputs["userData"])
    return found


def plan_rows(mocks: PlanMocks) -> list[dict[str, Any]]:
    rows = []
    # By type and name: the engine registers resources in a different order on each run.
    for r in sorted(mocks.resources, key=lambda r: (r.typ, r.name)):
        inputs = masked(r.inputs)
        for key, suffix in (("userDataBase64", "-instance"), ("userData", "-template")):
            if key in inputs:
                size = len(base64.b64decode(unwrap(r.inputs[key])))
                inputs[key] = f"[secret: {size} bytes gzip, see {r.name.removesuffix(suffix)}/]"
        # A parent URN ends in "...$<type>::<name>"; the stack itself is no parent worth naming.
        parent = mocks.parent_of.get((r.typ, r.name)) or ""
        parent_type, _, parent_name = parent.rpartition("$")[2].partition("::")
        rows.append(
            {
                "type": r.typ,
                "name": r.name,
                "parent": f"{parent_type.rpartition(':')[2]} {parent_name}" if "$" in parent else "",
                "custom": bool(r.custom),
                "inputs": inputs,
            }
        )
    return rows


def stand_ins(mocks: PlanMocks) -> dict[str, str]:
    """Values the mock runtime makes up where AWS would answer: never real, and marked as such."""
    return {
        "AMI": "ami-0123456789abcdef0 (the newest Ubuntu 24.04 image, looked up at `pulumi up`)",
        "account and region": f"123456789012 in {mocks.region} (the stack's aws:region, else {DEFAULT_REGION};"
        " the deployer's account at `pulumi up`)",
        "availability zones": f"{', '.join(mocks.zones_of())} (the region's zones at `pulumi up`)",
        "instance addresses": "10.42.x.y private and 198.51.100.x public, derived from the resource name",
        "API address": "203.0.113.x, the Elastic IP of the servers' API",
        "adminCidrs deployer": f"{DEPLOYER_STAND_IN} (this machine's public address at `pulumi up`)",
        "secrets": "secret-not-rendered:<what> (tokens, keys and the gossip key are never rendered)",
    }


def plan_markdown(
    rows: Sequence[dict[str, Any]], stack: str, stand_in: Mapping[str, str], overview: Sequence[str] = ()
) -> str:
    lines = [f"# Plan of stack {stack}", "", *overview]
    lines += ["## Resources", "", "Rendered offline under Pulumi's mocks. Stand-in values:", ""]
    lines += [f"- {what}: {value}" for what, value in stand_in.items()]
    lines += ["", "| type | name | parent | inputs |", "|---|---|---|---|"]
    for row in rows:
        keys = ", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(row["inputs"].items()))
        lines.append(f"| `{row['type']}` | {row['name']} | {row['parent'] or '-'} | {keys.replace('|', '&#124;')} |")
    return "\n".join(lines) + "\n"


def overview(spec: MeshSpec) -> list[str]:
    """plan.md's opening: each service in the config's order (its VMs, port, protocol, upstreams,
    who may call it, its splits and the gateway's routes to it), then the gateway and the servers."""
    intentions = (*spec.intentions, *(spec.gateway.intentions() if spec.gateway else ()))
    header = ("service", "VMs", "port", "protocol", "upstreams", "called by (intentions; others denied)", "splits")
    header += ("gateway routes",)
    lines = ["## Overview", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, svc in spec.services.items():
        vms = f"{svc.instances} in an Auto Scaling group" if svc.grouped else "1"
        callers = [f"{i.source}: {intention_label(i)}" for i in intentions if i.destination == name]
        splits = [f"{s.service} {s.weight:g}%" for s in spec.splits.get(name, ())]
        routes = [label.removeprefix("route ") for _, target, label in route_edges(spec) if target == name]
        cells = [name, f"{vms} ({svc.instance_type})", str(svc.port), svc.protocol, ", ".join(svc.upstreams)]
        cells += ["; ".join(callers), ", ".join(splits), ", ".join(routes)]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    lines.append("")
    if spec.gateway is not None:
        allowed = ", ".join(spec.gateway.allow_cidrs)
        lines.append(f"API gateway: {spec.gateway.name}, port {spec.gateway.port}, open to {allowed}.")
    if spec.servers is not None:
        lines.append(
            f"Consul servers: {spec.servers.count} ({spec.servers.instance_type}), created by this stack, "
            f"datacenter {spec.datacenter}, Consul {spec.consul_version}."
        )
    elif spec.consul is not None:
        lines.append(f"Consul servers: an existing cluster at {spec.consul.http_addr}; none created.")
    return [*lines, ""]


def _cell(text: str) -> str:
    """A Markdown table cell: `|` written as its entity, `-` for nothing."""
    return text.replace("|", "&#124;") or "-"


def _label(svc: Any) -> str:
    # What a caller dials: port 80 of the virtual address, which Envoy sends on to the app's port;
    # and, for a service of many VMs, how many share that address.
    group = f" ({svc.instances} VMs, Auto Scaling group)" if svc.grouped else ""
    return f"http://{svc.virtual_hostname}{group}"


def intention_label(intention: IntentionSpec) -> str:
    """What an intention decides, as a diagram edge says it: `allow`, `deny`, or an L7 intention's
    rules in order (`L7: deny * /admin*; allow GET,HEAD /*`: the first matching rule decides)."""
    if not intention.is_l7:
        return str(intention.action)
    rules = [
        f"{p.action} {','.join(p.methods) or '*'} {path_label(p)}{headers_label(p)}" for p in intention.permissions
    ]
    return "L7: " + "; ".join(rules)


def split_edges(spec: MeshSpec) -> list[tuple[str, str, str]]:
    """(service, target, "split N%") for every service-splitter share, in the spec's order."""
    return [
        (name, split.service, f"split {split.weight:g}%")
        for name, splits in spec.splits.items()
        for split in splits
        if split.service != name
    ]


def route_edges(spec: MeshSpec) -> list[tuple[str, str, str]]:
    """(gateway, service, "route /p*" or "route =/p") for every route of the API gateway."""
    if spec.gateway is None:
        return []
    return [
        (spec.gateway.name, r.service, f"route {r.path}*" if r.match == "prefix" else f"route ={r.path}")
        for r in spec.gateway.routes
    ]


def mermaid(spec: MeshSpec, stack: str = "") -> str:
    lines = [
        "---",
        f"title: Mesh of stack {stack} (solid: allow, dashed red: deny,"
        " dotted blue: L7 rules, a split or a gateway route; default deny)",
        "---",
    ]
    lines.append("flowchart LR")
    for name, svc in spec.services.items():
        lines.append(f'  {name}["{name}<br/>{_label(svc)}"]')
    if spec.gateway is not None:
        # The way in: the browser's listener, and each route to the service it sends requests to.
        lines.append(f'  {spec.gateway.name}[["{spec.gateway.name}<br/>API gateway :{spec.gateway.port}"]]')
    deny_links, blue_links = [], []
    edges = [(i.source, i.destination, intention_label(i), i) for i in spec.intentions]
    edges += [(a, b, label, None) for a, b, label in split_edges(spec)]
    edges += [(a, b, label, None) for a, b, label in route_edges(spec)]
    for index, (source, destination, label, intention) in enumerate(edges):
        # Labels hold validated paths and methods only; `"` is still written as Mermaid's entity.
        text = label.replace('"', "#quot;")
        if intention is not None and not intention.is_l7:
            arrow = f"-- {label} -->" if label == "allow" else f"-. {label} .-x"
            if label == "deny":
                deny_links.append(str(index))
        else:
            arrow = f'-.->|"{text}"|'
            blue_links.append(str(index))
        lines.append(f"  {source} {arrow} {destination}")
    if deny_links:
        lines.append(f"  linkStyle {','.join(deny_links)} stroke:#c62828,color:#c62828")
    if blue_links:
        lines.append(f"  linkStyle {','.join(blue_links)} stroke:#1565c0,color:#1565c0")
    return "\n".join(lines) + "\n"


def _dot_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def graphviz(spec: MeshSpec, stack: str = "") -> str:
    lines = [
        "digraph mesh {",
        "  rankdir=LR;",
        f'  label="Mesh of stack {stack}\\nsolid green: allow, dashed red: deny,'
        ' dotted blue: L7 rules, a split or a gateway route; no arrow: denied by default";',
        "  labelloc=t;",
        "  node [shape=box, style=rounded];",
    ]
    for name, svc in spec.services.items():
        lines.append(f'  "{name}" [label="{name}\\n{_label(svc)}"];')
    for i in spec.intentions:
        if i.is_l7:
            style = 'color="#1565c0", style=dotted'
        elif i.action == "allow":
            style = 'color="#2e7d32"'
        else:
            style = 'color="#c62828", style=dashed, arrowhead=tee'
        lines.append(f'  "{i.source}" -> "{i.destination}" [label="{_dot_string(intention_label(i))}", {style}];')
    for source, destination, label in split_edges(spec) + route_edges(spec):
        lines.append(f'  "{source}" -> "{destination}" [label="{_dot_string(label)}", color="#1565c0", style=dotted];')
    if spec.gateway is not None:
        gateway = spec.gateway
        lines.append(f'  "{gateway.name}" [label="{gateway.name}\\nAPI gateway :{gateway.port}", shape=cds];')
    return "\n".join([*lines, "}"]) + "\n"


@dataclass(frozen=True)
class OutFile:
    """One file the render writes: its content and mode."""

    content: str | bytes
    mode: int = 0o644

    @property
    def data(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content


def vm_files(vm: str, user_data_b64: str) -> dict[str, OutFile]:
    """One VM's user data, and every file it writes on the VM, by path under `out`."""
    text = decode_user_data(user_data_b64)
    files = {f"{vm}/user-data.yaml": OutFile(text), f"{vm}/user-data.gz.b64": OutFile(user_data_b64 + "\n")}
    for file in yaml.safe_load(text)["write_files"]:
        # Keep the VM's mode, but let the reader read it.
        mode = int(str(file.get("permissions", "0644")), 8) | 0o600
        files[f"{vm}/{file['path'].lstrip('/')}"] = OutFile(file["content"], mode)
    return files


def user_data_sizes(user_data_b64: str) -> tuple[int, int]:
    """(plain bytes, gzip bytes) of a VM's user data."""
    return len(decode_user_data(user_data_b64).encode()), len(base64.b64decode(user_data_b64))


SECRET_OUTPUTS = ("consulManagementToken", "consulGossipKey")


def masked_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The stack outputs as `pulumi stack output --json` would show them, secrets masked."""
    return {k: "[secret]" if k in SECRET_OUTPUTS else _integers(v) for k, v in outputs.items()}


def render_files(
    spec: MeshSpec, stack: str, mocks: PlanMocks, outputs: Mapping[str, Any], dot: str | None
) -> dict[str, OutFile]:
    """Every file of a render, by path under `out`: what write_render writes, and all it may ever
    delete again (the one list of the render's files)."""
    files: dict[str, OutFile] = {}
    for vm, data in sorted(user_data_by_vm(mocks).items()):
        files.update(vm_files(vm, data))
    rows = plan_rows(mocks)
    files["plan.json"] = OutFile(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    files["plan.md"] = OutFile(plan_markdown(rows, stack, stand_ins(mocks), overview(spec)))
    files["outputs.json"] = OutFile(json.dumps(masked_outputs(outputs), indent=2, sort_keys=True) + "\n")
    files["mesh.mmd"] = OutFile(mermaid(spec, stack))
    files["mesh.dot"] = OutFile(graphviz(spec, stack))
    if dot:
        svg = subprocess.run([dot, "-Tsvg"], input=files["mesh.dot"].data, capture_output=True, check=False)
        if svg.returncode == 0:
            files["mesh.svg"] = OutFile(svg.stdout)
        else:
            warn(f"Graphviz `dot` failed ({' '.join(svg.stderr.decode(errors='replace').split())}): mesh.svg not drawn")
    for path in files:
        if not _safe_relative(path):
            raise ValueError(f"render: {path!r} is not a plain path under --out")
    return files


# The render's list of what it wrote in --out, with each file's SHA-256: a later render deletes
# exactly these files, and only while they are as written; anything else in --out is refused.
MANIFEST = "render-files.json"


class OutRefused(Exception):
    """--out is not a directory the render made (or a new one): nothing was written or deleted."""


def _safe_relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and "\\" not in path and all(part not in ("", ".", "..") for part in parts)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def earlier_render(out: Path) -> dict[str, str]:
    """The files an earlier render wrote in `out` (path -> SHA-256), after checking that `out`
    holds nothing else: {} for a new or empty directory; OutRefused naming what does not belong."""
    if out.is_symlink():
        raise OutRefused(f"--out {out}: is a symbolic link: give the directory itself, or a new path")
    if not out.exists():
        return {}
    if not out.is_dir():
        raise OutRefused(f"--out {out}: is not a directory: give a new path, or an earlier render's directory")
    entries = sorted(out.iterdir())
    if not entries:
        return {}
    written = _read_manifest(out)
    if written is None:
        raise OutRefused(
            f"--out {out}: holds {entries[0].name} and is no render's directory (no {MANIFEST}): "
            "the render writes only into a new or empty directory, or over its own earlier render"
        )
    folders = {str(Path(p).parent) for p in written} - {"."}
    folders |= {str(parent) for f in folders for parent in Path(f).parents if str(parent) != "."}
    for base, dirs, names in os.walk(out):
        for name in sorted(dirs) + sorted(names):
            entry = Path(base) / name
            rel = entry.relative_to(out).as_posix()
            if rel == MANIFEST:
                continue
            if entry.is_symlink():
                raise OutRefused(f"--out {out}: {rel} is a symbolic link, which no render writes: remove it first")
            if entry.is_dir():
                if rel not in folders:
                    raise OutRefused(f"--out {out}: {rel}/ is not the earlier render's: move it out first")
            elif rel not in written or not entry.is_file():
                raise OutRefused(f"--out {out}: {rel} is not the earlier render's: move it out first")
            elif _digest(entry.read_bytes()) != written[rel]:
                raise OutRefused(f"--out {out}: {rel} was changed since the render wrote it: move it out first")
    return written


def _read_manifest(out: Path) -> dict[str, str] | None:
    manifest = out / MANIFEST
    if manifest.is_symlink() or not manifest.is_file():
        return None
    try:
        written = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise OutRefused(f"--out {out}: {MANIFEST} is not a render's list of files: remove it first") from None
    if not isinstance(written, dict) or not all(
        isinstance(p, str) and _safe_relative(p) and p != MANIFEST and isinstance(d, str) for p, d in written.items()
    ):
        raise OutRefused(f"--out {out}: {MANIFEST} is not a render's list of files: remove it first")
    return written


def remove_earlier_render(out: Path, written: Mapping[str, str]) -> None:
    """Delete the files of an earlier render (checked by earlier_render), then the folders they
    leave empty, then the list itself: nothing else."""
    for rel in sorted(written):
        (out / rel).unlink(missing_ok=True)
    folders = {parent for rel in written for parent in Path(rel).parents if str(parent) != "."}
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        if (out / folder).is_dir() and not any((out / folder).iterdir()):
            (out / folder).rmdir()
    (out / MANIFEST).unlink(missing_ok=True)


def write_render(out: Path, files: Mapping[str, OutFile]) -> None:
    """Write `files` into `out`, replacing an earlier render there; the list of them first, so
    that even a render cut short can be replaced by the next one."""
    remove_earlier_render(out, earlier_render(out))
    out.mkdir(parents=True, exist_ok=True)
    listed = {"files": {rel: _digest(f.data) for rel, f in sorted(files.items())}}
    _create(out / MANIFEST, OutFile(json.dumps(listed, indent=2) + "\n"))
    for rel, file in sorted(files.items()):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        _create(out / rel, file)


def _create(path: Path, file: OutFile) -> None:
    # A new file, never through a symbolic link, never over an existing file.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(file.data)
    path.chmod(file.mode)


def render(
    config: Mapping[str, Any],
    out: Path,
    stack: str,
    echo: Callable[[str], None] = print,
    region: str = DEFAULT_REGION,
) -> dict[str, Any]:
    """Render a stack's config into `out`, as in `region` (the stack file's aws:region). Raises
    MeshSpecError on bad config or region and OutRefused on an `out` it may not write into, all
    before writing or deleting anything."""
    check_stack_name(stack)
    check_region(region)
    spec, with_gossip = plan_spec(config, stack)
    earlier_render(out)  # refused before the program runs; checked again before deleting
    mocks, outputs = plan(spec, with_gossip, stack, region)
    dot = shutil.which("dot")
    files = render_files(spec, stack, mocks, outputs, dot)
    write_render(out, files)

    by_type = Counter(r.typ for r in mocks.resources)
    echo(f"stack {stack}: {len(mocks.resources)} resources")
    for typ, count in sorted(by_type.items()):
        echo(f"  {count:4d}  {typ}")
    echo(f"user data per VM (EC2 limit {EC2_USER_DATA_LIMIT} bytes, counted as sent: gzip):")
    sizes = {vm: user_data_sizes(data) for vm, data in sorted(user_data_by_vm(mocks).items())}
    for vm, (plain, packed) in sizes.items():
        echo(
            f"  {vm:24s} {plain:6d} bytes plain  {packed:6d} bytes gzip  ({packed / EC2_USER_DATA_LIMIT:.0%} of limit)"
        )
    echo(f"written to {out}" + ("" if dot else " (no Graphviz `dot`: mesh.svg not drawn)"))
    return {"resources": len(mocks.resources), "byType": dict(by_type), "userData": sizes}


# --- diff: what a config change does on the next `up` -----------------------------------------

ACTIONS = ("replace", "update", "create", "delete")
FAIL_ON = ("replace", "delete", "any-change")
DEFAULT_FAIL_ON = ("replace", "delete")


def diff_plan(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    stack: str,
    regions: tuple[Any, Any] = (DEFAULT_REGION, DEFAULT_REGION),
) -> Plan:
    """The lifecycle simulator's plan for an `up` of `after` over the state a first `up` of `before`
    left, in the stack's region (`regions`: each file's aws:region). Both configs and regions are
    checked before either runs: MeshSpecError."""
    # Imported here: the simulator builds on this module's mocks (lifecycle imports render).
    from .lifecycle import simulate

    check_stack_name(stack)
    region = check_region(regions[1])
    if check_region(regions[0]) != region:
        # The provider's region is part of every AWS resource's identity: a new region is a new stack.
        raise MeshSpecError(
            [f"aws:region: changes from {regions[0]!r} to {region!r}: the diff judges a change within one region"]
        )
    before_program = stack_program(*plan_spec(before, stack))
    after_program = stack_program(*plan_spec(after, stack))
    return simulate(before_program, after_program, lambda: PlanMocks(region), stack=stack)


def diff_lines(plan: Plan) -> list[str]:
    """The plan, one line per resource grouped by action, each group in the order `up` takes them
    (the wave: a change waits for the earlier waves; one wave's resources may go in parallel)."""
    counts = {action: len(plan.names(action)) for action in ACTIONS}
    lines = [", ".join(f"{count} to {action}" for action, count in counts.items())]
    if not any(counts.values()):
        return ["no changes"]
    waves = plan.order()
    record = {**plan.before, **plan.after}
    for action in ACTIONS:
        urns = [u for u in plan.urns(action) if record[u].custom]
        if not urns:
            continue
        lines.append(f"{action}:")
        for urn in sorted(urns, key=lambda u: (waves[u], record[u].type, record[u].name)):
            lines.append(f"  wave {waves[urn]:<3d} {record[urn].type}  {record[urn].name}{_diff_detail(plan, urn)}")
    lines += _diff_notes(plan)
    return lines


def _diff_detail(plan: Plan, urn: str) -> str:
    step = plan.steps[urn]
    # A replacement's order (create-before-delete unless the resource asks otherwise, as a server's
    # instance does, or its provider does, as for a group the program names), or an update that
    # starts an instance refresh.
    how = plan.how(urn)
    detail = f"  {how}" if how else ""
    if step.paths:
        detail += f"  ({', '.join(step.paths)})"
    return detail


def _diff_notes(plan: Plan) -> list[str]:
    notes = []
    if plan.blocked():
        notes.append(f"note: protected, so `pulumi up` refuses to replace or delete them: {', '.join(plan.blocked())}")
    if plan.retained():
        notes.append(
            "note: left in place, in AWS or Consul (retainOnDelete), while dropped from the state: "
            + ", ".join(plan.retained())
        )
    if plan.unmodeled_types():
        types = ", ".join(plan.unmodeled_types())
        notes.append(f"note: any change counted as a replacement (types the simulator does not model): {types}")
    return notes


def fails(plan: Plan, fail_on: Sequence[str]) -> bool:
    """Whether the plan holds a change `fail_on` names (replace, delete, any-change)."""
    found = {
        "replace": bool(plan.replaced),
        "delete": bool(plan.deleted),
        "any-change": any(plan.names(action) for action in ACTIONS),
    }
    return any(found[what] for what in fail_on)


def stack_of(*paths: Path) -> str | None:
    """The stack a file Pulumi.<stack>.yaml names (the first such of `paths`), or None."""
    for path in paths:
        if path.name.startswith("Pulumi.") and path.name.endswith(".yaml"):
            return path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    return None


def diff_main(before: Path, after: Path, stack: str | None, fail_on: Sequence[str]) -> int:
    named = stack is not None
    stack = stack if named else stack_of(after, before)
    if stack is None:
        print("error: neither file is named Pulumi.<stack>.yaml: give --stack", file=sys.stderr)
        return USAGE_ERROR
    problem = stack_name_problem(stack)
    if problem:
        print(f"error: {problem}" + ("" if named else " (from the file's name: give --stack)"), file=sys.stderr)
        return USAGE_ERROR
    try:
        (config_before, region_before), (config_after, region_after) = (load_stack(p) for p in (before, after))
        plan = diff_plan(config_before, config_after, stack, (region_before, region_after))
    except OneLineError as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except MeshSpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return CONFIG_ERROR
    print(f"stack {stack}: {before} -> {after}")
    for line in diff_lines(plan):
        print(line)
    return CHANGES_REFUSED if fails(plan, fail_on) else 0


# Exit statuses: argparse's own for a command line it cannot use, kept for every file or name the
# command line gives that the render cannot use (--out, the stack file, the stack name); 1 for a
# stack config the mesh refuses (the problems listed, as `pulumi up` lists them).
# `diff` exits 3 when the plan holds a change --fail-on names (by default a replacement or a
# delete), 0 when it does not.
USAGE_ERROR = 2
CONFIG_ERROR = 1
CHANGES_REFUSED = 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="consul-tproxy-vms-render",
        description=__doc__.split("\n\n")[0],
        epilog="exit status: 0 done (diff: nothing --fail-on names); 1 a stack config the mesh refuses; "
        "2 a command line, file or stack name that cannot be used; 3 (diff) the change replaces or "
        "deletes something (or what --fail-on names)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser(
        "render",
        help="write every VM's files, the plan and a mesh diagram",
        description="Run the program for a stack under Pulumi's mocks (offline: no cloud account, no "
        "secrets) and write into --out every VM's files, plan.md (an overview, then every resource), "
        "plan.json, outputs.json and the mesh diagram. AWS answers are stand-ins, listed in plan.md; "
        f"the region is the stack file's aws:region ({DEFAULT_REGION} when unset).",
    )
    cmd.add_argument("--stack", help="stack name (names resources and tags): reads Pulumi.<stack>.yaml by default")
    cmd.add_argument("--config", type=Path, help="a stack config file to read instead (stack name from --stack)")
    cmd.add_argument(
        "--out",
        type=Path,
        required=True,
        help=f"a new or empty directory to write into, or an earlier render's (listed in its {MANIFEST}), "
        "which is replaced; any other is refused",
    )
    check = sub.add_parser(
        "diff",
        help="what a config change would create, update, replace and delete on the next `up`, offline",
        description="Run the program for BEFORE and AFTER under Pulumi's mocks and print what an `up` of "
        "AFTER over the state BEFORE left would create, update, replace and delete, in order (wave 1 "
        "first). Only the config change is judged: not drift in AWS, not a newer Ubuntu image, not a "
        "certificate due for renewal.",
    )
    check.add_argument("before", type=Path, metavar="BEFORE.yaml", help="the stack file as deployed")
    check.add_argument("after", type=Path, metavar="AFTER.yaml", help="the stack file as changed")
    check.add_argument("--stack", help="stack name (names resources): by default from a file named Pulumi.<stack>.yaml")
    check.add_argument(
        "--fail-on",
        action="append",
        choices=FAIL_ON,
        help="exit 3 when the change holds this (repeatable; default: replace and delete)",
    )
    args = parser.parse_args(argv)
    if args.command == "diff":
        return diff_main(args.before, args.after, args.stack, args.fail_on or DEFAULT_FAIL_ON)
    if args.stack is None and args.config is None:
        parser.error("give --stack, --config or both")

    named = args.stack is not None
    stack = args.stack if named else args.config.name.removeprefix("Pulumi.").removesuffix(".yaml")
    problem = stack_name_problem(stack)
    if problem:
        print(f"error: {problem}" + ("" if named else " (from the file's name: give --stack)"), file=sys.stderr)
        return USAGE_ERROR
    # The stack file in the working directory (a project using the package), else this checkout's.
    path = args.config or next(
        (p for p in (Path.cwd() / f"Pulumi.{stack}.yaml", ROOT / f"Pulumi.{stack}.yaml") if p.is_file()),
        Path.cwd() / f"Pulumi.{stack}.yaml",
    )
    if not path.is_file():
        print(f"error: no stack config at {path}", file=sys.stderr)
        return USAGE_ERROR
    try:
        config, region = load_stack(path)
        render(config, args.out, stack, region=region)
    except (OneLineError, OutRefused) as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except MeshSpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return CONFIG_ERROR
    except OSError as err:
        # Writing --out failed (a parent that is a file, no permission, a full disk).
        print(f"error: --out {args.out}: {err.strerror}: {err.filename}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
