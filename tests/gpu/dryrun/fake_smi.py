"""Dry run: a stand-in for ``nvidia-smi`` printing the fake profile ``ADRA_DRY_PROFILE`` in nvidia-smi's layouts.

Only the invocations the gpu test set and hack/gpu-validate.sh use. ``ADRA_DRY_MUTATE`` makes it disagree
with the driver on purpose (``memory``, ``driver``, ``cuda``, ``links``, ``numa``, ``minor``), to see the
matching test fail.
"""

from __future__ import annotations

import os
import sys

from driver.devices.fake import load_named_profile
from driver.devices.model import Gpu

INVENTORY = load_named_profile(os.environ["ADRA_DRY_PROFILE"], node_name="dry").inventory
GPUS = sorted(INVENTORY.gpus, key=lambda g: g.pci_bus_id or "")
MUTATE = os.environ.get("ADRA_DRY_MUTATE", "")


def bus(gpu: Gpu) -> str:
    domain, rest = (gpu.pci_bus_id or "0000:00:00.0").split(":", 1)
    return f"{int(domain, 16):08X}:{rest.upper()}"


def mig(gpu: Gpu) -> str:
    return "[N/A]" if gpu.mig_enabled is None else "Enabled" if gpu.mig_enabled else "Disabled"


def query(fields: list[str]) -> None:
    for index, gpu in enumerate(GPUS):
        memory = (gpu.memory_bytes or 0) // 2**20 - (MUTATE == "memory")
        values = {
            "index": str(index),
            "uuid": gpu.uuid,
            "name": gpu.product_name or "",
            "memory.total": str(memory),
            "pci.bus_id": bus(gpu),
            "driver_version": "580.65.07" if MUTATE == "driver" else INVENTORY.driver_version or "",
            "compute_cap": gpu.compute_capability or "[N/A]",
            "mig.mode.current": mig(gpu),
        }
        print(", ".join(values[f] for f in fields))


def xml() -> None:
    cuda = "13.0" if MUTATE == "cuda" else INVENTORY.cuda_driver_version
    print('<?xml version="1.0" ?>\n<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">\n<nvidia_smi_log>')
    print(
        f"\t<driver_version>{INVENTORY.driver_version}</driver_version>\n\t<cuda_version>{cuda}</cuda_version>"
    )
    for gpu in GPUS:
        brand = "NVIDIA" if gpu.brand == "Nvidia" else gpu.brand
        minor = 99 if MUTATE == "minor" else gpu.minor
        print(f'\t<gpu id="{bus(gpu)}">\n\t\t<product_name>{gpu.product_name}</product_name>')
        print(f"\t\t<product_brand>{brand}</product_brand>")
        print(f"\t\t<product_architecture>{gpu.architecture}</product_architecture>")
        print(f"\t\t<uuid>{gpu.uuid}</uuid>\n\t\t<minor_number>{minor}</minor_number>\n\t</gpu>")
    print("</nvidia_smi_log>")


def nvlink_status() -> None:
    for index, gpu in enumerate(GPUS):
        print(f"GPU {index}: {gpu.product_name} (UUID: {gpu.uuid})")
        links = list(gpu.nvlinks or ())
        if MUTATE == "links" and index == 0:
            links = links[:-1]
        for link in links:
            print(f"\t Link {link.index}: {'26.562 GB/s' if link.active else '<inactive>'}")


def topo() -> None:
    labels = [f"GPU{i}" for i in range(len(GPUS))]
    print("\t" + "\t".join(labels) + "\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID")
    for i, gpu in enumerate(GPUS):
        cells = []
        for j, other in enumerate(GPUS):
            mine, theirs = INVENTORY.topology.domain_of(gpu.uuid), INVENTORY.topology.domain_of(other.uuid)
            if i == j:
                cells.append(" X ")
            elif mine is not None and mine == theirs:
                direct = sum(
                    1 for n in gpu.nvlinks or () if n.active and n.remote_pci_bus_id == other.pci_bus_id
                )
                cells.append(f"NV{direct or gpu.active_links}")
            else:
                cells.append("SYS")
        numa = (
            "3" if MUTATE == "numa" and i == 1 else str(gpu.numa_node) if gpu.numa_node is not None else "N/A"
        )
        print(f"GPU{i}\t" + "\t".join(cells) + f"\t0-15\t{numa}\t\tN/A")
    print("\nLegend:\n\n  X    = Self\n  NV#  = Connection traversing a bonded set of # NVLinks")


def main(args: list[str]) -> int:
    if args and args[0].startswith("--query-gpu="):
        query(args[0].split("=", 1)[1].split(","))
    elif args == ["-q", "-x"]:
        xml()
    elif args == ["-q"]:
        print(f"Driver Version : {INVENTORY.driver_version}\nCUDA Version : {INVENTORY.cuda_driver_version}")
    elif args == ["nvlink", "-s"]:
        nvlink_status()
    elif args == ["topo", "-m"]:
        topo()
    else:
        print(
            f"NVIDIA-SMI (dry run)  Driver Version: {INVENTORY.driver_version}  CUDA Version: {INVENTORY.cuda_driver_version}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
