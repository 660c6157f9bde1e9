"""Which CUDA load the gpu tests can run here, and starting it on one GPU.

PyTorch first (``cuda_load.py``, a matmul loop), else a small CUDA program compiled with nvcc
(``cuda_load.cu``), else none: the tests that need a load skip with the reason.

Environment:

- ``ACCEL_DRA_GPU_LOAD=torch|cuda`` forces one kind (it is then an error, not a skip, if it cannot run);
- ``ACCEL_DRA_GPU_LOAD_PYTHON``: the interpreter that has PyTorch (default: the one running the tests). The
  load runs without ``PYTHONPATH``, so the wheels the tests run on cannot shadow that interpreter's own
  packages (hack/gpu-validate.sh relies on this).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import Process

HERE = Path(__file__).resolve().parent
READY = r"cuda load running"
#: Upper bound on a load's life, so a test that dies cannot leave the GPU busy for long.
MAX_SECONDS = 300


@dataclass(frozen=True)
class Load:
    """A runnable load: ``argv + [memory_mib, seconds]`` style arguments are added by :func:`start_load`."""

    kind: str
    argv: tuple[str, ...]

    def command(self, memory_mib: int, seconds: int) -> list[str]:
        if self.kind == "torch":
            return [*self.argv, "--memory-mib", str(memory_mib), "--seconds", str(seconds)]
        return [*self.argv, str(memory_mib), str(seconds)]


def _clean_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": ""}


def _torch_load() -> Load | str:
    python = os.environ.get("ACCEL_DRA_GPU_LOAD_PYTHON") or sys.executable
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"
    try:
        done = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, timeout=120, env=_clean_env(), check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"PyTorch probe with {python} failed: {err}"
    if done.returncode == 3:
        return f"PyTorch in {python} sees no CUDA device"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"PyTorch is not importable by {python}: {last}"
    return Load("torch", (python, str(HERE / "cuda_load.py")))


def _cuda_load() -> Load | str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "nvcc is not on PATH"
    build = Path(tempfile.mkdtemp(prefix="adra-cuda-load-"))
    atexit.register(shutil.rmtree, build, ignore_errors=True)
    binary = build / "cuda_load"
    try:
        done = subprocess.run(
            [nvcc, "-O2", "-o", str(binary), str(HERE / "cuda_load.cu")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"nvcc failed: {err}"
    if done.returncode != 0:
        return f"nvcc could not build cuda_load.cu:\n{done.stdout}{done.stderr}"
    return Load("cuda", (str(binary),))


@functools.cache
def find_load() -> Load | str:
    """The load to use, or why there is none (a skip reason)."""
    forced = os.environ.get("ACCEL_DRA_GPU_LOAD", "")
    if forced == "torch":
        return _torch_load()
    if forced == "cuda":
        return _cuda_load()
    if forced:
        return f"ACCEL_DRA_GPU_LOAD={forced!r} is neither 'torch' nor 'cuda'"
    torch = _torch_load()
    if isinstance(torch, Load):
        return torch
    cuda = _cuda_load()
    if isinstance(cuda, Load):
        return cuda
    return f"no CUDA load can run here: {torch}; {cuda}"


async def start_load(load: Load, gpu_uuid: str, memory_mib: int) -> Process:
    """Start ``load`` on the GPU with this UUID and wait until it holds its memory and runs kernels."""
    env = {**_clean_env(), "CUDA_VISIBLE_DEVICES": gpu_uuid, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    process = await Process.start(
        load.command(memory_mib, MAX_SECONDS), name=f"cuda-load[{load.kind}]", env=env
    )
    await process.wait_log(READY, timeout=120)
    return process
