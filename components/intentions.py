"""ServiceIntentions: who may talk to whom, as Consul `service-intentions` config entries."""

from __future__ import annotations

import json
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


# Consul's precedence of an intention between two exact service names in the default namespace
# (developer.hashicorp.com/consul/docs/connect/intentions#precedence-and-match-order: exact source,
# exact destination = 9), which Consul computes on every write and returns on every read.
EXACT_PRECEDENCE = 9


def needs_generic_entry(sources: Sequence[IntentionSpec]) -> bool:
    """Whether a destination's entry holds a rule the typed resource cannot write: a path prefix, a
    path regex or a header match.

    pulumi-consul 3.15's ConfigEntryServiceIntentions sends every PathPrefix and PathRegex to Consul
    as an empty PathPrefix and drops header matches (terraform-provider-consul
    resource_consul_config_entry_service_intentions.go: its http block's decode copies path_regex,
    present as "" in every set element, over PathPrefix, and never sets HTTP.Header), so such an
    entry is written by a generic ConfigEntry instead (ServiceIntentions)."""
    return any(p.needs_generic_entry for i in sources for p in i.permissions)


def entry_json(sources: Sequence[IntentionSpec]) -> str:
    """The destination's entry as the generic ConfigEntry's config_json: Consul's own field names
    (the provider decodes them into api.ServiceIntentionsConfigEntry by name; a snake_case key would
    be dropped without a word), and exactly what Consul answers back, so that the provider's
    read-back compares equal and shows no diff on every `up` (resource_consul_config_entry.go
    diffConfigJSON): Precedence and Type always present, no empty list, no Action beside Permissions.
    Kind and Name are the resource's own arguments, not in the JSON."""

    def source(i: IntentionSpec) -> dict[str, Any]:
        entry: dict[str, Any] = {"Name": i.source, "Precedence": EXACT_PRECEDENCE, "Type": "consul"}
        if i.is_l7:
            entry["Permissions"] = [consul_fields(p.as_config()) for p in i.permissions]
        else:
            entry["Action"] = i.action
        if i.description:
            entry["Description"] = i.description
        return entry

    return json.dumps({"Meta": GENERIC_ENTRY_META, "Sources": [source(i) for i in sources]}, sort_keys=True)


# The typed resource's Meta while the generic entry holds its destination's rules: an input it does
# not ignore, so that going back to rules it can write is a change it writes (its sources, ignored
# meanwhile, were kept as they were before: pulumi step_generator.go processIgnoreChanges), and one
# the generic entry writes too, so that neither sees the other's write as drift. Not "consul-...":
# Consul reserves that prefix (agent/structs/structs.go MetaKeyReservedPrefix, validateConfigEntryMeta).
GENERIC_ENTRY_META = {"tproxy-vms-rules": "generic-entry"}


def consul_fields(value: Any) -> Any:
    """A permission as the stack config spells it (PermissionSpec.as_config: camelCase) in Consul's
    field names (api.IntentionPermission, IntentionHTTPPermission, IntentionHTTPHeaderPermission:
    the same names with a capital, and HTTP)."""
    if isinstance(value, dict):
        return {("HTTP" if k == "http" else k[:1].upper() + k[1:]): consul_fields(v) for k, v in value.items()}
    if isinstance(value, list):
        return [consul_fields(v) for v in value]
    return value


def deny_all(sources: Sequence[IntentionSpec]) -> list[IntentionSpec]:
    """What the typed resource writes first for a destination whose entry the generic one owns:
    every source denied, so that nothing is wider than asked before the generic entry is written."""
    return [IntentionSpec(i.source, i.destination, "deny", "held by the generic entry") for i in sources]


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
            if needs_generic_entry(sources):
                self._generic_entry(name, destination, sources)
            else:
                consul.ConfigEntryServiceIntentions(
                    f"{name}-{destination}",
                    name=destination,
                    sources=[source_args(i) for i in sources],
                    opts=pulumi.ResourceOptions(parent=self),
                )
            shown += [applied(i) for i in sources]

        self.applied = pulumi.Output.from_input(shown)
        self.register_outputs({"intentions": self.applied})

    def _generic_entry(self, name: str, destination: str, sources: Sequence[IntentionSpec]) -> None:
        """A destination with a path prefix, a path regex or a header match: the typed resource stays
        the entry's owner, the generic ConfigEntry `<name>-<destination>-entry` writes its content.

        Moving a live entry from one resource to another deletes it: the old resource's Delete
        (DELETE /v1/config/service-intentions/<name>) runs at the end of the update that created the
        new one, and an alias across the two types is a replacement whose delete is the old type's.
        So the typed resource is never removed for this: it is declared with every source denied
        (what it writes when it is new, before the generic entry), its sources ignored from then on
        (an existing entry stays until the generic one overwrites it) and GENERIC_ENTRY_META, which
        it writes once when the destination moves here (its kept sources, what is live already).
        The generic one is retained on delete: when the destination goes back to rules the typed
        resource can write, the typed one (its meta gone) writes the entry and the generic one goes
        without deleting it; when the destination's intentions go altogether, the typed resource's
        delete removes the entry."""
        typed = consul.ConfigEntryServiceIntentions(
            f"{name}-{destination}",
            name=destination,
            sources=[source_args(i) for i in deny_all(sources)],
            meta=GENERIC_ENTRY_META,
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["sources"]),
        )
        consul.ConfigEntry(
            f"{name}-{destination}-entry",
            kind="service-intentions",
            name=destination,
            config_json=entry_json(sources),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[typed], retain_on_delete=True),
        )
