"""ServiceIntentions: who may talk to whom, as Consul `service-intentions` config entries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_consul as consul

from .spec import PROJECT, IntentionSpec, PermissionSpec


@dataclass
class ServiceIntentionsArgs:
    intentions: Sequence[IntentionSpec]
    """Validated intentions; at most one per source/destination pair."""


def by_destination(intentions: Sequence[IntentionSpec]) -> dict[str, list[IntentionSpec]]:
    """Consul keeps one config entry per destination, listing its sources; sorted for stable diffs."""
    grouped: dict[str, list[IntentionSpec]] = {}
    for intention in intentions:
        grouped.setdefault(intention.destination, []).append(intention)
    return {dest: sorted(grouped[dest], key=lambda i: i.source) for dest in sorted(grouped)}


def permission_args(permission: PermissionSpec) -> consul.ConfigEntryServiceIntentionsSourcePermissionArgs:
    """One L7 rule as the provider takes it: `https` is the schema's one-element `http` block
    (terraform-provider-consul consul/resource_consul_config_entry_service_intentions.go: a set of
    which Decode reads the first element). Methods are upper case already (spec_intentions._permission)."""
    return consul.ConfigEntryServiceIntentionsSourcePermissionArgs(
        action=permission.action,
        https=[
            consul.ConfigEntryServiceIntentionsSourcePermissionHttpArgs(
                path_exact=permission.path_exact,
                path_prefix=permission.path_prefix,
                methods=list(permission.methods) or None,
            )
        ],
    )


def source_args(intention: IntentionSpec) -> consul.ConfigEntryServiceIntentionsSourceArgs:
    """A source of the destination's entry: `action`, or (L7) `permissions` and no action, which
    Consul requires ("Action must be omitted if Permissions are specified")."""
    return consul.ConfigEntryServiceIntentionsSourceArgs(
        name=intention.source,
        action=intention.action,
        permissions=[permission_args(p) for p in intention.permissions] or None,
        type="consul",
        description=intention.description or None,
    )


def applied(intention: IntentionSpec) -> dict[str, Any]:
    """The intention as the stack's `intentions` output lists it: an L7 one has permissions, no action."""
    shown: dict[str, Any] = {"source": intention.source, "destination": intention.destination}
    if intention.is_l7:
        shown["permissions"] = [p.as_config() for p in intention.permissions]
    else:
        shown["action"] = intention.action
    return shown


class ServiceIntentions(pulumi.ComponentResource):
    """One `service-intentions` entry per destination. Nothing here touches a VM: intentions change
    in place, and with ACLs in default-deny whatever no intention allows is refused."""

    applied: pulumi.Output[list[dict[str, Any]]]

    def __init__(self, name: str, args: ServiceIntentionsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PROJECT}:index:ServiceIntentions", name, None, opts)
        shown = []
        for destination, sources in by_destination(args.intentions).items():
            consul.ConfigEntryServiceIntentions(
                f"{name}-{destination}",
                name=destination,
                sources=[source_args(i) for i in sources],
                opts=pulumi.ResourceOptions(parent=self),
            )
            shown += [applied(i) for i in sources]

        self.applied = pulumi.Output.from_input(shown)
        self.register_outputs({"intentions": self.applied})
