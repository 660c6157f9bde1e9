"""Builds the node-state preparer of a plugin process from its settings and device backend (the plugin's
assembly of driver.state: the node-state package itself knows nothing of the process settings)."""

from __future__ import annotations

from driver.config import PluginConfig
from driver.devices.backend import Capabilities
from driver.devices.model import Inventory
from driver.kube.client import KubeClient
from driver.log import get_logger
from driver.resources.attributes import device_attributes
from driver.state.cdi import CdiStore
from driver.state.checkpoint import CheckpointStore, read_boot_id
from driver.state.claimstatus import ClaimStatusWriter
from driver.state.devnodes import DeviceNodes, HostDeviceNodes, SimulatedDeviceNodes
from driver.state.driverfiles import discover_driver_files, library_dir_of
from driver.state.lock import NodeLock
from driver.state.metadata import ClaimMetadataWriter, MetadataStore
from driver.state.mig import DynamicMig
from driver.state.prepare import NodePreparer
from driver.state.sharing import NvidiaSmiTimeSlicer, RecordingTimeSlicer, TimeSlicer

log = get_logger(__name__)


def dynamic_mig(caps: Capabilities, inventory: Inventory) -> DynamicMig | None:
    """The instance keeper of the GPUs in dynamic MIG mode, or None when there are none."""
    dynamic = [g.uuid for g in inventory.gpus if g.mig_dynamic]
    if not dynamic:
        return None
    if caps.mig is None:
        log.error(
            "device backend cannot create MIG instances; dynamic MIG devices fail to prepare", gpus=dynamic
        )
        return None
    return DynamicMig(caps.mig, inventory)


def make_preparer(
    config: PluginConfig,
    caps: Capabilities,
    inventory: Inventory,
    kube: KubeClient | None,
    lock: NodeLock,
) -> NodePreparer:
    files = discover_driver_files(config.driver_root, config.host_driver_root)
    log.info(
        "driver files found",
        driver_root=config.driver_root,
        host_driver_root=config.host_driver_root,
        files=len(files),
    )
    nodes: DeviceNodes
    slicer: TimeSlicer
    if caps.simulated:
        nodes, slicer = SimulatedDeviceNodes(), RecordingTimeSlicer()
    else:
        nodes = HostDeviceNodes(config.driver_root, host_driver_root=config.host_driver_root)
        smi = next((f.local_path for f in files if f.container_path.endswith("/nvidia-smi")), None)
        slicer = NvidiaSmiTimeSlicer(smi, library_dir_of(files, "libnvidia-ml"))
    return NodePreparer(
        driver=config.driver_name,
        pool=config.node_name,
        inventory=inventory,
        store=CheckpointStore(config.plugin_dir, read_boot_id(config.boot_id_file), sync=config.state_fsync),
        specs=CdiStore(config.cdi_dir, config.driver_name, sync=config.state_fsync),
        nodes=nodes,
        driver_files=files,
        slicer=slicer,
        lock=lock,
        backend_edits=caps.container_edits,
        status=ClaimStatusWriter(kube) if kube is not None else None,
        metadata=metadata_writer(config, inventory),
        mig=dynamic_mig(caps, inventory),
    )


def metadata_writer(config: PluginConfig, inventory: Inventory) -> ClaimMetadataWriter:
    """Device metadata with the attributes each device is published with (the standard profile); switched
    off, it still cleans up the files of claims prepared while it was on."""
    return ClaimMetadataWriter(
        MetadataStore(config.plugin_dir, sync=config.state_fsync),
        lambda device: device_attributes(device, inventory, config.driver_name),
        enabled=config.device_metadata,
    )
