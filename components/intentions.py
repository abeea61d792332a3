"""ServiceIntentions: who may talk to whom, as Consul `service-intentions` config entries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_consul as consul

from .spec import PROJECT, IntentionSpec


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


class ServiceIntentions(pulumi.ComponentResource):
    """One `service-intentions` entry per destination. Nothing here touches a VM: intentions change
    in place, and with ACLs in default-deny whatever no intention allows is refused."""

    applied: pulumi.Output[list[dict[str, str]]]

    def __init__(self, name: str, args: ServiceIntentionsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PROJECT}:index:ServiceIntentions", name, None, opts)
        applied = []
        for destination, sources in by_destination(args.intentions).items():
            consul.ConfigEntryServiceIntentions(
                f"{name}-{destination}",
                name=destination,
                sources=[
                    consul.ConfigEntryServiceIntentionsSourceArgs(
                        name=i.source, action=i.action, type="consul", description=i.description or None
                    )
                    for i in sources
                ],
                opts=pulumi.ResourceOptions(parent=self),
            )
            applied += [{"source": i.source, "destination": i.destination, "action": i.action} for i in sources]

        self.applied = pulumi.Output.from_input(applied)
        self.register_outputs({"intentions": self.applied})
