"""The standard attribute profile: every published device of the selected driver(s), checked per driver.

The same checks as ``accel-dra validate``: the API server's ResourceSlice rules and the attribute profile of
docs/attributes.md. The report carries a table of every device's attributes and findings. The profile is this
project's standard, not a checklist requirement: the probe maps to no requirement id and is advisory -- its
results go to ``results/advisory/``, never into the evidence the checklist cites, and never fail the run
(other vendors' drivers name their attributes their own way: AMD's has no ``uuid``, Intel's no
``productName``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from driver.conformance import devices as devlib
from driver.conformance.context import ProbeContext
from driver.conformance.model import CheckFailedError, CheckSkippedError, Probe
from driver.conformance.probes.common import driver_pools
from driver.kube.api.resourceslice import validate_resource_slice
from driver.resources.attributes import check_device_profile
from driver.resources.cli import as_v1

JSON = dict[str, Any]
MAX_SHOWN = 12


def _slice_errors(slice_obj: Mapping[str, Any]) -> list[str]:
    name = (slice_obj.get("metadata") or {}).get("name", "?")
    return [f"ResourceSlice {name}: {e}" for e in validate_resource_slice(as_v1(slice_obj))]


def device_rows(pools: list[devlib.Pool]) -> tuple[list[JSON], dict[str, list[str]]]:
    """One row per device (attributes, capacity, profile findings) and slice-level findings per driver."""
    rows: list[JSON] = []
    slice_findings: dict[str, list[str]] = {}
    for pool in pools:
        found = slice_findings.setdefault(pool.driver, [])  # pool completeness is dra_support's concern
        for s in pool.slices:
            found += _slice_errors(s)
        for device in devlib.devices([pool], complete_only=False):
            findings = check_device_profile(device.raw, device.driver)
            rows.append(
                {
                    "driver": device.driver,
                    "pool": device.pool,
                    "node": device.node,
                    "device": device.name,
                    "attributes": {k: str(v) for k, v in sorted(device.attributes.items())},
                    "capacity": dict(sorted(device.capacity.items())),
                    "findings": [f"{f.attribute}: {f.problem}" for f in findings],
                }
            )
    return rows, slice_findings


async def run(ctx: ProbeContext) -> None:
    drivers = ctx.vendor.drivers_to_profile
    ctx.step(f"listing the ResourceSlices of {', '.join(drivers)}")
    pools = await driver_pools(ctx, drivers)
    rows, slice_findings = device_rows(pools)
    ctx.data["devices"] = rows
    names = sorted({p.driver for p in pools} | ({d for d in drivers if d != "*"}))
    for driver in names:
        async with ctx.check(driver) as check:
            mine = [r for r in rows if r["driver"] == driver]
            if not mine:
                raise CheckSkippedError(f"driver {driver} publishes no devices")
            problems = list(slice_findings.get(driver, []))
            problems += [f"device {r['device']}: {f}" for r in mine for f in r["findings"]]
            for problem in problems[:MAX_SHOWN]:
                ctx.note(problem)
            if problems:
                more = f" (and {len(problems) - MAX_SHOWN} more)" if len(problems) > MAX_SHOWN else ""
                raise CheckFailedError(
                    f"{len(problems)} finding(s) on {len(mine)} device(s): {problems[0]}{more}"
                )
            check.message = f"{len(mine)} device(s) follow the standard attribute profile"


PROBE = Probe(
    name="attribute_profile",
    test="TestAttributeProfile",
    title="Published devices follow the standard attribute profile",
    requirements=(),
    run=run,
    advisory=True,
)
