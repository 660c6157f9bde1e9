"""What a driver publishes, as the probes see it: pools, their completeness, devices and their attributes.

Pure functions over ResourceSlice and Node JSON, so the rules (only a pool's highest generation counts; a
pool is usable only when all ``resourceSliceCount`` slices of it are there; a slice must be reachable from a
Ready, schedulable node) are testable without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from driver.allocation.model import Node, NodeSelectorError, node_selector_matches
from driver.quantity import parse_quantity

JSON = dict[str, Any]
_VALUE_KEYS = ("string", "int", "bool", "version")


@dataclass
class Device:
    driver: str
    pool: str
    slice: str
    name: str
    #: Node the device is on (``nodeName`` of its slice); "" for node-selector or all-nodes slices.
    node: str
    attributes: dict[str, Any]
    capacity: dict[str, str]
    raw: JSON = field(default_factory=dict)

    def attribute(self, name: str) -> Any:
        """An attribute by its unqualified name in the driver's domain, or by its qualified key."""
        domain, _, ident = name.rpartition("/")
        keys = [name, ident] if domain == self.driver else [name]
        if not domain:
            keys.append(f"{self.driver}/{name}")
        return next((self.attributes[k] for k in keys if k in self.attributes), None)

    def capacity_bytes(self, name: str) -> int | None:
        raw = self.capacity.get(name) or self.capacity.get(f"{self.driver}/{name}")
        if raw is None:
            return None
        try:
            return int(parse_quantity(raw))
        except (ValueError, TypeError):
            return None


@dataclass
class Pool:
    driver: str
    name: str
    generation: int
    expected: int
    slices: list[JSON]

    @property
    def complete(self) -> bool:
        return len(self.slices) == self.expected

    def describe(self) -> str:
        return (
            f"pool {self.name} of {self.driver} (generation {self.generation}): "
            f"{len(self.slices)} of {self.expected} slice(s) published"
        )


def _value(attribute: Any) -> Any:
    if isinstance(attribute, Mapping):
        for key in _VALUE_KEYS:
            if key in attribute:
                return attribute[key]
    return attribute


def pools(slices: Iterable[Mapping[str, Any]]) -> list[Pool]:
    """Pools by (driver, name), keeping only each pool's highest generation."""
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for s in slices:
        spec = s.get("spec") or {}
        grouped.setdefault(
            (str(spec.get("driver", "")), str((spec.get("pool") or {}).get("name", ""))), []
        ).append(s)
    out: list[Pool] = []
    for (driver, name), members in sorted(grouped.items()):
        generation = max(
            int(((m.get("spec") or {}).get("pool") or {}).get("generation") or 0) for m in members
        )
        current = [dict(m) for m in members if int(m["spec"]["pool"].get("generation") or 0) == generation]
        expected = max(int(m["spec"]["pool"].get("resourceSliceCount") or 1) for m in current)
        out.append(Pool(driver, name, generation, expected, current))
    return out


def devices(pool_list: Iterable[Pool], *, complete_only: bool = True) -> list[Device]:
    out: list[Device] = []
    for pool in pool_list:
        if complete_only and not pool.complete:
            continue
        for s in pool.slices:
            spec = s.get("spec") or {}
            for d in spec.get("devices") or []:
                body = d.get("basic", d)
                out.append(
                    Device(
                        driver=pool.driver,
                        pool=pool.name,
                        slice=str((s.get("metadata") or {}).get("name", "")),
                        name=str(d.get("name", "")),
                        node=str(spec.get("nodeName") or d.get("nodeName") or ""),
                        attributes={k: _value(v) for k, v in (body.get("attributes") or {}).items()},
                        capacity={
                            k: str((v or {}).get("value")) for k, v in (body.get("capacity") or {}).items()
                        },
                        raw=dict(d),
                    )
                )
    return out


# -- nodes --------------------------------------------------------------------------------------------


def ready_nodes(nodes: Iterable[Mapping[str, Any]]) -> list[JSON]:
    """Nodes that are Ready and schedulable."""
    return [
        dict(n)
        for n in nodes
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (n.get("status") or {}).get("conditions") or []
        )
        and not (n.get("spec") or {}).get("unschedulable")
    ]


def selector_matches(selector: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """A core/v1 ``NodeSelector`` against a node, as kube-scheduler evaluates it (the allocator's own
    :func:`~driver.allocation.model.node_selector_matches`). A selector the scheduler cannot parse
    matches no node: a slice with one is usable nowhere."""
    try:
        return node_selector_matches(selector, Node.from_object(node))
    except NodeSelectorError:
        return False


def reachable_nodes(slice_obj: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of ``nodes`` a slice's devices can be used from (nodeName, nodeSelector or allNodes)."""
    spec = slice_obj.get("spec") or {}
    names = [str((n.get("metadata") or {}).get("name", "")) for n in nodes]
    if spec.get("nodeName"):
        return [n for n in names if n == spec["nodeName"]]
    if spec.get("allNodes"):
        return names
    if spec.get("nodeSelector"):
        return [names[i] for i, n in enumerate(nodes) if selector_matches(spec["nodeSelector"], n)]
    if spec.get("perDeviceNodeSelection"):
        found: list[str] = []
        for device in spec.get("devices") or []:
            found += reachable_nodes({"spec": device}, nodes)
        return sorted(set(found))
    return []
