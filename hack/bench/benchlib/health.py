"""One device health change -> how many ResourceSlice writes (the target: exactly one update).

An XID is injected into a simulated GPU with ``accel-dra sim inject``; the plugin's health monitor taints the
device in its slice. Every write to ``resourceslices`` from the injection until ``settle`` seconds after the
taint appeared is counted.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from benchlib import harness as h
from benchlib.scenarios import Sizes, h_slices, start_plugin

JSON = dict[str, Any]
XID = 79  # "GPU has fallen off the bus": fatal under every policy


def _tainted(store: Any, device: str) -> bool:
    for item in h_slices(store):
        for entry in item["spec"].get("devices", []):
            if entry.get("name") == device and entry.get("taints"):
                return True
    return False


async def health_change(cluster: h.Cluster, dirs: h.Dirs, sizes: Sizes) -> JSON:
    cluster.delete_slices()
    dirs.fresh_node_state()
    device = h.device_names()[0]
    wanted = len(h.device_names())
    proc, client = await start_plugin(dirs, "plugin-health")
    try:
        await cluster.wait_for(
            lambda store: sum(len(s["spec"].get("devices", [])) for s in h_slices(store)) == wanted, 30
        )
        await asyncio.sleep(1.0)  # the publish's own watch echoes settle (0.2 s debounce)
        mark = cluster.write_marks()
        started = time.monotonic()
        inject = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "driver", "sim", "inject",
            "--state-dir", str(dirs.fake_state), "--gpu", device, "--xid", str(XID),
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        if await inject.wait() != 0:
            raise RuntimeError("accel-dra sim inject failed")
        seconds = await cluster.wait_for(
            lambda store: (time.monotonic() - started) if _tainted(store, device) else None, 60
        )
        await asyncio.sleep(sizes.health_settle)
        writes = cluster.writes_since(mark)
    finally:
        await client.close()
        await proc.stop()
    slice_writes = [f"{m} {p} {s}" for m, p, s in writes if "/resourceslices" in p]
    return {
        "measurable": True,
        "device": device,
        "xid": XID,
        "seconds_to_taint": round(seconds, 3),
        "watched_after_taint_s": sizes.health_settle,
        "slice_updates": len(slice_writes),
        "slice_write_requests": slice_writes,
        "other_api_writes": [f"{m} {p} {s}" for m, p, s in writes if "/resourceslices" not in p],
    }
