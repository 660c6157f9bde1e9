"""Random allocation cases for the differential test against Kubernetes' own structured allocator.

A case (tests/support/alloccases.py shape) is a node, the cluster's ResourceSlices, DeviceClasses,
DeviceTaintRules, the devices other claims hold, and one to three claims to allocate together. Everything
the 1.37 allocator looks at is drawn: every attribute type (scalars and lists, qualified and not), selectors
on attributes, capacities and the driver (some that do not compile, some that fail at runtime), classes with
selectors and configs, counts, ``All``, admin access, ``firstAvailable`` subrequests, constraints, device
taints, DeviceTaintRules and tolerations, pools spread over slices and generations (complete, incomplete,
outdated, for other nodes, by node name, label selector, all nodes or per device), partitionable devices
with shared counters (placements over counter sets, as dynamic MIG publishes them), shared devices with
consumable capacity and request policies, binding conditions, and allocated state.

Values come from small pools so that selectors and constraints hold about as often as not. Objects are
valid for the API where the allocator relies on validation; the rare invalid corners (an unknown counter
set, a duplicate device) are there on purpose, as upstream handles them too.
"""

from __future__ import annotations

import json
import random
from typing import Any

DRIVERS = ("gpu.example.com", "nic.example.com")
NODES = ("node-1", "node-2")
MODELS = ("A100", "H100", "L4")
VERSIONS = ("1.0.0", "1.2.3", "2.0.0-rc.1", "2.0.0")
QUANTITIES = ("1Gi", "10Gi", "20Gi", "40Gi", "80Gi")
LABELS = {"region": ("east", "west"), "zone": ("a", "b", "c"), "rack": ("1", "2", "3")}
TAINT_KEYS = ("maintenance", "degraded", "example.com/reserved")


class _Case:
    def __init__(self, rng: random.Random, index: int) -> None:
        self.rng = rng
        self.index = index
        self.devices: list[tuple[str, str, dict[str, Any]]] = []  # driver, pool, device

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    # -- devices -------------------------------------------------------------------------------------------

    def attributes(self, driver: str) -> dict[str, Any]:
        r = self.rng
        attributes: dict[str, Any] = {
            "model": {"string": r.choice(MODELS)},
            "memoryGB": {"int": r.choice((10, 40, 80))},
            "fast": {"bool": self.chance(0.5)},
            "driverVersion": {"version": r.choice(VERSIONS)},
            "example.com/numa": {"int": r.randint(0, 1)},
        }
        if self.chance(0.3):
            attributes["example.com/pcieRoot"] = {"string": r.choice(("pci-0", "pci-1"))}
        if self.chance(0.15):
            kind, values = r.choice(
                (
                    ("ints", [0, 1, 2]),
                    ("strings", ["x", "y"]),
                    ("bools", [True]),
                    ("versions", ["1.0.0", "2.0.0"]),
                )
            )
            attributes["tags"] = {kind: r.sample(values, r.randint(1, len(values)))}
        if self.chance(0.3):
            name = r.choice(("memoryGB", "fast", "driverVersion", "example.com/numa"))
            del attributes[name]
        if driver == DRIVERS[1] and self.chance(0.5):
            attributes[f"{driver}/model"] = attributes.pop("model")
        return attributes

    def device(self, driver: str, name: str) -> dict[str, Any]:
        r = self.rng
        device: dict[str, Any] = {"name": name, "attributes": self.attributes(driver)}
        capacity: dict[str, Any] = {"memory": {"value": r.choice(QUANTITIES)}}
        if self.chance(0.25):
            device["allowMultipleAllocations"] = True
            capacity = {"memory": self.shared_capacity()}
            if self.chance(0.4):
                capacity["example.com/bandwidth"] = {"value": "10", "requestPolicy": {"default": "1"}}
        device["capacity"] = capacity
        if self.chance(0.12):
            device["taints"] = [self.taint() for _ in range(r.randint(1, 2))]
        if self.chance(0.08):
            device["bindingConditions"] = ["Attached"]
            device["bindingFailureConditions"] = ["AttachFailed"]
            if self.chance(0.5):
                device["bindsToNode"] = True
        return device

    def shared_capacity(self) -> dict[str, Any]:
        r = self.rng
        policy = r.choice(
            (
                None,
                {"default": "10Gi", "validRange": {"min": "10Gi", "max": "40Gi", "step": "10Gi"}},
                {"default": "5Gi", "validRange": {"min": "5Gi"}},
                {"default": "10Gi", "validValues": ["10Gi", "20Gi", "40Gi"]},
                {"default": "500m", "validRange": {"min": "500m", "max": "40", "step": "250m"}},
            )
        )
        # The capacity is often above what the policy allows one request, so the policy decides.
        value = (
            "40" if policy and "m" in policy["default"] else "80Gi" if policy else r.choice(("40Gi", "80Gi"))
        )
        return {"value": value, **({"requestPolicy": policy} if policy else {})}

    def taint(self) -> dict[str, Any]:
        r = self.rng
        taint = {"key": r.choice(TAINT_KEYS), "effect": r.choice(("NoSchedule", "NoExecute", "None"))}
        if self.chance(0.5):
            taint["value"] = r.choice(("true", "soon"))
        return taint

    # -- slices ----------------------------------------------------------------------------------------------

    def node_selection(self, node: str) -> dict[str, Any]:
        r = self.rng
        kind = r.choices(("nodeName", "allNodes", "nodeSelector"), (6, 1, 2))[0]
        if kind == "nodeName":
            return {"nodeName": node}
        if kind == "allNodes":
            return {"allNodes": True}
        return {"nodeSelector": self.node_selector()}

    def node_selector(self) -> dict[str, Any]:
        r = self.rng
        key = r.choice(sorted(LABELS))
        requirement: dict[str, Any] = {"key": key, "operator": r.choice(("In", "NotIn", "Exists", "Gt"))}
        if requirement["operator"] in ("In", "NotIn"):
            requirement["values"] = r.sample(LABELS[key], r.randint(1, 2))
        elif requirement["operator"] == "Gt":
            requirement = {"key": "rack", "operator": "Gt", "values": [r.choice(("0", "1", "2"))]}
        term: dict[str, Any] = {"matchExpressions": [requirement]}
        if self.chance(0.2):
            term["matchFields"] = [{"key": "metadata.name", "operator": "In", "values": [r.choice(NODES)]}]
        return {"nodeSelectorTerms": [term]}

    def pools(self) -> list[dict[str, Any]]:
        r = self.rng
        slices: list[dict[str, Any]] = []
        for p in range(r.randint(1, 3)):
            driver = DRIVERS[0] if p == 0 else r.choice(DRIVERS)
            node = r.choices(NODES, (6, 1))[0]
            if self.chance(0.25):
                slices += self.partitionable_pool(driver, f"pool-{p}", node)
            else:
                slices += self.plain_pool(driver, f"pool-{p}", node)
        return slices

    def plain_pool(self, driver: str, pool: str, node: str) -> list[dict[str, Any]]:
        r = self.rng
        generation = r.randint(1, 2)
        count = r.randint(1, 2)
        per_device = self.chance(0.1)
        slices = []
        for s in range(count):
            devices = [self.device(driver, f"{pool}-dev-{s}-{d}") for d in range(r.randint(1, 4))]
            if self.chance(0.03) and devices:
                devices.append(dict(devices[0]))  # a duplicate name: the pool is invalid
            selection = self.node_selection(node)
            if per_device:
                selection = {"perDeviceNodeSelection": True}
                for device in devices:
                    device.update(self.node_selection(r.choice(NODES)))
            slices.append(
                self.slice(f"{pool}-slice-{s}", (driver, pool, generation, count), selection, devices)
            )
        if self.chance(0.15):  # one slice missing: incomplete, or complete via another node's view
            slices.pop()
        if self.chance(0.15):  # a stale generation next to the current one
            stale = json.loads(json.dumps(slices[0])) if slices else None
            if stale:
                stale["metadata"]["name"] += "-old"
                stale["spec"]["pool"]["generation"] = generation - 1
                slices.append(stale)
        if self.chance(0.1) and slices:  # the driver is publishing a new generation for another node
            newer = json.loads(json.dumps(slices[-1]))
            newer["metadata"]["name"] += "-new"
            newer["spec"]["pool"]["generation"] = generation + 1
            newer["spec"].pop("nodeName", None)
            newer["spec"].update({"nodeName": "node-3"})
            slices.append(newer)
        return slices

    def partitionable_pool(self, driver: str, pool: str, node: str) -> list[dict[str, Any]]:
        """A GPU split into placements: one counter set per GPU, one device per placement (dynamic MIG)."""
        r = self.rng
        gpus = r.randint(1, 2)
        counter_sets = [
            {"name": f"gpu-{g}", "counters": {"memory": {"value": "80Gi"}, "compute": {"value": "7"}}}
            for g in range(gpus)
        ]
        devices = []
        profiles = (("1g", "10Gi", 1), ("2g", "20Gi", 2), ("3g", "40Gi", 3), ("7g", "80Gi", 7))
        for g in range(gpus):
            for name, memory, compute in r.sample(profiles, r.randint(2, 4)):
                for placement in range(r.randint(1, 2)):
                    device = self.device(driver, f"gpu-{g}-{name}-{placement}")
                    device["capacity"] = {"memory": {"value": memory}}
                    device.pop("allowMultipleAllocations", None)
                    set_name = f"gpu-{g}" if not self.chance(0.02) else "gpu-9"  # rarely: an unknown set
                    device["consumesCounters"] = [
                        {
                            "counterSet": set_name,
                            "counters": {"memory": {"value": memory}, "compute": {"value": str(compute)}},
                        }
                    ]
                    devices.append(device)
        selection = self.node_selection(node)
        return [
            self.slice(
                f"{pool}-counters", (driver, pool, 1, 2), dict(selection), [], counter_sets=counter_sets
            ),
            self.slice(f"{pool}-devices", (driver, pool, 1, 2), selection, devices),
        ]

    def slice(
        self,
        name: str,
        pool: tuple[str, str, int, int],
        selection: dict[str, Any],
        devices: list[dict[str, Any]],
        *,
        counter_sets: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A ResourceSlice of ``pool`` (driver, name, generation, slice count)."""
        driver, pool_name, generation, count = pool
        spec: dict[str, Any] = {
            "driver": driver,
            "pool": {"name": pool_name, "generation": generation, "resourceSliceCount": count},
            **selection,
        }
        if counter_sets:
            spec["sharedCounters"] = counter_sets
        else:
            spec["devices"] = devices
            self.devices += [(driver, pool_name, d) for d in devices]
        return {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": name},
            "spec": spec,
        }

    # -- selectors, classes, claims -------------------------------------------------------------------------

    def selector(self, driver: str) -> str:
        r = self.rng
        domain = json.dumps(driver)
        options = [
            f"device.driver == {domain}",
            f'device.attributes[{domain}].model == "{r.choice(MODELS)}"',
            f"device.attributes[{domain}].memoryGB >= {r.choice((10, 40, 80))}",
            f"has(device.attributes[{domain}].fast) && device.attributes[{domain}].fast",
            f'device.attributes[{domain}].driverVersion.compareTo(semver("{r.choice(VERSIONS)}")) >= 0',
            f'device.attributes["example.com"].numa == {r.randint(0, 1)}',
            f'device.capacity[{domain}].memory.compareTo(quantity("{r.choice(QUANTITIES)}")) >= 0',
            f"device.allowMultipleAllocations == {r.choice(('true', 'false'))}",
            f'"model" in device.attributes[{domain}]',
        ]
        broken = [
            f"device.attributes[{domain}].fast",  # runtime error where the attribute is missing
            'device.attributes["example.com"].pcieRoot.startsWith("pci")',
            "noSuchVariable == 1",  # compile error
            f"device.attributes[{domain}].model > 1",  # compile error: string vs int
        ]
        return r.choice(broken) if self.chance(0.04) else r.choice(options)

    def classes(self) -> list[dict[str, Any]]:
        r = self.rng
        out = []
        for c in range(r.randint(1, 3)):
            driver = DRIVERS[c % 2]
            spec: dict[str, Any] = {
                "selectors": [{"cel": {"expression": f"device.driver == {json.dumps(driver)}"}}]
            }
            if self.chance(0.3):
                spec["selectors"].append({"cel": {"expression": self.selector(driver)}})
            if self.chance(0.3):
                spec["config"] = [{"opaque": {"driver": driver, "parameters": {"class": c}}}]
            out.append(
                {
                    "apiVersion": "resource.k8s.io/v1",
                    "kind": "DeviceClass",
                    "metadata": {"name": f"class-{c}"},
                    "spec": spec,
                }
            )
        return out

    def request_body(self, classes: list[dict[str, Any]], exact: bool) -> dict[str, Any]:
        r = self.rng
        device_class = r.choices(classes, [4 if i == 0 else 1 for i in range(len(classes))])[0]
        driver = device_class["spec"]["selectors"][0]["cel"]["expression"].split('"')[1]
        body: dict[str, Any] = {"deviceClassName": device_class["metadata"]["name"]}
        if self.chance(0.01):
            body["deviceClassName"] = "missing-class"
        if self.chance(0.12):
            body["allocationMode"] = "All"
        else:
            body["allocationMode"] = "ExactCount"
            body["count"] = r.choices((1, 2, 3), (6, 3, 1))[0]
        if self.chance(0.4):
            body["selectors"] = [
                {"cel": {"expression": self.selector(driver)}} for _ in range(r.randint(1, 2))
            ]
        if self.chance(0.25):
            body["tolerations"] = [self.toleration()]
        if self.chance(0.3):
            body["capacity"] = {
                "requests": {
                    "memory": r.choice(("1Gi", "5Gi", "10Gi", "15Gi", "30Gi", "50Gi", "1500m", "80Gi"))
                }
            }
        if exact and self.chance(0.08):
            body["adminAccess"] = True
        return body

    def toleration(self) -> dict[str, Any]:
        r = self.rng
        toleration: dict[str, Any] = {"operator": r.choice(("Exists", "Equal"))}
        if toleration["operator"] == "Equal" or self.chance(0.7):
            toleration["key"] = r.choice(TAINT_KEYS)
        if toleration["operator"] == "Equal":
            toleration["value"] = r.choice(("true", "soon"))
        if self.chance(0.5):
            toleration["effect"] = r.choice(("NoSchedule", "NoExecute"))
        return toleration

    def claim(self, c: int, classes: list[dict[str, Any]]) -> dict[str, Any]:
        r = self.rng
        requests = []
        for q in range(r.choices((1, 2, 3), (5, 3, 1))[0]):
            if self.chance(0.3):
                subs = [
                    {"name": f"sub-{s}", **self.request_body(classes, False)} for s in range(r.randint(2, 3))
                ]
                requests.append({"name": f"req-{q}", "firstAvailable": subs})
            else:
                requests.append({"name": f"req-{q}", "exactly": self.request_body(classes, True)})
        devices: dict[str, Any] = {"requests": requests}
        if self.chance(0.35):
            attribute = r.choice(
                (
                    "gpu.example.com/model",
                    "example.com/numa",
                    "gpu.example.com/driverVersion",
                    "example.com/pcieRoot",
                    "gpu.example.com/tags",
                )
            )
            kind = r.choice(("matchAttribute", "distinctAttribute"))
            constraint: dict[str, Any] = {kind: attribute}
            if self.chance(0.5):
                constraint["requests"] = [x["name"] for x in r.sample(requests, r.randint(1, len(requests)))]
            devices["constraints"] = [constraint]
        if self.chance(0.25):
            names = [x["name"] for x in requests] + [
                f"{x['name']}/sub-1" for x in requests if "firstAvailable" in x
            ]
            config: dict[str, Any] = {"opaque": {"driver": DRIVERS[0], "parameters": {"claim": c}}}
            if self.chance(0.6):
                config["requests"] = r.sample(names, r.randint(1, len(names)))
            devices["config"] = [config]
        return {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": f"claim-{c}", "namespace": "default", "uid": f"uid-{self.index}-{c}"},
            "spec": {"devices": devices},
        }

    def allocated_state(self) -> dict[str, Any]:
        r = self.rng
        state: dict[str, Any] = {"devices": [], "shared": [], "capacity": {}}
        for driver, pool, device in self.devices:
            ident = f"{driver}/{pool}/{device['name']}"
            if device.get("allowMultipleAllocations") and self.chance(0.3):
                state["shared"].append(
                    {"device": ident, "shareID": f"00000000-0000-0000-0000-{len(state['shared']):012d}"}
                )
                state["capacity"][ident] = {"memory": r.choice(("1", "10Gi", "20Gi"))}
            elif self.chance(0.12):
                state["devices"].append(ident)
        return state

    def taint_rules(self) -> list[dict[str, Any]]:
        r = self.rng
        rules = []
        for t in range(r.choices((0, 1, 2), (6, 3, 1))[0]):
            selector: dict[str, Any] = {}
            if self.devices and self.chance(0.7):
                driver, pool, device = r.choice(self.devices)
                selector = {"driver": driver, "pool": pool}
                if self.chance(0.6):
                    selector["device"] = device["name"]
            rules.append(
                {
                    "apiVersion": "resource.k8s.io/v1",
                    "kind": "DeviceTaintRule",
                    "metadata": {"name": f"rule-{t}"},
                    "spec": {"deviceSelector": selector, "taint": self.taint()},
                }
            )
        return rules

    def build(self) -> dict[str, Any]:
        r = self.rng
        node_name = r.choices(NODES, (6, 1))[0]
        labels = {key: r.choice(values) for key, values in LABELS.items() if self.chance(0.8)}
        slices = self.pools()
        classes = self.classes()
        claims = [self.claim(c, classes) for c in range(r.choices((1, 2, 3), (7, 2, 1))[0])]
        return {
            "id": f"gen-{self.index}",
            "node": {"metadata": {"name": node_name, "labels": labels}},
            "slices": slices,
            "classes": classes,
            "claims": claims,
            "allocatedState": self.allocated_state(),
            "deviceTaintRules": self.taint_rules(),
        }


def cases(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [_Case(rng, i).build() for i in range(count)]
