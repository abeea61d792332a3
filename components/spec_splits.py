"""The spec of traffic splits (config `services.<name>.splits`): service-splitters' shares.

Part of the mesh spec (components/spec.py, which re-exports every public name).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .checks import (
    Problems,
    json_list,
    string,
)
from .spec_common import (
    DNS_LABEL,
    HTTP_LIKE,
    SPLIT_KEYS,
    unknown_keys,
)
from .spec_services import (
    ServiceSpec,
)


@dataclass(frozen=True)
class SplitSpec:
    """A share of the calls to a service that its service-splitter sends to `service`."""

    weight: float
    """Percent, with at most two decimals (Consul keeps 0.01 % steps)."""
    service: str


def split_targets(service: str, splits: Mapping[str, Sequence[SplitSpec]]) -> tuple[str, ...]:
    """The services a call to `service` may land on: its splits with a weight, or itself."""
    targets = tuple(s.service for s in splits.get(service, ()) if s.weight > 0)
    return targets or (service,)


def _weight(raw: Any, key: str, problems: Problems) -> float | None:
    """A split's weight: a percentage 0-100 with at most two decimals. Consul scales weights to
    0.01 % steps and rounds (agent/structs/config_entry_discoverychain.go scaleWeight), so a third
    decimal would be changed silently, and the provider's read-back would differ on every refresh."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= 100:
        problems.add(key, raw, "must be a number from 0 to 100 (percent)")
        return None
    if abs(raw * 100 - round(raw * 100)) > 1e-6:
        problems.add(key, raw, "has more than two decimals (Consul keeps steps of 0.01 %)")
        return None
    return float(raw)


def _service_splits(name: str, raw: Any, problems: Problems) -> tuple[SplitSpec, ...] | None:
    """The shape of services.<name>.splits; the services they name are checked by _splits."""
    key = f"services.{name}.splits"
    before = len(problems.items)
    items = json_list(raw, key, problems)
    if not items and len(problems.items) == before:
        # Consul: "no splits configured".
        problems.add(key, raw, "is empty: give at least one {weight, service}, or remove the key")
    result = []
    for i, item in enumerate(items):
        item_key = f"{key}[{i}]"
        if not isinstance(item, Mapping):
            problems.add(item_key, item, "must be an object such as {weight: 90, service: api}")
            continue
        unknown_keys(item, SPLIT_KEYS, item_key, problems)
        weight = _weight(item.get("weight"), f"{item_key}.weight", problems)
        service = string(item.get("service"), f"{item_key}.service", problems, DNS_LABEL, "a service name")
        if weight is not None and service is not None:
            result.append(SplitSpec(weight=weight, service=service))
    if len(problems.items) != before:
        return None
    seen: set[str] = set()
    for i, split in enumerate(result):
        if split.service in seen:
            # Consul: "split destination occurs more than once".
            problems.add(f"{key}[{i}].service", split.service, "is split to twice")
        seen.add(split.service)
    total = sum(round(s.weight * 100) for s in result)
    if total != 100 * 100:
        # Consul: "the sum of all split weights must be 100".
        problems.add(key, [s.weight for s in result], f"has weights adding up to {total / 100:g}, not 100")
    if len(problems.items) != before:
        return None
    return tuple(result)


def _splits(
    raw_services: Mapping[Any, Any], services: Mapping[str, ServiceSpec], problems: Problems
) -> dict[str, tuple[SplitSpec, ...]]:
    """Every services.<name>.splits, each a service-splitter. Consul refuses a splitter unless its
    service's discovery chain is HTTP-like ("does not permit advanced routing or splitting
    behavior") and every service of the chain has the same protocol ("uses inconsistent
    protocols"), agent/consul/discoverychain/compile.go."""
    parsed: dict[str, tuple[SplitSpec, ...]] = {}
    for name in sorted(raw_services, key=str):
        raw = raw_services[name]
        if isinstance(name, str) and isinstance(raw, Mapping) and "splits" in raw:
            splits = _service_splits(name, raw["splits"], problems)
            if splits is not None:
                parsed[name] = splits
    for name, splits in parsed.items():
        key = f"services.{name}.splits"
        own = services.get(name)
        if own is not None and own.protocol not in HTTP_LIKE:
            problems.add(
                f"services.{name}.protocol",
                own.protocol,
                f"cannot be split (services.{name}.splits): splitting needs {', '.join(HTTP_LIKE)}",
            )
        for i, split in enumerate(splits):
            target = services.get(split.service)
            if split.service not in raw_services:
                problems.add(f"{key}[{i}].service", split.service, "is not a service of this stack")
            elif target is not None and own is not None and target.protocol != own.protocol:
                problems.add(
                    f"{key}[{i}].service",
                    split.service,
                    f"has protocol {target.protocol}, not {own.protocol} like {name}: a split's services "
                    "share one protocol",
                )
            elif split.service != name and split.service in parsed:
                # Consul flattens a splitter into a splitter; kept to one level here, so no cycles.
                problems.add(
                    f"{key}[{i}].service",
                    split.service,
                    f"has splits of its own: split to services without splits (or to {name} itself)",
                )
    return parsed
