"""The gpu test set (``pytest -m gpu``): real NVIDIA GPUs and NVML, no Kubernetes.

``@pytest.mark.gpu`` tests are skipped, with the reason, where NVML cannot be initialised; those that also
need nvidia-smi or a CUDA load skip through the fixtures below. The sim API server, sim kubelet and plugin
process fixtures are the integration suite's, imported here so the plugin test drives the same processes.
"""

from __future__ import annotations

import functools
import os
import shutil

import pytest

from tests.gpu import smi
from tests.gpu.load import Load, find_load
from tests.integration.conftest import (  # noqa: F401  (fixtures)
    apiserver,
    kube,
    kubeconfig,
    kubelet,
    node_dirs,
    start_plugin,
)

#: Where the plugin under test looks for the driver's user-space files (``--driver-root``).
DRIVER_ROOT = os.environ.get("ACCEL_DRA_GPU_DRIVER_ROOT", "/")


@functools.cache
def nvml_unavailable() -> str | None:
    """Why NVML cannot be used here, or ``None`` when it can."""
    try:
        import pynvml
    except ImportError as exc:
        return f"nvidia-ml-py is not installed: {exc}"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"NVML is not available ({exc}): needs an NVIDIA driver and GPU"
    pynvml.nvmlShutdown()
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    reason = nvml_unavailable() if gpu_items else None
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def nvidia_smi() -> str:
    path = shutil.which("nvidia-smi")
    if path is None:
        pytest.skip("nvidia-smi is not on PATH: nothing independent to compare with")
    return path


@pytest.fixture(scope="session")
def smi_gpus(nvidia_smi: str) -> list[smi.SmiGpu]:
    gpus = smi.query_gpus(nvidia_smi)
    assert gpus, "nvidia-smi lists no GPU although NVML initialised"
    return gpus


@pytest.fixture(scope="session")
def smi_report(nvidia_smi: str) -> smi.SmiReport:
    return smi.query_report(nvidia_smi)


@pytest.fixture(scope="session")
def whole_gpu(smi_gpus: list[smi.SmiGpu]) -> smi.SmiGpu:
    """The first GPU that runs work as a whole (MIG disabled or not capable)."""
    for gpu in sorted(smi_gpus, key=lambda g: g.index):
        if gpu.mig_mode != "Enabled":
            return gpu
    pytest.skip("every GPU has MIG enabled (the tests never change MIG mode)")


@pytest.fixture(scope="session")
def cuda_load() -> Load:
    found = find_load()
    if isinstance(found, Load):
        return found
    if os.environ.get("ACCEL_DRA_GPU_LOAD"):
        pytest.fail(f"the forced CUDA load cannot run: {found}")
    pytest.skip(found)
