"""Guards for day two: every resource keeps its URN and parent, and every stored provider still loads.

A resource's URN is its type, name and the types of its parents. Pulumi finds a resource of the
state by its URN: one that moves is deleted and created again on the next `up` (the servers' data
volumes are retain_on_delete, so a moved volume is orphaned, not kept). So a refactor must leave
every URN and parent as it was. These tests compare the URN and parent of every resource of the
demo stack (Pulumi.dev.yaml) and of the demo with three servers in three zones, rendered under the
render's mocks, with fixtures written from the code before the refactor.

A deliberate change (a resource added, renamed or moved on purpose, or the demo stack file
changed) regenerates them:

    venv/bin/python -m tests.test_urns

and the fixture diff in the commit shows each URN that comes, goes or moves (one line per
resource: "URN": "parent URN"). A moved URN on an existing stack needs an alias
(pulumi.ResourceOptions(aliases=...)) so that the engine does not replace the resource.

The dynamic providers (readiness gates, image pin, mesh gate) are stored in each resource's state
as `__provider`: the provider object pickled by dill. The engine never reruns the program to
delete or refresh such a resource: it loads the provider stored in the state. So the module and
class each fixture names must stay importable, or an alias left behind when they move. That
fixture (tests/fixtures/providers.json, the providers as the code of 2026-12 stored them) is
written once and never regenerated.
"""

from __future__ import annotations

import base64
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import dill
import pytest
from pulumi.dynamic import Config, ConfigureRequest, ResourceProvider
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime._serialization import _deserialize, _serialize

from components import render
from components.spec import PROJECT

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "urns"
PROVIDERS = ROOT / "tests" / "fixtures" / "providers.json"
STACK = "dev"
DYNAMIC = "pulumi-python:dynamic/"
# The provider classes today's code stores, by the dynamic resource's type.
PROVIDER_CLASSES = {
    "ConsulReady": "components.readiness.ConsulReadyProvider",
    "ServerReady": "components.readiness.ServerReadyProvider",
    "ImagePin": "components.image.ImagePinProvider",
    "MeshReady": "components.mesh_ready.MeshReadyProvider",
}
# The same classes as the installed package (consul_tproxy_vms, pyproject.toml) stores them: a
# consumer project's MeshService pins its image with consul_tproxy_vms.image.ImagePinProvider.
PROVIDER_CLASSES.update(
    {f"{typ} (package)": path.replace("components.", "consul_tproxy_vms.", 1) for typ, path in PROVIDER_CLASSES.items()}
)


def demo_config() -> dict[str, Any]:
    return render.load_stack_config(ROOT / "Pulumi.dev.yaml")


# Each stack: the name of its fixture, and its config.
STACKS = {
    "demo": demo_config,
    "three-servers": lambda: {**demo_config(), "serverCount": 3, "zoneCount": 3},
}


def rendered(config: dict[str, Any]) -> render.PlanMocks:
    """The mocks' record of a run of the program for `config`, as the render runs it."""
    spec, with_gossip_key = render.plan_spec(config, STACK)
    mocks, _ = render.plan(spec, with_gossip_key, STACK)
    return mocks


def engine_urns(mocks: render.PlanMocks) -> dict[str, str]:
    """URN -> parent's URN ("" under the stack) of every registered resource, as the engine forms them.

    The mock monitor's URNs qualify a type with its parent's type alone, and with the stack's type
    for a resource under the stack (pulumi/runtime/mocks.py MockMonitor.make_urn); the engine
    qualifies it with the parent's whole qualified type, and not at all under the stack
    (pulumi/pulumi pkg/resource/deploy/deployment.go generateURN: "Skip empty parents and don't use
    the root stack type; otherwise, use the full qualified type"). So the engine's URNs are
    computed here from each resource's type, name and parent.
    """
    registered = {(r.typ, r.name) for r in mocks.resources}
    assert len(registered) == len(mocks.resources), "two resources of one type and name: (type, name) is no key"
    # The stack resource itself is registered (so recorded) but never reaches the mocks.
    recorded = {key for key in mocks.parent_of if key[0] != "pulumi:pulumi:Stack"}
    assert recorded == registered, "a resource registered without its parent recorded"

    def parent_key(typ: str, name: str) -> tuple[str, str] | None:
        parent = mocks.parent_of[(typ, name)]
        # Mock URN: urn:pulumi:<stack>::<project>::<qualified type>::<name>
        _, _, qualified, parent_name = parent.split("::", 3)
        parent_type = qualified.rpartition("$")[2]
        return None if parent_type == "pulumi:pulumi:Stack" else (parent_type, parent_name)

    def qualified_type(typ: str, name: str) -> str:
        parent = parent_key(typ, name)
        return typ if parent is None else f"{qualified_type(*parent)}${typ}"

    def urn(typ: str, name: str) -> str:
        return f"urn:pulumi:{STACK}::{PROJECT}::{qualified_type(typ, name)}::{name}"

    result = {}
    for typ, name in registered:
        parent = parent_key(typ, name)
        result[urn(typ, name)] = "" if parent is None else urn(*parent)
    return dict(sorted(result.items()))


def stored_providers(mocks: render.PlanMocks) -> dict[str, str]:
    """Dynamic resource type -> its `__provider` input: what pulumi.dynamic.Resource stores in the state
    (pulumi/dynamic/dynamic.py Resource.__init__: serialize_provider, dill by reference, base64)."""
    providers: dict[str, set[str]] = {}
    for r in mocks.resources:
        if r.typ.startswith(DYNAMIC):
            providers.setdefault(r.typ.rpartition(":")[2], set()).add(render.unwrap(r.inputs["__provider"]))
    assert all(len(v) == 1 for v in providers.values()), "one type stored two different providers"
    return {typ: serialized for typ, (serialized,) in sorted(providers.items())}


def fixture_text(value: dict[str, str]) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_every_resource_keeps_its_urn_and_parent(stack: str) -> None:
    """A failure here lists URNs that came, went or moved: regenerate (see above) only on purpose."""
    expected = json.loads((FIXTURES / f"{stack}.json").read_text())
    actual = engine_urns(rendered(STACKS[stack]()))
    gone = sorted(set(expected) - set(actual))
    new = sorted(set(actual) - set(expected))
    assert (gone, new) == ([], []), f"URNs gone: {gone}\nURNs new: {new}"
    moved = {urn: (expected[urn], actual[urn]) for urn in expected if expected[urn] != actual[urn]}
    assert moved == {}, "parents moved (expected, actual)"


def test_the_stacks_differ_in_their_servers() -> None:
    """The three-server fixture is not the demo's again: it holds servers 1 and 2, each in the chain."""
    demo = json.loads((FIXTURES / "demo.json").read_text())
    three = json.loads((FIXTURES / "three-servers.json").read_text())
    extra = {urn.rpartition("::")[2] for urn in set(three) - set(demo)}
    assert {"consul-server-1-data", "consul-server-2-data", "consul-server-2-ready"} <= extra


def load_stored_provider(serialized: str) -> ResourceProvider:
    """Load a stored provider as the engine's dynamic provider host does on delete, read (refresh),
    diff and update: pulumi/dynamic/__main__.py get_provider (dill.loads of the base64 under
    _deserialize, then configure)."""
    provider = _deserialize(lambda: dill.loads(base64.b64decode(serialized)))
    provider.configure(ConfigureRequest(config=Config(raw_config={}, project_name=PROJECT)))
    return provider


@pytest.mark.parametrize("typ", sorted(PROVIDER_CLASSES))
def test_a_provider_stored_by_earlier_code_still_loads(typ: str) -> None:
    """Moving or renaming a provider's module or class breaks delete and refresh of every deployed
    stack: keep an alias at the old path (e.g. `from .new_home import ImagePinProvider`)."""
    serialized = json.loads(PROVIDERS.read_text())[typ]
    provider = load_stored_provider(serialized)
    cls = type(provider)
    assert f"{cls.__module__}.{cls.__qualname__}" == PROVIDER_CLASSES[typ]
    # Something cheap the engine calls on it: a diff of equal inputs changes nothing.
    assert provider.diff("id", {}, {}).changes is False


def test_the_stored_providers_are_pickled_by_reference() -> None:
    """By reference (module and class name), not by value: so a fixture of today's providers is
    what every deployed stack holds, whatever the classes' code becomes."""
    stored = json.loads(PROVIDERS.read_text())
    assert sorted(stored) == sorted(PROVIDER_CLASSES)
    for typ, serialized in stored.items():
        module, _, name = PROVIDER_CLASSES[typ].rpartition(".")
        data = base64.b64decode(serialized)
        assert module.encode() in data and name.encode() in data
        # dill pickles a class by value with its code (co_code); by reference it holds no code.
        assert b"_create_code" not in data and b"_create_type" not in data


def regenerate() -> None:
    """Write the fixtures from the current code: only for a deliberate change (see the docstring)."""
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for stack, config in STACKS.items():
        (FIXTURES / f"{stack}.json").write_text(fixture_text(engine_urns(rendered(config()))))
    # Never rewritten: deployed stacks keep what the code of their last `up` stored, so a provider
    # moved on purpose (with an alias at its old path) is added beside, not instead of, this one.
    providers = json.loads(PROVIDERS.read_text()) if PROVIDERS.exists() else {}
    stored = stored_providers(rendered(demo_config()))
    assert sorted(stored) == sorted(k for k in PROVIDER_CLASSES if "(" not in k), stored.keys()
    stored.update({typ: package_provider(path) for typ, path in PROVIDER_CLASSES.items() if "(" in typ})
    PROVIDERS.write_text(fixture_text({**stored, **providers}))


def package_provider(path: str) -> str:
    """A provider of the installed package serialized as pulumi.dynamic.Resource.__init__ does
    (pulumi/dynamic/dynamic.py: _serialize(True, serialize_provider, provider))."""
    module, _, name = path.rpartition(".")
    provider = getattr(importlib.import_module(module), name)()
    return _serialize(True, serialize_provider, provider)[0]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    regenerate()
