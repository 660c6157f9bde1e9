"""Shared counters of GPUs in dynamic MIG mode: partitionable devices (KEP-4815, ``resource.k8s.io/v1``).

One counter set per GPU, named ``<gpu device name>-counters``, holds what its MIG instances are cut from:

* ``memory-slice-0`` ... ``memory-slice-7``: one counter of 1 per memory slice, so an instance takes exactly
  the slices of its placement and two instances never overlap (placements, not just amounts);
* ``compute-slices``: the GPU's compute slices (7 on A100/H100);
* the engines the full-size instance has: ``copy-engines``, ``decoders``, ``encoders``, ``jpeg-engines``,
  ``ofa-engines`` (those the GPU has none of are left out). They keep, e.g., a second ``+me`` instance (which
  takes the GPU's one JPEG and OFA engine) from being allocated.

Every device of the GPU -- each (profile, placement) and the whole GPU -- consumes from that set: its
placement's memory slices, its profile's compute slices and engines; the whole GPU consumes everything. The
scheduler then allocates only combinations the hardware can create. At most 14 counters per set (the API
allows 32) and one consumption per device (2 allowed); the sets go into counters-only slices of at most 8
sets, as the API requires from Kubernetes 1.35 on (a slice holds devices or shared counters, not both).
"""

from __future__ import annotations

from typing import Any

from driver.devices.model import Device, Gpu, Inventory, full_mig_slot, mig_compute_slices, mig_memory_slices

JSON = dict[str, Any]

COMPUTE = "compute-slices"


def counter_set_name(gpu: Gpu) -> str:
    return f"{gpu.name}-counters"


def memory_slice(index: int) -> str:
    return f"memory-slice-{index}"


def gpu_counters(gpu: Gpu) -> dict[str, int]:
    """What a GPU in dynamic MIG mode has to hand out (``{}`` for any other GPU)."""
    full = full_mig_slot(gpu)
    if not gpu.mig_dynamic or full is None:
        return {}
    counters = {memory_slice(i): 1 for i in range(mig_memory_slices(gpu))}
    counters[COMPUTE] = mig_compute_slices(gpu)
    counters.update({name: n for name, n in full.profile.engines().items() if n})
    return counters


def device_counters(device: Device) -> dict[str, int]:
    """What one device of a dynamic GPU takes from its GPU's counters (``{}`` for any other device)."""
    slot = device.slot
    if slot is None or not device.gpu.mig_dynamic:
        return {}
    if slot.whole_gpu:
        return gpu_counters(device.gpu)
    counters = {memory_slice(i): 1 for i in slot.memory_slices}
    counters[COMPUTE] = slot.profile.compute_slices
    available = gpu_counters(device.gpu)
    counters.update({name: n for name, n in slot.profile.engines().items() if n and name in available})
    return counters


def _values(counters: dict[str, int]) -> JSON:
    return {name: {"value": str(n)} for name, n in counters.items()}


def counter_sets(inventory: Inventory) -> list[JSON]:
    """The ``sharedCounters`` entries of the node's pool: one set per GPU in dynamic MIG mode."""
    return [
        {"name": counter_set_name(gpu), "counters": _values(counters)}
        for gpu in sorted(inventory.gpus, key=lambda g: g.name)
        if (counters := gpu_counters(gpu))
    ]


def consumes_counters(device: Device) -> list[JSON]:
    """The device's ``consumesCounters`` (``[]`` for a device that is not partitionable)."""
    counters = device_counters(device)
    if not counters:
        return []
    return [{"counterSet": counter_set_name(device.gpu), "counters": _values(counters)}]
