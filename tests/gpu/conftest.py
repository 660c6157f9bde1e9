"""Skip ``@pytest.mark.gpu`` tests, with the reason, where NVML cannot be initialised."""

from __future__ import annotations

import functools

import pytest


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
