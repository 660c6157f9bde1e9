"""The DeviceClasses that go with the driver: whole GPUs and MIG devices.

Claims name a class (``deviceClassName``); the class's selector narrows the devices to this driver and a
device type, so user selectors only need to say what they care about. The Helm chart renders the same
objects (a test checks they agree); the sandbox creates them from here.
"""

from __future__ import annotations

from typing import Any


def class_name(kind: str, driver_name: str) -> str:
    """``gpu.accel-dra.dev`` for whole GPUs, ``mig.accel-dra.dev`` for MIG devices (driver domain kept)."""
    _, _, domain = driver_name.partition(".")
    return f"{kind}.{domain or driver_name}"


def selector(kind: str, driver_name: str) -> str:
    return f'device.driver == "{driver_name}" && device.attributes["{driver_name}"].type == \'{kind}\''


def device_classes(driver_name: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": class_name(kind, driver_name)},
            "spec": {"selectors": [{"cel": {"expression": selector(kind, driver_name)}}]},
        }
        for kind in ("gpu", "mig")
    ]
