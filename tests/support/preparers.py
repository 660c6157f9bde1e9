"""The node-state preparer the tests run: the real :class:`~driver.state.prepare.NodePreparer` on a simulated
node, writing real files under one directory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from driver import DEFAULT_DRIVER_NAME
from driver.devices.model import Inventory
from driver.state.cdi import CdiStore
from driver.state.checkpoint import CheckpointStore
from driver.state.devnodes import SimulatedDeviceNodes
from driver.state.lock import NodeLock
from driver.state.metadata import ClaimMetadataWriter
from driver.state.mig import DynamicMig
from driver.state.prepare import NodePreparer
from driver.state.sharing import RecordingTimeSlicer, TimeSlicer

POOL = "node-1"


def node_preparer(
    root: Path,
    inventory: Inventory,
    *,
    boot_id: str = "boot-1",
    slicer: TimeSlicer | None = None,
    lock: NodeLock | None = None,
    backend_edits: Mapping[str, Any] | None = None,
    metadata: ClaimMetadataWriter | None = None,
    mig: DynamicMig | None = None,
) -> NodePreparer:
    """A preparer of ``inventory`` for pool ``node-1`` of the default driver: checkpoints under
    ``root/plugin`` (of boot ``boot_id``), CDI specs under ``root/cdi``, simulated device nodes, no driver
    files, the node lock ``root/serialize.lock`` unless ``lock`` is given, a recording time-slicer unless
    ``slicer`` is. A second call over the same ``root`` is what a restarted plugin process gets."""
    return NodePreparer(
        driver=DEFAULT_DRIVER_NAME,
        pool=POOL,
        inventory=inventory,
        store=CheckpointStore(root / "plugin", boot_id),
        specs=CdiStore(root / "cdi", DEFAULT_DRIVER_NAME),
        nodes=SimulatedDeviceNodes(),
        driver_files=(),
        slicer=slicer if slicer is not None else RecordingTimeSlicer(),
        lock=lock if lock is not None else NodeLock(root / "serialize.lock"),
        backend_edits=backend_edits,
        metadata=metadata,
        mig=mig,
    )
