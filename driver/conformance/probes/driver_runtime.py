"""``driver_runtime_management``: driver and runtime versions are exposed, and are true.

Checks: every device of the driver publishes the driver (and runtime) version attributes -- or, where it
does not (and in device-plugin mode, where no device is in the API), its node carries the vendor's version
labels (GPU feature discovery's ``nvidia.com/cuda.driver-version.full``, AMD's node labeller's
``amd.com/gpu.driver-version``) -- and the devices of one node agree; inside a container given a device,
the vendor's tool (``nvidia-smi``) reports the same versions. Versions compare by their numeric parts, so ``580.65.6`` matches ``580.65.06`` and ``12.9.0``
matches ``12.9`` (missing trailing parts count as zero).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from driver.conformance import devices as devlib
from driver.conformance import pods as podlib
from driver.conformance.context import ProbeContext
from driver.conformance.model import CheckFailedError, CheckSkippedError, Probe
from driver.conformance.probes.common import (
    all_nodes,
    device_plugin,
    driver_devices,
    granted_devices,
    one_device,
    ready_nodes,
    unique,
)
from driver.conformance.vendor import Versions

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


def _label(node: Mapping[str, Any] | None, keys: Sequence[str]) -> tuple[str, str] | None:
    """(label key, value) of the first of ``keys`` the node carries."""
    labels = ((node or {}).get("metadata") or {}).get("labels") or {}
    return next(((f"node label {k}", str(labels[k])) for k in keys if labels.get(k)), None)


@dataclass(frozen=True)
class Kind:
    """One version the vendor exposes: the driver's or the runtime's."""

    name: str
    attributes: tuple[str, ...]
    labels: tuple[str, ...]
    command: str | None
    result: str

    @property
    def where(self) -> str:
        places = [f"attribute {' or '.join(self.attributes)}"] if self.attributes else []
        places += [f"node label {' or '.join(self.labels)}"] if self.labels else []
        return " or ".join(places)


def kinds(versions: Versions) -> list[Kind]:
    """The versions the vendor names somewhere to read them from (attributes or labels)."""
    out = [
        Kind(
            "driver",
            versions.driver_attributes,
            versions.driver_labels,
            versions.driver_command,
            "DRIVER_VERSION",
        ),
        Kind(
            "runtime",
            versions.runtime_attributes,
            versions.runtime_labels,
            versions.runtime_command,
            "RUNTIME_VERSION",
        ),
    ]
    return [k for k in out if k.attributes or k.labels]


def published(
    kind: Kind, device: devlib.Device | None, node: Mapping[str, Any] | None
) -> tuple[str, str] | None:
    """Where a version is published for a device (its attribute) or its node (a label), attribute first."""
    found = _version(device, kind.attributes) if device is not None else None
    return found or _label(node, kind.labels)


async def _scope(
    ctx: ProbeContext, devices: Sequence[devlib.Device]
) -> dict[str, list[devlib.Device | None]]:
    """Node name -> its devices (DRA), or -> [None] for nodes offering the extended resource (device plugin)."""
    if not device_plugin(ctx):
        out: dict[str, list[devlib.Device | None]] = {}
        for d in devices:
            out.setdefault(d.node or "?", []).append(d)
        return out
    resource = ctx.vendor.extended_resource or ""
    return {
        n["metadata"]["name"]: [None]
        for n in await ready_nodes(ctx)
        if ((n.get("status") or {}).get("allocatable") or {}).get(resource, "0") not in ("", "0")
    }


async def _exposed(ctx: ProbeContext, devices: Sequence[devlib.Device]) -> None:
    async with ctx.check("VerifiableMechanismExposed") as check:
        wanted = kinds(ctx.vendor.versions)
        if not wanted:
            raise CheckSkippedError(
                f"vendor {ctx.vendor.name} names no version attribute or node label (versions.driverAttributes, "
                "versions.driverLabels)"
            )
        scope = await _scope(ctx, devices)
        if not scope:
            what = (
                f"no Ready node offers {ctx.vendor.extended_resource}"
                if device_plugin(ctx)
                else f"driver {ctx.vendor.driver_name} publishes no devices in complete pools"
            )
            raise CheckFailedError(what)
        nodes = {n["metadata"]["name"]: n for n in await all_nodes(ctx)}
        by_node: dict[str, dict[str, set[str]]] = {}
        sources: set[str] = set()
        for node_name, members in sorted(scope.items()):
            node = nodes.get(node_name)
            for kind in wanted:
                for device in members:
                    found = published(kind, device, node)
                    if found is None:
                        who = (
                            f"device {device.name} (node {node_name})"
                            if device is not None
                            else f"node {node_name}"
                        )
                        raise CheckFailedError(f"{who} exposes no {kind.name} version: no {kind.where}")
                    sources.add(found[0])
                    by_node.setdefault(node_name, {}).setdefault(kind.name, set()).add(found[1])
        for node_name, found_versions in sorted(by_node.items()):
            for kind_name, values in found_versions.items():
                if len(values) > 1:
                    raise CheckFailedError(
                        f"devices on node {node_name} disagree on the {kind_name} version: {sorted(values)}"
                    )
            runtime = (
                ((nodes.get(node_name) or {}).get("status") or {})
                .get("nodeInfo", {})
                .get("containerRuntimeVersion")
            )
            shown = ", ".join(f"{k} {next(iter(v))}" for k, v in found_versions.items())
            ctx.note(f"node {node_name}: {shown}" + (f"; container runtime {runtime}" if runtime else ""))
        ctx.data["versions"] = {n: {k: sorted(v) for k, v in kv.items()} for n, kv in by_node.items()}
        count = sum(len(m) for m in scope.values())
        what = (
            f"{count} device(s)"
            if not device_plugin(ctx)
            else f"{len(scope)} node(s) offering {ctx.vendor.extended_resource}"
        )
        check.message = (
            f"{what} on {len(by_node)} node(s) expose their versions ({', '.join(sorted(sources))})"
        )


def _observed(results: dict[str, str], kind: Kind, tool: str) -> str:
    observed = results.get(kind.result)
    if observed is not None and numeric_parts(observed) is None:
        results[f"{kind.result}_ERROR"], observed = observed, None  # e.g. "No devices were found"
    if observed is None:
        error = results.get(f"{kind.result}_ERROR", "no output")
        raise CheckFailedError(
            f"{tool} could not report the {kind.name} version in a container given an accelerator: {error}"
        )
    return observed


async def _compatible(ctx: ProbeContext) -> None:
    async with ctx.check("DriverAndRuntimeCompatibility") as check:
        versions = ctx.vendor.versions
        if not versions.driver_command:
            raise CheckSkippedError(
                f"vendor {ctx.vendor.name} sets no versions.driverCommand to run in a container"
            )
        grant = await one_device(ctx)
        name = unique("versions")
        script = podlib.script(
            podlib.device_script(ctx.vendor, identity=False), podlib.version_script(ctx.vendor)
        )
        body = podlib.pod(ctx.vendor, name, [grant.container("probe", script)], templates=grant.templates)
        run = await ctx.run_pod(body)
        mine: list[devlib.Device | None] = list(await granted_devices(ctx, run)) or [None]
        node = next((n for n in await all_nodes(ctx) if n["metadata"]["name"] == run.node), None)
        await ctx.delete_pods([name])
        results = run.outputs["probe"].results
        compared = []
        for kind in kinds(versions):
            if not kind.command:
                continue
            observed = _observed(results, kind, versions.tool)
            for device in mine:
                found = published(kind, device, node)
                who = f"device {device.name}" if device is not None else f"node {run.node}"
                if found is None:
                    raise CheckFailedError(f"{who} exposes no {kind.name} version: no {kind.where}")
                key, value = found
                if not versions_match(value, observed):
                    raise CheckFailedError(
                        f"{who} (node {run.node}) publishes {key} {value}, but {versions.tool} in a container "
                        f"given it reports {observed}"
                    )
                compared.append(f"{key} {value} = {versions.tool} {observed}")
        if not compared:
            raise CheckSkippedError("no published version and command pair to compare")
        check.message = "; ".join(dict.fromkeys(compared))


async def run(ctx: ProbeContext) -> None:
    devices: list[devlib.Device] = []
    if not device_plugin(ctx):
        ctx.step(f"listing the devices of {ctx.vendor.driver_name}")
        devices = await driver_devices(ctx)
    await _exposed(ctx, devices)
    await _compatible(ctx)


PROBE = Probe(
    name="driver_runtime_management",
    test="TestAcceleratorDriverRuntimeManagement",
    title="Driver and runtime versions exposed (DRA attributes or node labels) match the node",
    requirements=("driver_runtime_management",),
    run=run,
    required=("VerifiableMechanismExposed", "DriverAndRuntimeCompatibility"),
    modes=("dra", "device-plugin"),
)
