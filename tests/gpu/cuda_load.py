"""A CUDA load for the gpu tests, through PyTorch: holds GPU memory and keeps the SMs busy until killed.

Run as a plain script by the interpreter that has PyTorch (``tests/gpu/load.py`` picks it). It uses the first
visible GPU (the test sets ``CUDA_VISIBLE_DEVICES`` to a UUID), allocates ``--memory-mib`` with ordinary
device allocations, prints ``cuda load running`` once memory is held and the first products ran, and keeps
multiplying matrices until killed or ``--seconds`` passed (a cap, so a lost test cannot leave it running).
"""

from __future__ import annotations

import argparse
import importlib
import time
from typing import Any

# Imported by name: the type checker runs where PyTorch is not installed.
torch: Any = importlib.import_module("torch")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-mib", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--size", type=int, default=4096, help="square matrix size")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("cuda load failed: torch sees no CUDA device", flush=True)
        return 1
    device = torch.device("cuda", 0)
    # Written, not just reserved, so the memory is committed whatever the allocator does lazily.
    hold = torch.ones(args.memory_mib * 2**20, dtype=torch.uint8, device=device)
    a = torch.randn(args.size, args.size, device=device, dtype=torch.float16)
    b = torch.randn(args.size, args.size, device=device, dtype=torch.float16)
    out = torch.empty_like(a)
    torch.matmul(a, b, out=out)
    torch.cuda.synchronize()
    print(
        f"cuda load running kind=torch device={torch.cuda.get_device_name(device)!r} "
        f"held_mib={hold.numel() // 2**20}",
        flush=True,
    )
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for _ in range(20):
            torch.matmul(a, b, out=out)
        torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
