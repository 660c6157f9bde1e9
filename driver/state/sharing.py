"""Applying a time-slicing interval to a GPU.

The NVIDIA driver's compute time slice is set per GPU with ``nvidia-smi compute-policy -i <uuid>
--set-timeslice=<0..3>`` (Default, Short, Medium, Long); nvidia-ml-py exposes no call for it, so the tool
from the driver root is run, with the driver root's ``libnvidia-ml`` on the library path (as NVIDIA's DRA
driver does). It is a whole-GPU setting: MIG devices cannot take it.

Where the setting cannot be applied (simulated GPUs, MIG devices, no ``nvidia-smi``, the GPU refuses) it is
*recorded*: it appears in the claim's checkpoint entry and in the container env, and the GPU keeps running
with its current interval. This is logged, not an error: time slicing still works, with the default slice.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Protocol

from driver.devices.model import Device
from driver.log import get_logger

log = get_logger(__name__)

TIMESLICE_VALUES = {"Default": 0, "Short": 1, "Medium": 2, "Long": 3}
TOOL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Outcome:
    applied: bool
    detail: str = ""


class TimeSlicer(Protocol):
    def apply(self, device: Device, interval: str) -> Outcome: ...


class RecordingTimeSlicer:
    """Simulated GPUs: nothing to apply to."""

    def apply(self, device: Device, interval: str) -> Outcome:
        return Outcome(False, "simulated GPU")


class NvidiaSmiTimeSlicer:
    def __init__(self, nvidia_smi: str | None, library_dir: str | None) -> None:
        self.nvidia_smi = nvidia_smi
        self.library_dir = library_dir

    def apply(self, device: Device, interval: str) -> Outcome:
        if device.mig is not None:
            return Outcome(False, "not supported on MIG devices")
        if self.nvidia_smi is None:
            return Outcome(False, "nvidia-smi not found under the driver root")
        env = dict(os.environ)
        if self.library_dir:
            env["LD_LIBRARY_PATH"] = ":".join(p for p in (self.library_dir, env.get("LD_LIBRARY_PATH")) if p)
        argv = [
            self.nvidia_smi,
            "compute-policy",
            "-i",
            device.gpu.uuid,
            f"--set-timeslice={TIMESLICE_VALUES[interval]}",
        ]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, env=env, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Outcome(False, f"{argv[0]}: {exc}")
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip().replace("\n", " ")[:300]
            return Outcome(False, f"nvidia-smi exited {done.returncode}: {output}")
        return Outcome(True)


def apply_logged(slicer: TimeSlicer, device: Device, interval: str, claim: str) -> bool:
    """Apply and log the outcome; return whether the GPU took the setting."""
    outcome = slicer.apply(device, interval)
    if outcome.applied:
        log.info("time slice set", device=device.name, uuid=device.uuid, interval=interval, claim=claim)
    else:
        log.info(
            "time slice recorded, not applied",
            device=device.name,
            interval=interval,
            claim=claim,
            reason=outcome.detail,
        )
    return outcome.applied
