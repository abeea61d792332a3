"""MeshNetwork: where the VMs live, and the security group that makes a VM a mesh member."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from .groups import subnet_share
from .spec import PROJECT


@dataclass
class MeshNetworkArgs:
    subnet_ids: Sequence[str] = ()
    """Existing subnets for the VMs. Empty: the component creates a VPC and its subnets."""
    vpc_id: str | None = None
    """The existing subnets' VPC; looked up from the first subnet when not given."""
    vpc_cidr: str = "10.42.0.0/16"
    """Address range of the VPC to create."""
    subnet_cidrs: Sequence[str] = ()
    """Subnets to create, one per availability zone, in zone order (see NetworkSpec.subnet_cidrs)."""
    zones: Sequence[str] = ()
    """The availability zone of each subnet to create, in the same order: zones offering every
    instance type of the stack (program.resolve_zones). Empty: the region's available zones
    (ZONE_QUERY), in order."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Extra tags for every taggable resource."""


def placement_index(key: str, count: int) -> int:
    """Which of `count` subnets the VM named `key` goes into: a function of `key` and `count` alone.

    A subnet (and so its availability zone) forces the replacement of an EC2 instance (the AWS
    provider's `subnet_id` and `availability_zone` are force-new: terraform-provider-aws
    internal/service/ec2/ec2_instance.go). Deriving it from the VM's position in a sorted list moved
    every VM after a new name; a hash of the name never moves one for another's sake. Changing the
    number of subnets (zoneCount, subnetIds) is the deliberate act that moves VMs.
    """
    if count < 1:
        raise ValueError("placement_index: there is no subnet to place a VM in")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % count


# AWS reserves the first four and the last IPv4 address of every subnet (EC2 API Reference,
# CreateSubnet: "They're not available for your use").
AWS_RESERVED_ADDRESSES = 5


def address_problems(
    subnet_cidrs: Sequence[str], vms: Iterable[str], servers: int, groups: Mapping[str, int] | None = None
) -> list[str]:
    """Each subnet to create with fewer usable addresses than what is placed in it: a Consul
    server's own network interface (servers spread over the subnets in turn, as ConsulServer places
    them), two for each lone mesh VM (placement_index): its instance is replaced create-before-delete,
    so the new one needs an address while the old one still holds its own; and for each group of
    `groups` (service -> size), twice its share of each subnet, as an instance refresh launches new
    VMs before it terminates old ones (groups.MAX_HEALTHY_PERCENTAGE)."""
    groups = dict(groups or {})
    placed: list[list[str]] = [[] for _ in subnet_cidrs]
    for vm in sorted(vms):
        if vm not in groups:
            placed[placement_index(vm, len(subnet_cidrs))].append(vm)
    grouped = sum(2 * subnet_share(size, len(subnet_cidrs)) for size in groups.values())
    group_note = f" and {grouped} for the VMs of groups ({', '.join(sorted(groups))})" if groups else ""
    problems = []
    for index, cidr in enumerate(subnet_cidrs):
        network = ipaddress.ip_network(cidr)
        usable = network.num_addresses - AWS_RESERVED_ADDRESSES
        here = len(range(index, servers, len(subnet_cidrs)))
        needed = here + 2 * len(placed[index]) + grouped
        if needed > usable:
            problems.append(
                f"vpcCidr: subnet {index} ({cidr}, a sixteenth of vpcCidr) has {usable} usable addresses (AWS keeps "
                f"{AWS_RESERVED_ADDRESSES} of its {network.num_addresses}), but {needed} are needed: {here} for Consul "
                f"servers and 2 for each of its {len(placed[index])} mesh VMs ({', '.join(placed[index]) or 'none'})"
                f"{group_note}, one to spare for each VM while `pulumi up` replaces it: a larger vpcCidr (a lower "
                "/prefix) or more zones"
            )
    return problems


def _zone(names: list[str], index: int) -> str:
    if index >= len(names):
        raise pulumi.RunError(
            f"zoneCount: {index + 1} zones asked for, but the region has {len(names)} available: lower zoneCount"
        )
    return names[index]


# The zones the created subnets go into: available ones that need no opt-in (a fresh account has
# them all), which offer every instance type of the stack (offering_zones). program.region_zones
# asks both before anything is declared.
ZONE_QUERY: dict[str, Any] = {
    "state": "available",
    "filters": [{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
}


def offerings_query(instance_types: Iterable[str]) -> dict[str, Any]:
    """The arguments of aws.ec2.get_instance_type_offerings for the zones offering `instance_types`:
    one (instance type, zone) pair per offering. Not every zone offers every type (one us-east-1
    zone has no t3), and an instance of a type its zone does not offer fails to launch."""
    return {
        "location_type": "availability-zone",
        "filters": [{"name": "instance-type", "values": sorted(set(instance_types))}],
    }


def offering_zones(
    zone_names: Sequence[str], offerings: Iterable[tuple[str, str]], instance_types: Iterable[str]
) -> list[str]:
    """The zones of `zone_names`, in their order, that offer every one of `instance_types`, given
    the (instance type, zone) pairs of get_instance_type_offerings. Keeping the order keeps the
    zones of existing subnets: a zone drops out only where a type the stack uses is not offered."""
    wanted = set(instance_types)
    offered: dict[str, set[str]] = {}
    for instance_type, zone in offerings:
        offered.setdefault(zone, set()).add(instance_type)
    return [zone for zone in zone_names if wanted <= offered.get(zone, set())]


class MeshNetwork(pulumi.ComponentResource):
    """The VPC and subnets (created, or given), and the mesh membership security group.

    A created VPC has public subnets behind an internet gateway: the VMs install Consul and Envoy
    from HashiCorp's apt repository at boot, and Pulumi reaches the servers' API from outside. Every
    security group in the stack admits only what the mesh needs, so a public address opens nothing
    else.

    The membership group carries no rules of its own: each VM's group admits peers by membership
    of this one (Envoy's public listener, gossip, server RPC), so a new member needs no change to
    the others.
    """

    vpc_id: pulumi.Output[str]
    subnet_ids: list[pulumi.Output[str]]
    zones: list[pulumi.Output[str]]
    """The availability zone of each subnet, in the same order (EBS volumes must be in their VM's)."""
    mesh_security_group_id: pulumi.Output[str]
    path: list[pulumi.Resource]
    """What carries traffic between the deployer and the VMs: the internet gateway, the default
    route and the route-table associations (empty for given subnets: the stack does not own their
    path). Whatever Pulumi reaches over the network (the Consul API) depends on these, so
    `pulumi destroy` deletes them last, never while it still needs them."""

    def __init__(self, name: str, args: MeshNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PROJECT}:index:MeshNetwork", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        self.path = []
        if args.subnet_ids:
            self.subnet_ids = [pulumi.Output.from_input(s) for s in args.subnet_ids]
            self.zones = [
                aws.ec2.get_subnet_output(id=s, opts=pulumi.InvokeOutputOptions(parent=self)).availability_zone
                for s in args.subnet_ids
            ]
            self.vpc_id = (
                pulumi.Output.from_input(args.vpc_id)
                if args.vpc_id
                else aws.ec2.get_subnet_output(
                    id=args.subnet_ids[0], opts=pulumi.InvokeOutputOptions(parent=self)
                ).vpc_id
            )
        else:
            if not args.subnet_cidrs:
                raise ValueError("MeshNetworkArgs: give subnet_ids (existing subnets) or subnet_cidrs (to create)")
            vpc = aws.ec2.Vpc(
                f"{name}-vpc",
                cidr_block=args.vpc_cidr,
                enable_dns_support=True,
                enable_dns_hostnames=True,
                tags={**tags, "Name": f"{name}-vpc"},
                opts=child,
            )
            gateway = aws.ec2.InternetGateway(
                f"{name}-igw", vpc_id=vpc.id, tags={**tags, "Name": f"{name}-igw"}, opts=child
            )
            routes = aws.ec2.RouteTable(
                f"{name}-public", vpc_id=vpc.id, tags={**tags, "Name": f"{name}-public"}, opts=child
            )
            route = aws.ec2.Route(
                f"{name}-default-route",
                route_table_id=routes.id,
                destination_cidr_block="0.0.0.0/0",
                gateway_id=gateway.id,
                opts=child,
            )
            if args.zones and len(args.zones) < len(args.subnet_cidrs):
                raise ValueError(
                    f"MeshNetworkArgs: {len(args.subnet_cidrs)} subnets to create, {len(args.zones)} zones given"
                )
            zone_names: pulumi.Output[list[str]] = (
                pulumi.Output.from_input(list(args.zones))
                if args.zones
                else aws.get_availability_zones_output(**ZONE_QUERY, opts=pulumi.InvokeOutputOptions(parent=self)).names
            )
            self.path = [gateway, route]
            self.subnet_ids = []
            self.zones = []
            for index, cidr in enumerate(args.subnet_cidrs):
                subnet = aws.ec2.Subnet(
                    f"{name}-subnet-{index}",
                    vpc_id=vpc.id,
                    cidr_block=cidr,
                    availability_zone=zone_names.apply(lambda names, i=index: _zone(names, i)),
                    map_public_ip_on_launch=True,
                    tags={**tags, "Name": f"{name}-subnet-{index}"},
                    # A subnet that moves zone (its zone stopped offering an instance type of the
                    # stack) keeps its CIDR, which a second subnet of the VPC cannot have at the
                    # same time (EC2 CreateSubnet: InvalidSubnet.Conflict): delete it first (the
                    # engine deletes what the replacement replaces with it first).
                    opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
                )
                association = aws.ec2.RouteTableAssociation(
                    f"{name}-subnet-{index}-public", subnet_id=subnet.id, route_table_id=routes.id, opts=child
                )
                self.path.append(association)
                self.subnet_ids.append(subnet.id)
                self.zones.append(subnet.availability_zone)
            self.vpc_id = vpc.id

        members = aws.ec2.SecurityGroup(
            f"{name}-members",
            vpc_id=self.vpc_id,
            description=f"Members of the {PROJECT} mesh {name}; peers are admitted by membership",
            tags={**tags, "Name": f"{name}-members", "consul-tproxy-vms:mesh": name},
            opts=child,
        )
        self.mesh_security_group_id = members.id
        self.register_outputs(
            {"vpcId": self.vpc_id, "subnetIds": self.subnet_ids, "meshSecurityGroupId": self.mesh_security_group_id}
        )

    def subnet_for(self, key: str) -> pulumi.Output[str]:
        """The subnet of the VM named `key`: it depends on that name alone (see placement_index)."""
        return self.subnet_ids[placement_index(key, len(self.subnet_ids))]

    def subnet_at(self, index: int) -> pulumi.Output[str]:
        """The subnet of the index-th member of a fixed set (the servers): spread over the zones in turn."""
        return self.subnet_ids[index % len(self.subnet_ids)]

    def zone_at(self, index: int) -> pulumi.Output[str]:
        """The availability zone of subnet_at(index)."""
        return self.zones[index % len(self.zones)]
