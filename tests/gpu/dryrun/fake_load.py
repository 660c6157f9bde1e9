"""Dry run: stands in for "the Python that has PyTorch" (``ACCEL_DRA_GPU_LOAD_PYTHON``).

The PyTorch probe (``-c ...``) succeeds; running ``cuda_load.py`` instead creates the ``ADRA_DRY_BUSY`` file
the dry-run NVML reads as load, prints the ready line, and waits to be killed.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def main(args: list[str]) -> int:
    if args[:1] == ["-c"]:
        return 0
    busy = os.environ.get("ADRA_DRY_BUSY", "/tmp/adra-dry-busy")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    open(busy, "w").close()
    try:
        print("cuda load running kind=dry-run " + " ".join(args), flush=True)
        time.sleep(300)
    finally:
        os.remove(busy)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
