"""``driver_runtime_management``: driver and runtime versions are exposed through DRA, and are true.

Checks: every device of the driver publishes the driver (and runtime) version attributes, and the devices of
one node agree; inside a container that claimed a device, the vendor's tool (``nvidia-smi``) reports the
same versions. Versions compare by their numeric parts, so ``580.65.6`` matches ``580.65.06`` and ``12.9.0``
matches ``12.9`` (missing trailing parts count as zero).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from driver.conformance import devices as devlib
from driver.conformance import pods as podlib
from driver.conformance.context import ProbeContext
from driver.conformance.model import CheckFailedError, CheckSkippedError, Probe
from driver.conformance.probes.common import (
    allocated,
    driver_devices,
    find_device,
    one_device_template,
    unique,
)

_NUMERIC_PREFIX_RE = re.compile(r"^\s*v?(\d+(?:\.\d+)*)")


def numeric_parts(version: str) -> tuple[int, ...] | None:
    match = _NUMERIC_PREFIX_RE.match(version)
    return tuple(int(p) for p in match[1].split(".")) if match else None


def versions_match(published: str, observed: str) -> bool:
    """Equal numeric prefixes, missing trailing parts counting as zero."""
    a, b = numeric_parts(published), numeric_parts(observed)
    if a is None or b is None:
        return published.strip() == observed.strip()
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) == b + (0,) * (width - len(b))


def _version(device: devlib.Device, keys: Sequence[str]) -> tuple[str, str] | None:
    """(attribute key, value) of the first of ``keys`` the device publishes."""
    for key in keys:
        value = device.attribute(key)
        if value is not None:
            return key, str(value)
    return None


async def _exposed(ctx: ProbeContext, devices: Sequence[devlib.Device]) -> None:
    async with ctx.check("VerifiableMechanismExposed") as check:
        versions = ctx.vendor.versions
        kinds = [("driver", versions.driver_attributes), ("runtime", versions.runtime_attributes)]
        by_node: dict[str, dict[str, set[str]]] = {}
        for device in devices:
            for kind, keys in kinds:
                if not keys:
                    continue
                found = _version(device, keys)
                if found is None:
                    raise CheckFailedError(
                        f"device {device.name} (node {device.node or '?'}) publishes no {kind} version "
                        f"attribute ({' or '.join(keys)})"
                    )
                by_node.setdefault(device.node or "?", {}).setdefault(kind, set()).add(found[1])
        if not by_node:
            raise CheckFailedError(f"driver {ctx.vendor.driver_name} publishes no devices")
        for node, found_versions in sorted(by_node.items()):
            for kind, values in found_versions.items():
                if len(values) > 1:
                    raise CheckFailedError(
                        f"devices on node {node} disagree on the {kind} version: {sorted(values)}"
                    )
            shown = ", ".join(f"{k} {next(iter(v))}" for k, v in found_versions.items())
            ctx.note(f"node {node}: {shown}")
        ctx.data["versions"] = {n: {k: sorted(v) for k, v in kv.items()} for n, kv in by_node.items()}
        check.message = f"{len(devices)} device(s) on {len(by_node)} node(s) publish their versions"


async def _compatible(ctx: ProbeContext) -> None:
    async with ctx.check("DriverAndRuntimeCompatibility") as check:
        versions = ctx.vendor.versions
        if not versions.driver_command:
            raise CheckSkippedError(
                f"vendor {ctx.vendor.name} sets no versions.driverCommand to run in a container"
            )
        template = await one_device_template(ctx)
        name = unique("versions")
        body = podlib.pod(
            ctx.vendor,
            name,
            [
                podlib.Container(
                    "probe",
                    podlib.script(
                        podlib.device_script(ctx.vendor, identity=False), podlib.version_script(ctx.vendor)
                    ),
                    ("gpu",),
                )
            ],
            templates={"gpu": template},
        )
        run = await ctx.run_pod(body)
        claim = await ctx.claim_for(run.pod, "gpu")
        devices = await driver_devices(ctx)
        mine = [find_device(devices, r) for r in allocated(claim)]
        await ctx.delete_pods([name])
        results = run.outputs["probe"].results
        compared = []
        for kind, keys, result_key in (
            ("driver", versions.driver_attributes, "DRIVER_VERSION"),
            ("runtime", versions.runtime_attributes, "RUNTIME_VERSION"),
        ):
            command = versions.driver_command if kind == "driver" else versions.runtime_command
            if not command or not keys:
                continue
            observed = results.get(result_key)
            if observed is not None and numeric_parts(observed) is None:
                results[f"{result_key}_ERROR"], observed = observed, None  # e.g. "No devices were found"
            if observed is None:
                error = results.get(f"{result_key}_ERROR", "no output")
                raise CheckFailedError(
                    f"{versions.tool} could not report the {kind} version in a claimed container: {error}"
                )
            for device in mine:
                found = _version(device, keys)
                if found is None:
                    raise CheckFailedError(f"device {device.name} publishes no {kind} version attribute")
                key, published = found
                if not versions_match(published, observed):
                    raise CheckFailedError(
                        f"device {device.name} (node {device.node or run.node}) publishes {key} {published}, but "
                        f"{versions.tool} in a container that claimed it reports {observed}"
                    )
                compared.append(f"{key} {published} = {versions.tool} {observed}")
        if not compared:
            raise CheckSkippedError("no version attribute and command pair to compare")
        check.message = "; ".join(dict.fromkeys(compared))


async def run(ctx: ProbeContext) -> None:
    ctx.step(f"listing the devices of {ctx.vendor.driver_name}")
    devices = await driver_devices(ctx)
    await _exposed(ctx, devices)
    await _compatible(ctx)


PROBE = Probe(
    name="driver_runtime_management",
    test="TestAcceleratorDriverRuntimeManagement",
    title="Driver and runtime versions exposed through DRA match the node",
    requirements=("driver_runtime_management",),
    run=run,
    required=("VerifiableMechanismExposed", "DriverAndRuntimeCompatibility"),
)
