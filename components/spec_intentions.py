"""The spec of the intentions (config `intentions`): who may call whom, for every request or
by L7 rules.

Part of the mesh spec (components/spec.py, which re-exports every public name).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import re2

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

# Envoy compiles a PathRegex or header regex with RE2 and refuses the whole configuration (the proxy
# NACKs it) when its program is larger than re2.max_program_size.error_level, 100 by default (Envoy
# docs, "Runtime: re2.max_program_size.error_level"; source/common/common/regex.cc).
RE2_MAX_PROGRAM_SIZE = 100
# An HTTP header name: a lower-case token (RFC 9110 tchar). Envoy compares names without case (its
# HeaderMatcher keeps a LowerCaseString), so lower case is the one spelling; pseudo-headers such as
# :authority are not taken.
HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,256}")
HEADER_MATCHES = ("present", "exact", "prefix", "suffix", "regex")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def compile_re2(pattern: str) -> Any:
    """The RE2 program Envoy builds from `pattern`; raises re2.error when RE2 refuses it."""
    return re2.compile(pattern, _RE2_OPTIONS)


@dataclass(frozen=True)
class HeaderSpec:
    """One header match of an L7 rule (Consul's IntentionHTTPHeaderPermission): the header `name`,
    one `match` of HEADER_MATCHES with its `value` (none for present), `invert` to negate it."""

    name: str
    match: str
    value: str = ""
    invert: bool = False

    def as_config(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"name": self.name, self.match: True if self.match == "present" else self.value}
        if self.invert:
            shown["invert"] = True
        return shown


@dataclass(frozen=True)
class PermissionSpec:
    """One L7 rule of an intention: `action` for the HTTP requests it matches (Consul's
    IntentionPermission): at most one path match, methods, header matches, all of them to hold. No
    match at all matches nothing; Consul refuses that, and so does the spec."""

    action: str
    path_exact: str | None = None
    path_prefix: str | None = None
    methods: tuple[str, ...] = ()
    """Upper-case HTTP methods; empty: any method."""
    path_regex: str | None = None
    """An RE2 expression the whole path must match."""
    headers: tuple[HeaderSpec, ...] = ()

    def matches(self, method: str, path: str) -> bool | None:
        """Whether a request `method path` (no query) is one this permission matches; None when that
        depends on its headers, which the mesh's proxies add to and the spec cannot know. Envoy's
        RBAC compares the path without its query: exactly, as a plain string prefix, or as a whole
        match of the RE2 expression; every header match must hold too."""
        if self.methods and method not in self.methods:
            return False
        if self.path_exact is not None:
            found = path == self.path_exact
        elif self.path_prefix is not None:
            found = path.startswith(self.path_prefix)
        elif self.path_regex is not None:
            found = compile_re2(self.path_regex).fullmatch(path) is not None
        else:
            found = True
        return None if found and self.headers else found

    @property
    def needs_generic_entry(self) -> bool:
        """A rule pulumi-consul 3.15's typed resource cannot write (components/intentions.py)."""
        return self.path_prefix is not None or self.path_regex is not None or bool(self.headers)

    def as_config(self) -> dict[str, Any]:
        """The permission as the stack config spells it (camelCase), for the `intentions` output."""
        http: dict[str, Any] = {}
        if self.path_exact is not None:
            http["pathExact"] = self.path_exact
        if self.path_prefix is not None:
            http["pathPrefix"] = self.path_prefix
        if self.path_regex is not None:
            http["pathRegex"] = self.path_regex
        if self.methods:
            http["methods"] = list(self.methods)
        if self.headers:
            http["header"] = [h.as_config() for h in self.headers]
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
            matched = permission.matches(method, path)
            if matched is None:
                # Header-dependent: a deny that may match leaves nothing certain; an allow that may
                # not leaves it to the rules after it.
                if permission.action == "deny":
                    return False
                continue
            if matched:
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
            f"{p.action} {'|'.join(p.methods) or '*'} {path_label(p)}{headers_label(p)}" for p in self.permissions
        )
        return f"{self.source}->{self.destination}:l7[{rules}]"


def path_label(p: PermissionSpec) -> str:
    """A rule's path match in one word: =exact, prefix*, ~regex (the gate's keys, the diagrams)."""
    if p.path_exact is not None:
        return f"={p.path_exact}"
    if p.path_regex is not None:
        return f"~{p.path_regex}"
    return f"{p.path_prefix or '/'}*"


def headers_label(p: PermissionSpec) -> str:
    """A rule's header matches, bracketed (` [x-a; !x-b exact v]`), or nothing."""
    shown = [
        f"{'!' if h.invert else ''}{h.name}" + ("" if h.match == "present" else f" {h.match} {h.value}")
        for h in p.headers
    ]
    return f" [{'; '.join(shown)}]" if shown else ""


def _permission(raw: Any, key: str, problems: Problems) -> PermissionSpec | None:
    """One L7 permission, checked as Consul checks it (agent/structs/config_entry_intentions.go
    ServiceIntentionsConfigEntry.validate): action allow|deny, an HTTP match that is not empty, at
    most one of PathExact, PathPrefix and PathRegex, PathExact/PathPrefix starting with "/", known
    methods, none twice, headers each with a Name and exactly one of Present, Exact, Prefix, Suffix
    and Regex; and regexes as Envoy compiles them (RE2, within its program size)."""
    if not isinstance(raw, Mapping):
        problems.add(key, raw, "must be an object such as {action: allow, http: {pathPrefix: /, methods: [GET]}}")
        return None
    before = len(problems.items)
    unknown_keys(raw, PERMISSION_KEYS, key, problems)
    action = raw.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        problems.add(f"{key}.action", action, "must be allow or deny")
    http = raw.get("http")
    if not isinstance(http, Mapping):
        problems.add(f"{key}.http", http, "must be an object such as {pathPrefix: /api, methods: [GET]}")
        return None
    unknown_keys(http, PERMISSION_HTTP_KEYS, f"{key}.http", problems)
    paths = {}
    for name in ("pathExact", "pathPrefix"):
        if name in http:
            value = http[name]
            if not isinstance(value, str) or not value.startswith("/") or not value.isprintable():
                problems.add(f"{key}.http.{name}", value, "must be a path starting with / (printable characters)")
            else:
                paths[name] = value
    if "pathRegex" in http and _regex(http["pathRegex"], f"{key}.http.pathRegex", problems):
        paths["pathRegex"] = http["pathRegex"]
    given = [name for name in ("pathExact", "pathPrefix", "pathRegex") if name in http]
    if len(given) > 1:
        problems.add(f"{key}.http", dict(http), f"has {' and '.join(given)}: give at most one path match")
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
    headers = [
        h
        for i, raw_header in enumerate(json_list(http.get("header", []), f"{key}.http.header", problems))
        if (h := _header(raw_header, f"{key}.http.header[{i}]", problems)) is not None
    ]
    if not paths and not methods and not headers and len(problems.items) == before:
        problems.add(f"{key}.http", dict(http), "matches nothing: give a path match, methods or a header")
    if len(problems.items) != before:
        return None
    return PermissionSpec(
        action=action,
        path_exact=paths.get("pathExact"),
        path_prefix=paths.get("pathPrefix"),
        methods=tuple(methods),
        path_regex=paths.get("pathRegex"),
        headers=tuple(headers),
    )


def _regex(value: Any, key: str, problems: Problems) -> bool:
    """A regex Envoy accepts: one printable line that RE2 compiles within RE2_MAX_PROGRAM_SIZE."""
    if not isinstance(value, str) or not value or not value.isprintable():
        problems.add(key, value, "must be a regular expression (RE2 syntax) on one printable line")
        return False
    try:
        size = compile_re2(value).programsize
    except re2.error as err:
        problems.add(key, value, f"is not an RE2 regular expression, which Envoy needs: {_re2_message(err)}")
        return False
    if size > RE2_MAX_PROGRAM_SIZE:
        problems.add(
            key,
            value,
            f"compiles to an RE2 program of size {size}, over the {RE2_MAX_PROGRAM_SIZE} Envoy accepts "
            "(re2.max_program_size.error_level): every proxy of the destination would refuse its configuration",
        )
        return False
    return True


def _re2_message(err: Exception) -> str:
    text = err.args[0] if err.args else err
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)


HEADER_KEYS = frozenset({"name", "invert", *HEADER_MATCHES})


def _header(raw: Any, key: str, problems: Problems) -> HeaderSpec | None:
    """One header match: a name, exactly one of present (true), exact, prefix, suffix and regex, and
    an optional invert (Consul: IntentionHTTPHeaderPermission, validate)."""
    if not isinstance(raw, Mapping):
        problems.add(key, raw, "must be an object such as {name: x-debug, present: true}")
        return None
    before = len(problems.items)
    unknown_keys(raw, HEADER_KEYS, key, problems)
    name = raw.get("name")
    if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
        problems.add(f"{key}.name", name, "must be a lower-case HTTP header name (letters, digits, -_.!#$%&'*+^`|~)")
    matches = [m for m in HEADER_MATCHES if m in raw]
    if len(matches) != 1:
        problems.add(key, dict(raw), f"needs exactly one of {', '.join(HEADER_MATCHES)}")
        return None
    (match,) = matches
    value = raw[match]
    if match == "present":
        if value is not True:
            problems.add(f"{key}.present", value, "must be true (use invert: true for an absent header)")
    elif match == "regex":
        _regex(value, f"{key}.regex", problems)
    elif not isinstance(value, str) or not value or not value.isprintable():
        problems.add(f"{key}.{match}", value, "must be a non-empty value on one printable line")
    invert = raw.get("invert", False)
    if not isinstance(invert, bool):
        problems.add(f"{key}.invert", invert, "must be true or false")
    if len(problems.items) != before:
        return None
    return HeaderSpec(name, match, "" if match == "present" else value, invert)


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
