"""See the mesh before paying for it: run the program offline and write what it would create.

    python -m components.render render --stack dev --out out/dev
    python -m components.render render --config my-stack.yaml --stack mine --out out/mine

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

and prints a summary: resources by type, user data bytes per VM against EC2's limit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import settings
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.stack import wait_for_rpcs

from .program import build, preflight, resolve_admin_cidrs
from .spec import PROJECT, SECRET_KEYS, MeshSpec, MeshSpecError, load_spec
from .userdata import EC2_USER_DATA_LIMIT, decode_user_data

ROOT = Path(__file__).resolve().parent.parent
SECRET_MARKER = "4dabf18193072939515e22adb298388d"
INSTANCE = "aws:ec2/instance:Instance"
READY = "pulumi-python:dynamic/consul-tproxy-vms:ConsulReady"
# adminCidrs "deployer" stands for this machine's address; the render never goes online to learn it.
DEPLOYER_STAND_IN = "192.0.2.1/32"


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

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []
        self.parents: dict[str, str] = {}
        """Resource name -> URN of its parent (MockResourceArgs does not carry it)."""
        self.parent_of: dict[tuple[str, str], str] = {}
        """(type, name) -> URN of its parent: names alone repeat across types."""

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
            state["arn"] = f"arn:aws:iam::123456789012:role{state.get('path', '/')}{args.name}"
        elif args.typ == "aws:kms/key:Key":
            state["arn"] = f"arn:aws:kms:us-east-1:123456789012:key/{args.name}"
        elif args.typ == "aws:ssm/parameter:Parameter":
            state["arn"] = f"arn:aws:ssm:us-east-1:123456789012:parameter{state['name']}"
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
            return {"id": args.args["id"], "vpcId": "vpc-0fromsubnet000000", "availabilityZone": "us-east-1a"}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": "123456789012", "arn": "arn:aws:iam::123456789012:user/deployer", "userId": "AIDA"}
        if args.token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com"}
        if args.token == "aws:index/getRegion:getRegion":
            return {"name": "us-east-1", "region": "us-east-1"}
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {
                "names": ["us-east-1a", "us-east-1b", "us-east-1c"],
                "zoneIds": ["use1-az1", "use1-az2", "use1-az4"],
            }
        return {}

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


class _NoDuplicatesLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys without a word; a stack file with one is a mistake."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                warn(f"{key}: appears twice in the stack file (line {key_node.start_mark.line + 1}); the last one wins")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_stack_config(path: Path) -> dict[str, Any]:
    """This project's keys from a Pulumi stack file, without the namespace.

    `secure:` ciphertexts are never kept, only the fact that the key is set; plan_spec then drops
    every secret key's value, plain or not: the render never needs them and must never write them.
    """
    doc = yaml.load(path.read_text(), Loader=_NoDuplicatesLoader) or {}
    prefix = f"{PROJECT}:"
    config = {}
    for key, val in (doc.get("config") or {}).items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if isinstance(val, dict) and set(val) == {"secure"}:
            config[name] = {"secure": True}
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


def plan(spec: MeshSpec, with_gossip_key: bool, stack: str) -> tuple[PlanMocks, dict]:
    """Run the program for `spec` under mocks; return the record and the resolved outputs."""
    mocks = PlanMocks()

    async def run() -> dict:
        set_plan_mocks(mocks, stack)
        token_key, gossip_key = SECRET_KEYS
        token = placeholder(token_key) if spec.consul is not None else None
        outputs = build(spec, token, placeholder(gossip_key) if with_gossip_key else None)
        return await settle(outputs)

    outputs = asyncio.run(run())
    return mocks, outputs


def user_data_by_vm(mocks: PlanMocks) -> dict[str, str]:
    return {r.name.removesuffix("-instance"): unwrap(r.inputs["userDataBase64"]) for r in mocks.of_type(INSTANCE)}


def plan_rows(mocks: PlanMocks) -> list[dict[str, Any]]:
    rows = []
    # By type and name: the engine registers resources in a different order on each run.
    for r in sorted(mocks.resources, key=lambda r: (r.typ, r.name)):
        inputs = masked(r.inputs)
        if "userDataBase64" in inputs:
            size = len(base64.b64decode(unwrap(r.inputs["userDataBase64"])))
            inputs["userDataBase64"] = f"[secret: {size} bytes gzip, see {r.name.removesuffix('-instance')}/]"
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


# Values the mock runtime makes up where AWS would answer: never real, and marked as such.
STAND_INS = {
    "AMI": "ami-0123456789abcdef0 (the newest Ubuntu 24.04 image, looked up at `pulumi up`)",
    "account and region": "123456789012 in us-east-1 (the deployer's at `pulumi up`)",
    "availability zones": "us-east-1a, us-east-1b, us-east-1c (the region's zones at `pulumi up`)",
    "instance addresses": "10.42.x.y private and 198.51.100.x public, derived from the resource name",
    "API address": "203.0.113.x, the Elastic IP of the servers' API",
    "adminCidrs deployer": f"{DEPLOYER_STAND_IN} (this machine's public address at `pulumi up`)",
    "secrets": "secret-not-rendered:<what> (tokens, keys and the gossip key are never rendered)",
}


def plan_markdown(rows: Sequence[dict[str, Any]], stack: str) -> str:
    lines = [f"# Plan of stack {stack}", "", "Rendered offline under Pulumi's mocks. Stand-in values:", ""]
    lines += [f"- {what}: {value}" for what, value in STAND_INS.items()]
    lines += ["", "| type | name | parent | inputs |", "|---|---|---|---|"]
    for row in rows:
        keys = ", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(row["inputs"].items()))
        lines.append(f"| `{row['type']}` | {row['name']} | {row['parent'] or '-'} | {keys.replace('|', '&#124;')} |")
    return "\n".join(lines) + "\n"


def _label(svc: Any) -> str:
    # What a caller dials: port 80 of the virtual address, which Envoy sends on to the app's port.
    return f"http://{svc.virtual_hostname}"


def mermaid(spec: MeshSpec, stack: str = "") -> str:
    lines = ["---", f"title: Mesh of stack {stack} (solid: allow, dashed red: deny, default deny)", "---"]
    lines.append("flowchart LR")
    for name, svc in spec.services.items():
        lines.append(f'  {name}["{name}<br/>{_label(svc)}"]')
    deny_links = []
    for index, i in enumerate(spec.intentions):
        arrow = f"-- {i.action} -->" if i.action == "allow" else f"-. {i.action} .-x"
        lines.append(f"  {i.source} {arrow} {i.destination}")
        if i.action == "deny":
            deny_links.append(str(index))
    if deny_links:
        lines.append(f"  linkStyle {','.join(deny_links)} stroke:#c62828,color:#c62828")
    return "\n".join(lines) + "\n"


def graphviz(spec: MeshSpec, stack: str = "") -> str:
    lines = [
        "digraph mesh {",
        "  rankdir=LR;",
        f'  label="Mesh of stack {stack}\\nsolid green: allow, dashed red: deny; no arrow: denied by default";',
        "  labelloc=t;",
        "  node [shape=box, style=rounded];",
    ]
    for name, svc in spec.services.items():
        lines.append(f'  "{name}" [label="{name}\\n{_label(svc)}"];')
    for i in spec.intentions:
        style = 'color="#2e7d32"' if i.action == "allow" else 'color="#c62828", style=dashed, arrowhead=tee'
        lines.append(f'  "{i.source}" -> "{i.destination}" [label="{i.action}", {style}];')
    return "\n".join([*lines, "}"]) + "\n"


def write_vm(out: Path, vm: str, user_data_b64: str) -> tuple[int, int]:
    """Write one VM's user data and its files; return (plain bytes, gzip bytes)."""
    base = out / vm
    text = decode_user_data(user_data_b64)
    base.mkdir(parents=True, exist_ok=True)
    (base / "user-data.yaml").write_text(text)
    (base / "user-data.gz.b64").write_text(user_data_b64 + "\n")
    for file in yaml.safe_load(text)["write_files"]:
        target = base / file["path"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(file["content"])
        # Keep the VM's mode, but let the reader read it.
        target.chmod(int(str(file.get("permissions", "0644")), 8) | 0o600)
    return len(text.encode()), len(base64.b64decode(user_data_b64))


SECRET_OUTPUTS = ("consulManagementToken", "consulGossipKey")


def masked_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The stack outputs as `pulumi stack output --json` would show them, secrets masked."""
    return {k: "[secret]" if k in SECRET_OUTPUTS else _integers(v) for k, v in outputs.items()}


class OutNotEmpty(Exception):
    """--out names a directory that holds something other than an earlier render."""


def fresh_out(out: Path) -> None:
    """Start from an empty `out`: an earlier render there is removed (no stale VM folders), and
    anything else is refused rather than mixed with the render."""
    if out.exists() and any(out.iterdir()):
        if not (out / "plan.json").is_file():
            raise OutNotEmpty(f"{out} is not empty and holds no earlier render (no plan.json): choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def render(config: Mapping[str, Any], out: Path, stack: str, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Render a stack's config into `out`. Raises MeshSpecError on bad config, before writing."""
    spec, with_gossip = plan_spec(config, stack)
    mocks, outputs = plan(spec, with_gossip, stack)
    fresh_out(out)

    sizes = {vm: write_vm(out, vm, data) for vm, data in sorted(user_data_by_vm(mocks).items())}
    rows = plan_rows(mocks)
    (out / "plan.json").write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    (out / "plan.md").write_text(plan_markdown(rows, stack))
    (out / "outputs.json").write_text(json.dumps(masked_outputs(outputs), indent=2, sort_keys=True) + "\n")
    (out / "mesh.mmd").write_text(mermaid(spec, stack))
    (out / "mesh.dot").write_text(graphviz(spec, stack))
    dot = shutil.which("dot")
    if dot:
        subprocess.run([dot, "-Tsvg", "-o", str(out / "mesh.svg"), str(out / "mesh.dot")], check=True)

    by_type = Counter(r.typ for r in mocks.resources)
    echo(f"stack {stack}: {len(mocks.resources)} resources")
    for typ, count in sorted(by_type.items()):
        echo(f"  {count:4d}  {typ}")
    echo(f"user data per VM (EC2 limit {EC2_USER_DATA_LIMIT} bytes, counted as sent: gzip):")
    for vm, (plain, packed) in sizes.items():
        echo(
            f"  {vm:24s} {plain:6d} bytes plain  {packed:6d} bytes gzip  ({packed / EC2_USER_DATA_LIMIT:.0%} of limit)"
        )
    echo(f"written to {out}" + ("" if dot else " (no Graphviz `dot`: mesh.svg not drawn)"))
    return {"resources": len(mocks.resources), "byType": dict(by_type), "userData": sizes}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.render", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("render", help="write every VM's files, the plan and a mesh diagram")
    cmd.add_argument("--stack", help="stack name (names resources and tags): reads Pulumi.<stack>.yaml by default")
    cmd.add_argument("--config", type=Path, help="a stack config file to read instead (stack name from --stack)")
    cmd.add_argument("--out", type=Path, required=True, help="directory to write into (an earlier render is replaced)")
    args = parser.parse_args(argv)
    if not args.stack and not args.config:
        parser.error("give --stack, --config or both")

    # The stack file in the working directory (a project using the package), else this checkout's.
    path = args.config or next(
        (p for p in (Path.cwd() / f"Pulumi.{args.stack}.yaml", ROOT / f"Pulumi.{args.stack}.yaml") if p.is_file()),
        Path.cwd() / f"Pulumi.{args.stack}.yaml",
    )
    if not path.is_file():
        print(f"error: no stack config at {path}", file=sys.stderr)
        return 2
    try:
        render(load_stack_config(path), args.out, args.stack or path.stem.removeprefix("Pulumi."))
    except (MeshSpecError, OutNotEmpty) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
