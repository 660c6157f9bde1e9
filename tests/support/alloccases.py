"""Allocation cases in upstream's shape (tests/fixtures/upstream-cases/allocation.json, hack/draoracle alloc):
run them through accel-dra's allocator and compare verdicts in one normal form.

A case: ``node``, ``slices``, ``classes``, ``claims`` (allocated together), ``allocatedState`` (``devices``:
dedicated ``driver/pool/device`` ids, ``shared``: ``{device, shareID}``, ``capacity``: device id -> capacity
-> quantity) and, for generated cases, ``deviceTaintRules``.

The normal form: ``verdict`` is ok | unschedulable | error (a timeout counts as an error, as the scheduler
returns an error status for it); for ok, the allocations with share ids reduced to "has one" and
quantities to their exact value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from driver.allocation.allocated import AllocatedState
from driver.allocation.allocator import NO_FIT, allocate
from driver.allocation.model import InputError, Node
from driver.quantity import parse_quantity

ORACLE_FIELDS = (
    "id",
    "node",
    "slices",
    "classes",
    "claims",
    "allocatedState",
    "deviceTaintRules",
    "listTypeAttributes",
)


def oracle_input(case: Mapping[str, Any]) -> dict[str, Any]:
    """What ``draoracle alloc`` reads for a case (it refuses unknown fields)."""
    out = {k: case[k] for k in ORACLE_FIELDS if case.get(k) is not None}
    for key in ("slices", "classes", "claims"):
        out.setdefault(key, [])
    return out


def split_device_id(text: str) -> tuple[str, str, str]:
    driver, _, rest = text.partition("/")
    pool, _, device = rest.rpartition("/")
    return driver, pool, device


def allocated_state(raw: Mapping[str, Any] | None) -> AllocatedState:
    state = AllocatedState()
    raw = raw or {}
    for device in raw.get("devices") or ():
        state.dedicated[split_device_id(device)] = None
    for shared in raw.get("shared") or ():
        state.shared.setdefault(split_device_id(shared["device"]), {})[shared["shareID"]] = None
    for device, capacity in (raw.get("capacity") or {}).items():
        state.capacity[split_device_id(device)] = {k: parse_quantity(v) for k, v in capacity.items()}
    return state


def ours(case: Mapping[str, Any]) -> dict[str, Any]:
    """accel-dra's verdict on a case, in the normal form (plus ``error``: our message)."""
    node = Node.from_object(case["node"])
    try:
        result = allocate(
            case.get("claims") or [],
            case.get("slices") or [],
            case.get("classes") or [],
            node,
            allocated_state(case.get("allocatedState")),
            taint_rules=case.get("deviceTaintRules") or [],
            list_type_attributes=bool(case.get("listTypeAttributes")),
        )
    except InputError as exc:
        return {"verdict": "error", "error": str(exc), "allocations": None}
    if result.failure is not None:
        verdict = "unschedulable" if result.failure.cause == NO_FIT else "error"
        return {"verdict": verdict, "error": result.failure.message, "allocations": None}
    return {
        "verdict": "ok",
        "error": "",
        "allocations": [normal_allocation(a.allocation) for a in result.allocations],
    }


def oracle_verdict(answer: Mapping[str, Any]) -> dict[str, Any]:
    """``draoracle alloc``'s answer for one case in the normal form."""
    verdict = answer["verdict"]
    return {
        "verdict": "error" if verdict == "timeout" else verdict,
        "error": answer.get("error", ""),
        "allocations": [normal_allocation(a) for a in answer.get("allocations") or []]
        if verdict == "ok"
        else None,
    }


def recorded_verdict(upstream: Mapping[str, Any]) -> dict[str, Any]:
    """The verdict recorded in allocation.json (Kubernetes 1.36.2) in the normal form."""
    allocations = None
    if upstream["verdict"] == "ok":
        allocations = []
        for allocation in upstream.get("allocations") or []:
            results = [
                {**r, "consumedCapacity": _exact(r.get("consumedCapacity"))} for r in allocation["results"]
            ]
            copy = json.loads(json.dumps(allocation))  # callers may edit their expectation
            allocations.append(
                {"results": results, "config": copy["config"], "nodeSelector": copy["nodeSelector"]}
            )
    return {"verdict": upstream["verdict"], "error": upstream.get("error", ""), "allocations": allocations}


def normal_allocation(allocation: Mapping[str, Any]) -> dict[str, Any]:
    devices = allocation.get("devices") or {}
    results = [
        {
            "request": r["request"],
            "driver": r["driver"],
            "pool": r["pool"],
            "device": r["device"],
            "adminAccess": bool(r.get("adminAccess")),
            "tolerations": r.get("tolerations") or [],
            "shareID": bool(r.get("shareID")),
            "bindingConditions": r.get("bindingConditions") or [],
            "bindingFailureConditions": r.get("bindingFailureConditions") or [],
            "consumedCapacity": _exact(r.get("consumedCapacity")),
        }
        for r in devices.get("results") or []
    ]
    return {
        "results": results,
        "config": devices.get("config") or [],
        "nodeSelector": allocation.get("nodeSelector"),
    }


def _exact(quantities: Mapping[str, Any] | None) -> dict[str, str]:
    return {name: str(parse_quantity(value).normalize()) for name, value in (quantities or {}).items()}
