"""The DeviceClasses that go with the driver: whole GPUs, MIG devices, and one per MIG profile.

Claims name a class (``deviceClassName``); the class's selector narrows the devices to this driver and a
device type, so user selectors only need to say what they care about. The Helm chart renders the same
objects (a test checks they agree); the sandbox creates them from here.

Extended resources backed by DRA (KEP-5004; beta and on in 1.36, GA in 1.37): a class with
``extendedResourceName`` lets a pod ask for devices with ``resources.limits`` as it would from a device
plugin -- the scheduler creates a claim for them on nodes that do not advertise the resource themselves.
The defaults are the names of NVIDIA's device plugin (``nvidia.com/gpu``, and ``nvidia.com/mig-<profile>``
of its "mixed" MIG strategy), so workloads move over unchanged. A MIG profile gets its own class only when
it is listed: the chart cannot know the cluster's GPUs (:func:`mig_profiles_in_use` reads them from the
published slices; with dynamic MIG every profile a GPU offers is "in use").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

GPU_EXTENDED_RESOURCE = "nvidia.com/gpu"
MIG_EXTENDED_RESOURCE_PREFIX = "nvidia.com/mig-"
#: The MIG profiles of the A100 40GB, and of the A100 80GB and H100 80GB (which share their names).
DEFAULT_MIG_PROFILES: tuple[str, ...] = (
    "1g.5gb",
    "1g.10gb",
    "1g.20gb",
    "2g.10gb",
    "2g.20gb",
    "3g.20gb",
    "3g.40gb",
    "4g.20gb",
    "4g.40gb",
    "7g.40gb",
    "7g.80gb",
)


def class_name(kind: str, driver_name: str) -> str:
    """``gpu.accel-dra.dev`` for whole GPUs, ``mig.accel-dra.dev`` for MIG devices (driver domain kept)."""
    _, _, domain = driver_name.partition(".")
    return f"{kind}.{domain or driver_name}"


def profile_slug(profile: str) -> str:
    """A MIG profile as a name part: ``+`` (``1g.10gb+me``) is not allowed in names and becomes ``.``."""
    return profile.replace("+", ".")


def profile_class_name(profile: str, driver_name: str) -> str:
    """``1g.10gb.mig.accel-dra.dev``: the class of one MIG profile."""
    return f"{profile_slug(profile)}.{class_name('mig', driver_name)}"


def selector(kind: str, driver_name: str) -> str:
    return f'device.driver == "{driver_name}" && device.attributes["{driver_name}"].type == \'{kind}\''


def profile_selector(profile: str, driver_name: str) -> str:
    return f"{selector('mig', driver_name)} && device.attributes[\"{driver_name}\"].profile == '{profile}'"


def _device_class(name: str, expression: str, extended_resource: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"selectors": [{"cel": {"expression": expression}}]}
    if extended_resource:
        spec["extendedResourceName"] = extended_resource
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": name},
        "spec": spec,
    }


def device_classes(
    driver_name: str,
    *,
    gpu_extended_resource: str = GPU_EXTENDED_RESOURCE,
    mig_profiles: Sequence[str] = DEFAULT_MIG_PROFILES,
    mig_extended_resource_prefix: str = MIG_EXTENDED_RESOURCE_PREFIX,
) -> list[dict[str, Any]]:
    """The chart's DeviceClasses with its default values (``""`` turns an extended resource off)."""
    classes = [
        _device_class(class_name("gpu", driver_name), selector("gpu", driver_name), gpu_extended_resource),
        _device_class(class_name("mig", driver_name), selector("mig", driver_name), ""),
    ]
    for profile in mig_profiles:
        extended = (
            f"{mig_extended_resource_prefix}{profile_slug(profile)}" if mig_extended_resource_prefix else ""
        )
        classes.append(
            _device_class(
                profile_class_name(profile, driver_name), profile_selector(profile, driver_name), extended
            )
        )
    return classes


def mig_profiles_in_use(slices: Iterable[Mapping[str, Any]], driver_name: str) -> list[str]:
    """The MIG profiles the driver's published devices have (sorted): what needs a class of its own."""
    found: set[str] = set()
    for item in slices:
        spec = item.get("spec") or {}
        if spec.get("driver") != driver_name:
            continue
        for device in spec.get("devices") or ():
            attributes = device.get("attributes") or {}
            kind = (attributes.get("type") or {}).get("string")
            profile = (attributes.get("profile") or {}).get("string")
            if kind == "mig" and isinstance(profile, str) and profile:
                found.add(profile)
    return sorted(found)
