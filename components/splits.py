"""TrafficSplits: the services.<name>.splits of the stack, as Consul `service-splitter` config entries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_consul as consul

from .spec import PROJECT, SplitSpec


@dataclass
class TrafficSplitsArgs:
    splits: Mapping[str, Sequence[SplitSpec]]
    """Service -> its validated splits (spec_splits._splits): weights adding up to 100, services of the
    service's own HTTP-like protocol."""


class TrafficSplits(pulumi.ComponentResource):
    """One `service-splitter` per split service: calls to <name>.virtual.consul go to its splits'
    services by weight (a canary takes 10 %). Config entries only: no VM changes. Consul accepts a
    splitter only once the services' protocols are HTTP-like (service-defaults), so the stack
    declares this after MeshDefaults."""

    def __init__(self, name: str, args: TrafficSplitsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(f"{PROJECT}:index:TrafficSplits", name, None, opts)
        for service in sorted(args.splits):
            consul.ConfigEntryServiceSplitter(
                f"{name}-{service}",
                name=service,
                # In the order given: Consul gives a rounding remainder to the first split.
                splits=[
                    consul.ConfigEntryServiceSplitterSplitArgs(weight=s.weight, service=s.service)
                    for s in args.splits[service]
                ],
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({})
