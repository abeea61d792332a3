"""MeshNetwork: where mesh VMs live, and the security group that makes a VM a mesh member."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.spec import PROJECT


@dataclass
class MeshNetworkArgs:
    vpc_id: str | None = None
    """An existing VPC. With neither this nor subnet_id, the region's default VPC is used."""
    subnet_id: str | None = None
    """An existing subnet for the VMs; its VPC is looked up when vpc_id is not given."""


def _first_subnet(ids: list[str]) -> str:
    if not ids:
        raise pulumi.RunError("the default VPC has no default subnet: set subnetId (and vpcId) in stack config")
    # The API does not promise an order; the smallest id keeps the choice stable across runs.
    return sorted(ids)[0]


class MeshNetwork(pulumi.ComponentResource):
    """Resolves the VPC and subnet, and creates the mesh membership security group.

    The membership group carries no rules of its own: each VM's group admits peers by membership
    of this one (Envoy's public listener, gossip), so a new member needs no change to the others.
    """

    vpc_id: pulumi.Output[str]
    subnet_id: pulumi.Output[str]
    mesh_security_group_id: pulumi.Output[str]

    def __init__(self, name: str, args: MeshNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PROJECT}:index:MeshNetwork", name, None, opts)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        if args.subnet_id:
            subnet_id = pulumi.Output.from_input(args.subnet_id)
            vpc_id = (
                pulumi.Output.from_input(args.vpc_id)
                if args.vpc_id
                else aws.ec2.get_subnet_output(id=args.subnet_id, opts=invoke).vpc_id
            )
        else:
            vpc_id = aws.ec2.get_vpc_output(default=True, opts=invoke).id
            subnets = aws.ec2.get_subnets_output(
                filters=[
                    {"name": "vpc-id", "values": [vpc_id]},
                    {"name": "default-for-az", "values": ["true"]},
                ],
                opts=invoke,
            )
            subnet_id = subnets.ids.apply(_first_subnet)

        members = aws.ec2.SecurityGroup(
            f"{name}-members",
            vpc_id=vpc_id,
            description=f"Members of the {PROJECT} mesh {name}; peers are admitted by membership",
            tags={"Name": f"{name}-members", "consul-tproxy-vms:mesh": name},
            opts=pulumi.ResourceOptions(parent=self),
        )

        self.vpc_id = vpc_id
        self.subnet_id = subnet_id
        self.mesh_security_group_id = members.id
        self.register_outputs(
            {"vpcId": self.vpc_id, "subnetId": self.subnet_id, "meshSecurityGroupId": self.mesh_security_group_id}
        )
