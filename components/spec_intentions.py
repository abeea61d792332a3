"""The spec of the intentions (config `intentions`): who may call whom, for every request or
by L7 rules.

Part of the mesh spec (components/spec.py, which re-exports every public name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .checks import (
    Problems,
    json_list,
)
from .spec_common import (
    ACTIONS,
    DEMO_HEALTH_PATH,
    HTTP_LIKE,
    HTTP_METHODS,
    INTENTION_KEYS,
    MAX_DESCRIPTION,
    PERMISSION_HTTP_KEYS,
    PERMISSION_KEYS,
    _names,
    unknown_keys,
)


@dataclass(frozen=True)
class PermissionSpec:
    """One L7 rule of an intention: `action` for the HTTP requests it matches (Consul's
    IntentionPermission). No path and no methods match nothing; Consul refuses that, and so does
    the spec. Header and regex matches are refused (see _permission)."""

    action: str
    path_exact: str | None = None
    path_prefix: str | None = None
    methods: tuple[str, ...] = ()
    """Upper-case HTTP methods; empty: any method."""

    def matches(self, method: str, path: str) -> bool:
        """Whether a request `method path` (no query) is one this permission matches. Envoy's RBAC
        compares the path without its query: exactly, or as a plain string prefix."""
        if self.methods and method not in self.methods:
            return False
        if self.path_exact is not None:
            return path == self.path_exact
        if self.path_prefix is not None:
            return path.startswith(self.path_prefix)
        return True

    def as_config(self) -> dict[str, Any]:
        """The permission as the stack config spells it (camelCase), for the `intentions` output."""
        http: dict[str, Any] = {}
        if self.path_exact is not None:
            http["pathExact"] = self.path_exact
        if self.path_prefix is not None:
            http["pathPrefix"] = self.path_prefix
        if self.methods:
            http["methods"] = list(self.methods)
        return {"action": self.action, "http": http}


@dataclass(frozen=True)
class IntentionSpec:
    """Whether `source` may open connections to `destination`: `action` for every request, or
    (L7, `action` None) the first of `permissions` that matches a request decides."""

    source: str
    destination: str
    action: str | None
    description: str = ""
    permissions: tuple[PermissionSpec, ...] = ()

    @property
    def is_l7(self) -> bool:
        return bool(self.permissions)

    def admits(self, method: str, path: str) -> bool:
        """Whether the source's request `method path` certainly gets through (default deny).

        Consul reads permissions in order: a deny is subtracted from every allow after it, allows
        are ORed (agent/structs/config_entry_intentions.go, SourceIntention.Permissions), so the
        first permission matching a request decides, and with none matching the default (deny) does.
        """
        if not self.is_l7:
            return self.action == "allow"
        for permission in self.permissions:
            if permission.matches(method, path):
                return permission.action == "allow"
        return False

    def allows_any(self) -> bool:
        """Whether some request gets through: an allow, or an L7 intention with an allow permission."""
        return self.action == "allow" or any(p.action == "allow" for p in self.permissions)

    def key(self) -> str:
        """One line naming what the intention decides (the mesh gate's diff, the render)."""
        if not self.is_l7:
            return f"{self.source}->{self.destination}:{self.action}"
        rules = ",".join(
            f"{p.action} {'|'.join(p.methods) or '*'} "
            + (f"={p.path_exact}" if p.path_exact is not None else f"{p.path_prefix or '/'}*")
            for p in self.permissions
        )
        return f"{self.source}->{self.destination}:l7[{rules}]"


def _permission(raw: Any, key: str, problems: Problems) -> PermissionSpec | None:
    """One L7 permission, checked as Consul checks it (agent/structs/config_entry_intentions.go
    ServiceIntentionsConfigEntry.validate): action allow|deny, an HTTP match that is not empty, at
    most one path match, PathExact/PathPrefix starting with "/", known methods, none twice."""
    if not isinstance(raw, Mapping):
        problems.add(key, raw, "must be an object such as {action: allow, http: {pathExact: /, methods: [GET]}}")
        return None
    before = len(problems.items)
    unknown_keys(raw, PERMISSION_KEYS, key, problems)
    action = raw.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        problems.add(f"{key}.action", action, "must be allow or deny")
    http = raw.get("http")
    if not isinstance(http, Mapping):
        problems.add(f"{key}.http", http, "must be an object such as {pathExact: /api, methods: [GET]}")
        return None
    unknown_keys(http, PERMISSION_HTTP_KEYS, f"{key}.http", problems)
    for unsupported in ("pathRegex", "header"):
        if unsupported in http:
            # pulumi-consul 3.15 (terraform-provider-consul 86cfc3a, consul/resource_consul_config_entry_
            # service_intentions.go, the Decode of the http block) copies path_regex into PathPrefix
            # and never copies the headers it reads into HTTP.Header: a header-restricted allow would
            # reach Consul as an allow for all. (A PathPrefix, which the same decode empties, is written
            # by a generic config entry instead: components/intentions.py needs_generic_entry.) The
            # generic entry could carry these too, once a regex is checked as Envoy's RE2 checks it.
            problems.add(
                f"{key}.http.{unsupported}",
                http[unsupported],
                "is not supported: the consul provider (pulumi-consul 3.15) would pass it to Consul wrongly "
                "(a regex as an empty prefix, headers dropped), widening an allow; use pathExact, pathPrefix "
                "and methods",
            )
    paths = {}
    for name in ("pathExact", "pathPrefix"):
        if name in http:
            value = http[name]
            if not isinstance(value, str) or not value.startswith("/") or not value.isprintable():
                problems.add(f"{key}.http.{name}", value, "must be a path starting with / (printable characters)")
            else:
                paths[name] = value
    if "pathExact" in http and "pathPrefix" in http:
        problems.add(f"{key}.http", dict(http), "has both pathExact and pathPrefix: give at most one")
    methods = []
    for i, method in enumerate(json_list(http.get("methods", []), f"{key}.http.methods", problems)):
        if method not in HTTP_METHODS:
            # Upper case only: Consul upper-cases what it stores, and a lower-case method in the
            # config would differ from the provider's read-back on every refresh.
            problems.add(f"{key}.http.methods[{i}]", method, f"is not one of {', '.join(HTTP_METHODS)}")
        elif method in methods:
            problems.add(f"{key}.http.methods[{i}]", method, "is listed twice (Consul refuses repeats)")
        else:
            methods.append(method)
    if not paths and not methods and len(problems.items) == before:
        problems.add(f"{key}.http", dict(http), "matches nothing: give pathExact, pathPrefix or methods")
    if len(problems.items) != before:
        return None
    return PermissionSpec(
        action=action,
        path_exact=paths.get("pathExact"),
        path_prefix=paths.get("pathPrefix"),
        methods=tuple(methods),
    )


def _permissions(raw: Any, key: str, problems: Problems) -> tuple[PermissionSpec, ...] | None:
    before = len(problems.items)
    items = json_list(raw, key, problems)
    if not items and len(problems.items) == before:
        problems.add(key, raw, "is empty: give at least one {action, http} rule, or use action instead")
    found = [_permission(item, f"{key}[{i}]", problems) for i, item in enumerate(items)]
    if len(problems.items) != before:
        return None
    return tuple(p for p in found if p is not None)


def _intentions(
    raw: Any, services: Mapping[str, Any], problems: Problems, protocols: Mapping[str, str] | None = None
) -> tuple[IntentionSpec, ...]:
    """The intentions; `protocols` (service -> protocol) refuses L7 rules for a tcp destination."""
    protocols = protocols or {}
    result: list[IntentionSpec] = []
    seen: dict[tuple[str, str], int] = {}
    for i, item in enumerate(json_list(raw, "intentions", problems)):
        key = f"intentions[{i}]"
        if not isinstance(item, Mapping):
            problems.add(key, item, "must be an object such as {source: web, destination: api, action: allow}")
            continue
        unknown_keys(item, INTENTION_KEYS, key, problems)
        ok = True
        for end in ("source", "destination"):
            name = item.get(end)
            if name is None:
                problems.add(f"{key}.{end}", None, "is missing")
                ok = False
            elif not isinstance(name, str):
                problems.add(f"{key}.{end}", name, "must be a service name (a string)")
                ok = False
            elif name not in services:
                problems.add(f"{key}.{end}", name, f"is not a service of this stack (services: {_names(services)})")
                ok = False
        action = item.get("action")
        permissions: tuple[PermissionSpec, ...] | None = ()
        if ("action" in item) == ("permissions" in item):
            # Consul: "Action must be omitted if Permissions are specified", and one of them is required.
            problems.add(key, dict(item), "needs exactly one of action (allow|deny) and permissions (L7 rules)")
            ok = False
        elif "permissions" in item:
            action = None
            permissions = _permissions(item["permissions"], f"{key}.permissions", problems)
            destination = item.get("destination")
            protocol = protocols.get(destination) if isinstance(destination, str) else None
            if permissions is None:
                ok = False
            elif protocol is not None and protocol not in HTTP_LIKE:
                # agent/consul/state/config_entry.go validateProposedConfigEntryInServiceGraph: "service
                # %q has protocol %q, which is incompatible with L7 intentions permissions".
                problems.add(
                    f"{key}.permissions",
                    destination,
                    f"needs an HTTP destination, but services.{destination}.protocol is {protocol} "
                    f"(L7 rules need {', '.join(HTTP_LIKE)}): use action, or change the protocol",
                )
                ok = False
        elif not isinstance(action, str) or action not in ACTIONS:
            problems.add(f"{key}.action", action, "must be allow or deny")
            ok = False
        description = item.get("description", "")
        if not isinstance(description, str):
            problems.add(f"{key}.description", description, "must be a string")
            ok = False
        elif len(description) > MAX_DESCRIPTION:
            problems.add(f"{key}.description", description[:40] + "...", f"is longer than {MAX_DESCRIPTION} characters")
            ok = False
        if not ok:
            continue
        pair = (item["source"], item["destination"])
        if pair[0] == pair[1]:
            problems.add(
                key, dict(item), "names the same service as source and destination: a service always reaches itself"
            )
            continue
        if pair in seen:
            problems.add(key, dict(item), f"repeats the source/destination pair of intentions[{seen[pair]}]")
            continue
        seen[pair] = i
        result.append(
            IntentionSpec(
                source=pair[0],
                destination=pair[1],
                action=action,
                description=description,
                permissions=permissions or (),
            )
        )
    return tuple(result)


# What the demo app's upstream probe sends each upstream (scripts/mesh-demo-app.py: GET <uri>/health).
PROBE_REQUEST = ("GET", DEMO_HEALTH_PATH)


def probe_admitted(intentions: Iterable[IntentionSpec], source: str, destination: str) -> bool:
    """Whether the intentions certainly let the demo app's probe of `source` through to `destination`."""
    return any(i.source == source and i.destination == destination and i.admits(*PROBE_REQUEST) for i in intentions)
