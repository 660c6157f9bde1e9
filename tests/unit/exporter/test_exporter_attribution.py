"""Attribution pieces: cgroup parsing, device resolution (PodResources -> GPUs) and the split rules."""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driver.devices.fake import load_named_profile
from driver.devices.telemetry import GpuTelemetry, MigTelemetry, ProcessSample
from driver.exporter.attribution import OUTSIDE_PODS, Consumer, ContainerKey, split, split_gpu
from driver.exporter.cgroups import CgroupRef, parse_cgroup
from driver.exporter.podresources import ClaimDevice, ContainerResources, DeviceResolver

DRIVER = "gpu.accel-dra.dev"
CID = "a" * 64

# -- cgroups -----------------------------------------------------------------------------------------------


@given(
    pod_uid=st.uuids().map(str),
    container=st.text("0123456789abcdef", min_size=64, max_size=64),
    layout=st.sampled_from(
        [
            "0::/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid_}.slice/cri-containerd-{cid}.scope",
            "0::/kubepods.slice/kubepods-pod{uid_}.slice/crio-{cid}.scope",
            "0::/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid_}.slice/docker-{cid}.scope",
            "0::/kubepods/{qos}/pod{uid}/{cid}",
            "0::/kubepods/pod{uid}/{cid}",
            "12:memory:/kubepods/{qos}/pod{uid}/{cid}\n11:cpu,cpuacct:/kubepods/{qos}/pod{uid}/{cid}",
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-{qos}.slice/"
            "kubelet-kubepods-{qos}-pod{uid_}.slice/cri-containerd-{cid}.scope",
        ]
    ),
    qos=st.sampled_from(["besteffort", "burstable"]),
)
def test_cgroup_layouts_give_pod_and_container(pod_uid: str, container: str, layout: str, qos: str) -> None:
    text = layout.format(uid=pod_uid, uid_=pod_uid.replace("-", "_"), cid=container, qos=qos)
    assert parse_cgroup("1:name=systemd:/user.slice\n" + text + "\n") == CgroupRef(pod_uid, container)


def test_cgroup_outside_pods_and_without_container() -> None:
    assert parse_cgroup("0::/user.slice/user-1000.slice/session-2.scope\n") is None
    assert parse_cgroup("0::/system.slice/containerd.service\n") is None
    uid = str(uuidlib.uuid4())
    # The pod sandbox's own cgroup (or CRI-O's conmon) names the pod but no container.
    conmon = f"0::/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/crio-conmon-{CID}.scope"
    assert parse_cgroup(conmon) == CgroupRef(uid, None)


# -- device resolution -------------------------------------------------------------------------------------


class Slices:
    def __init__(self, devices: Mapping[tuple[str, str, str], Mapping[str, Any]]) -> None:
        self.devices = devices

    def device(self, driver: str, pool: str, name: str) -> Mapping[str, Any] | None:
        return self.devices.get((driver, pool, name))


def test_own_claim_devices_map_through_device_names() -> None:
    inventory = load_named_profile("dgx-h100", node_name="node-1").inventory
    gpu = inventory.gpus[3]
    resolver = DeviceResolver(inventory, DRIVER, "node-1")
    assert resolver.device_for_claim_device(DRIVER, "node-1", gpu.name) == (gpu.uuid, "")
    assert resolver.device_for_claim_device(DRIVER, "node-2", gpu.name) is None  # another node's pool
    assert resolver.device_for_claim_device("other.example.com", "node-1", gpu.name) is None


def test_mig_devices_map_to_themselves_on_their_parent() -> None:
    inventory = load_named_profile("mig-a100").inventory
    gpu = inventory.gpus[0]
    resolver = DeviceResolver(inventory, DRIVER)
    for device in inventory.devices:
        assert device.mig is not None
        ref = (gpu.uuid, device.mig.uuid)
        assert resolver.device_for_claim_device(DRIVER, "any-pool", device.name) == ref
        assert resolver.device_for_id(device.uuid) == ref


def test_device_plugin_ids() -> None:
    inventory = load_named_profile("pcie-l4x4").inventory
    gpu = inventory.gpus[1]
    resolver = DeviceResolver(inventory, DRIVER)
    assert gpu.pci_bus_id is not None and gpu.minor == 1
    for device_id in (gpu.uuid, gpu.uuid.upper(), f"{gpu.uuid}::3", gpu.name, gpu.pci_bus_id):
        assert resolver.device_for_id(device_id) == (gpu.uuid, ""), device_id
    assert resolver.device_for_id("GPU-00000000-0000-0000-0000-000000000000") is None


@pytest.mark.parametrize(
    ("device_id", "gpu", "mig"),
    [
        # NVIDIA's device plugin with DEVICE_ID_STRATEGY=index: the NVML index, "<gpu>:<MIG slot>".
        ("0", 0, None),
        ("5", 5, None),
        ("6:3", 6, 3),
        ("7:0", 7, 0),
        # GKE: the GPU's device node, "/gi<GPU instance>" for a MIG device, "/vgpu<n>" for time-sharing.
        ("nvidia0", 0, None),
        ("nvidia3/vgpu2", 3, None),
        ("nvidia6/gi9", 6, 2),
        ("nvidia7/gi2", 7, 0),
        ("nvidia7/gi10/vgpu1", 7, 3),
    ],
)
def test_device_plugin_index_and_gke_ids(device_id: str, gpu: int, mig: int | None) -> None:
    inventory = load_named_profile("dgx-h100-mig").inventory
    resolver = DeviceResolver(inventory, DRIVER)
    parent = inventory.gpus[gpu]
    expected = (parent.uuid, parent.mig_devices[mig].uuid if mig is not None else "")
    assert resolver.device_for_id(device_id) == expected


def test_unknown_index_and_gke_ids_resolve_to_nothing() -> None:
    resolver = DeviceResolver(load_named_profile("dgx-h100-mig").inventory, DRIVER)
    for device_id in ("8", "6:7", "nvidia8", "nvidia6/gi99", "nvidia0/gi1", "nvidiaX"):
        assert resolver.device_for_id(device_id) is None, device_id


def test_other_drivers_devices_map_through_resource_slices() -> None:
    inventory = load_named_profile("mig-a100").inventory
    gpu = inventory.gpus[0]
    mig = gpu.mig_devices[1]
    slices = Slices(
        {
            ("gpu.nvidia.com", "node-1", "gpu-0"): {
                "name": "gpu-0",
                "attributes": {"uuid": {"string": gpu.uuid}},
            },
            ("gpu.nvidia.com", "node-1", "gpu-0-mig-1"): {
                "name": "gpu-0-mig-1",
                "attributes": {"gpu.nvidia.com/parentUUID": {"string": gpu.uuid}, "type": {"string": "mig"}},
            },
            ("gpu.nvidia.com", "node-1", "mig-by-uuid"): {
                "name": "mig-by-uuid",
                "attributes": {"uuid": {"string": mig.uuid}, "parentUUID": {"string": gpu.uuid}},
            },
            ("other.example.com", "node-1", "dev"): {
                "name": "dev",
                "attributes": {"resource.kubernetes.io/pciBusID": {"string": gpu.pci_bus_id}},
            },
            ("nic.example.com", "node-1", "eth0"): {
                "name": "eth0",
                "attributes": {"resource.kubernetes.io/pciBusID": {"string": "0000:99:00.0"}},
            },
        }
    )
    resolver = DeviceResolver(inventory, DRIVER, "node-1", slices)
    for key in (("gpu.nvidia.com", "node-1", "gpu-0"), ("gpu.nvidia.com", "node-1", "gpu-0-mig-1")):
        assert resolver.device_for_claim_device(*key) == (gpu.uuid, "")
    assert resolver.device_for_claim_device("gpu.nvidia.com", "node-1", "mig-by-uuid") == (gpu.uuid, mig.uuid)
    assert resolver.device_for_claim_device("other.example.com", "node-1", "dev") == (gpu.uuid, "")
    assert resolver.device_for_claim_device("nic.example.com", "node-1", "eth0") is None
    assert resolver.device_for_claim_device("gpu.nvidia.com", "node-1", "unknown") is None
    assert (
        DeviceResolver(inventory, DRIVER, "node-1").device_for_claim_device(
            "gpu.nvidia.com", "node-1", "gpu-0"
        )
        is None
    )


def test_consumers_per_gpu() -> None:
    inventory = load_named_profile("pcie-l4x4", node_name="node-1").inventory
    g0, g1 = inventory.gpus[0], inventory.gpus[1]
    resolver = DeviceResolver(inventory, DRIVER, "node-1")
    containers = [
        ContainerResources(
            "team-a",
            "train",
            "main",
            claim_devices=(ClaimDevice("team-a", "gpus", DRIVER, "node-1", g0.name),),
        ),
        ContainerResources("team-a", "train", "sidecar"),
        ContainerResources("team-b", "legacy", "app", device_ids=(("nvidia.com/gpu", g1.uuid),)),
        ContainerResources("team-b", "net", "app", device_ids=(("example.com/nic", "eth0"),)),
    ]
    assert resolver.consumers(containers) == {
        g0.uuid: (Consumer("team-a", "train", "main", "team-a", "gpus", DRIVER, "node-1", g0.name),),
        g1.uuid: (Consumer("team-b", "legacy", "app", device_class="nvidia.com/gpu"),),
    }


def test_consumers_of_mig_devices_name_the_device() -> None:
    inventory = load_named_profile("mig-a100", node_name="node-1").inventory
    gpu = inventory.gpus[0]
    first, second = inventory.devices[0], inventory.devices[1]
    assert first.mig is not None and second.mig is not None
    resolver = DeviceResolver(inventory, DRIVER, "node-1")
    containers = [
        ContainerResources(
            "ns", "a", "main", claim_devices=(ClaimDevice("ns", "c", DRIVER, "node-1", first.name, "mig"),)
        ),
        ContainerResources("ns", "b", "main", device_ids=(("nvidia.com/mig-1g.5gb", second.uuid),)),
    ]
    assert resolver.consumers(containers) == {
        gpu.uuid: (
            Consumer("ns", "a", "main", "ns", "c", DRIVER, "node-1", first.name, first.mig.uuid, "mig"),
            Consumer("ns", "b", "main", mig_uuid=second.mig.uuid, device_class="nvidia.com/mig-1g.5gb"),
        )
    }


# -- split ---------------------------------------------------------------------------------------------------

A = Consumer("ns", "pod-a", "main", "ns", "shared", DRIVER, "node-1", "gpu-0")
B = Consumer("ns", "pod-b", "main", "ns", "shared", DRIVER, "node-1", "gpu-0")
GiB = 1 << 30


def telemetry(**kw: Any) -> GpuTelemetry:
    defaults: dict[str, Any] = {"uuid": "GPU-1", "utilization": 0.9, "memory_used_bytes": 10 * GiB}
    return GpuTelemetry(**{**defaults, **kw})


def owners(mapping: Mapping[int, Consumer | None]) -> Any:
    return lambda pid: mapping.get(pid).key if mapping.get(pid) else None  # type: ignore[union-attr]


def test_single_container_gets_the_whole_gpu() -> None:
    shares = split(telemetry(), [A], None)
    assert [(s.utilization, s.utilization_mode, s.memory_bytes, s.memory_mode) for s in shares] == [
        (0.9, "exclusive", 10 * GiB, "exclusive")
    ]


def test_single_holder_with_known_foreign_processes_gets_only_its_share() -> None:
    procs = (ProcessSample(10, 3 * GiB, 0.3), ProcessSample(30, 5 * GiB, 0.5), ProcessSample(40, GiB, 0.1))
    foreign = {30: ContainerKey("other", "intruder", "main"), 40: OUTSIDE_PODS}
    shares = split(telemetry(processes=procs), [A], lambda pid: A.key if pid == 10 else foreign.get(pid))
    assert [(s.utilization, s.utilization_mode, s.memory_bytes, s.memory_mode) for s in shares] == [
        (0.3, "process", 3 * GiB, "process")
    ]


def test_single_holder_keeps_the_whole_gpu_unless_foreign_processes_are_known() -> None:
    procs = (ProcessSample(10, 3 * GiB, 0.3), ProcessSample(11, GiB, 0.2))
    for owner_of in (
        lambda pid: A.key,  # every process is its own: the whole GPU, driver reserve included
        lambda pid: A.key if pid == 10 else None,  # an untraced process could be its own
        None,  # processes cannot be traced
    ):
        shares = split(telemetry(processes=procs), [A], owner_of)
        assert [(s.utilization, s.utilization_mode, s.memory_bytes, s.memory_mode) for s in shares] == [
            (0.9, "exclusive", 10 * GiB, "exclusive")
        ]


def test_single_holder_with_foreign_processes_but_no_per_process_share_is_an_upper_bound() -> None:
    procs = (ProcessSample(10, 3 * GiB, None), ProcessSample(30, 5 * GiB, None))
    shares = split(telemetry(processes=procs), [A], lambda pid: A.key if pid == 10 else OUTSIDE_PODS)
    assert [(s.utilization, s.utilization_mode, s.memory_bytes, s.memory_mode) for s in shares] == [
        (0.9, "shared", 3 * GiB, "process")
    ]


def test_mig_devices_are_split_with_their_own_readings() -> None:
    inventory = load_named_profile("dgx-h100-mig").inventory
    gpu = inventory.gpus[7]
    big, small = gpu.mig_devices[0], gpu.mig_devices[2]
    a = Consumer("ns", "pod-a", "main", "ns", "a", DRIVER, "node-1", "big", mig_uuid=big.uuid)
    b = Consumer("ns", "pod-b", "main", "ns", "b", DRIVER, "node-1", "small", mig_uuid=small.uuid)
    c = Consumer("ns", "pod-c", "main", "ns", "c", DRIVER, "node-1", "small", mig_uuid=small.uuid)
    reading = GpuTelemetry(
        gpu.uuid,
        memory_used_bytes=30 * GiB,
        mig=(
            MigTelemetry(big.uuid, 20 * GiB, 40 * GiB, {"graphics": 0.7}, (ProcessSample(10, 19 * GiB),)),
            MigTelemetry(
                small.uuid, 6 * GiB, 10 * GiB, {}, (ProcessSample(20, 2 * GiB), ProcessSample(21, 3 * GiB))
            ),
        ),
    )
    owners_ = {10: a.key, 20: b.key, 21: c.key}
    shares = {s.consumer.pod: s for s in split_gpu(reading, [a, b, c], owners_.get)}
    # The big instance is pod-a's: its own memory and GPM activity, not the GPU's.
    assert (shares["pod-a"].utilization, shares["pod-a"].memory_bytes) == (0.7, 20 * GiB)
    assert shares["pod-a"].utilization_mode == "exclusive"
    # The small instance (no activity reading) is shared by two pods: memory by process, no utilization.
    assert [
        (shares[p].utilization, shares[p].memory_bytes, shares[p].memory_mode) for p in ("pod-b", "pod-c")
    ] == [
        (None, 2 * GiB, "process"),
        (None, 3 * GiB, "process"),
    ]
    # A MIG device without a reading (its GPU could not be read) keeps its consumers without values.
    assert [(s.utilization, s.memory_bytes) for s in split_gpu(None, [a], None)] == [(None, None)]


def test_a_container_holding_the_gpu_through_two_claims_is_counted_once() -> None:
    second_claim = Consumer("ns", "pod-a", "main", "ns", "other", DRIVER, "node-1", "gpu-0")
    shares = split(telemetry(memory_used_bytes=10 * GiB + 1), [A, second_claim], None)
    assert {(s.utilization_mode, s.memory_mode) for s in shares} == {("exclusive", "exclusive")}
    assert sum(s.utilization or 0.0 for s in shares) == pytest.approx(0.9)
    assert sum(s.memory_bytes or 0 for s in shares) == 10 * GiB + 1
    assert [s.utilization for s in shares] == [pytest.approx(0.45)] * 2


def test_process_split_rows_of_one_container_add_up_to_its_processes() -> None:
    # pod-a holds two MIG devices of the GPU (two rows), pod-b one.
    a_mig1 = Consumer("ns", "pod-a", "main", "ns", "a", DRIVER, "node-1", "gpu-0-mig-1")
    a_mig2 = Consumer("ns", "pod-a", "main", "ns", "a", DRIVER, "node-1", "gpu-0-mig-2")
    b_mig3 = Consumer("ns", "pod-b", "main", "ns", "b", DRIVER, "node-1", "gpu-0-mig-3")
    procs = (ProcessSample(10, 3 * GiB, 0.5), ProcessSample(20, 1 * GiB, 0.25))
    shares = split(telemetry(processes=procs), [a_mig1, a_mig2, b_mig3], owners({10: a_mig1, 20: b_mig3}))
    assert {(s.utilization_mode, s.memory_mode) for s in shares} == {("process", "process")}
    by_pod: dict[str, list[tuple[float | None, int | None]]] = {}
    for s in shares:
        by_pod.setdefault(s.consumer.pod, []).append((s.utilization, s.memory_bytes))
    assert sum(u or 0.0 for u, _ in by_pod["pod-a"]) == pytest.approx(0.5)
    assert sum(m or 0 for _, m in by_pod["pod-a"]) == 3 * GiB
    assert by_pod["pod-b"] == [(0.25, 1 * GiB)]


def test_shared_gpu_split_by_process_samples() -> None:
    procs = (
        ProcessSample(10, 3 * GiB, 0.5),
        ProcessSample(11, 1 * GiB, 0.1),
        ProcessSample(20, 4 * GiB, 0.25),
        ProcessSample(30, 2 * GiB, 0.05),  # outside Kubernetes: counts for nobody
    )
    owner_of = owners({10: A, 11: A, 20: B})
    shares = split(
        telemetry(processes=procs), [A, B], lambda pid: OUTSIDE_PODS if pid == 30 else owner_of(pid)
    )
    assert {s.consumer.pod: (s.utilization, s.memory_bytes) for s in shares} == {
        "pod-a": (pytest.approx(0.6), 4 * GiB),
        "pod-b": (0.25, 4 * GiB),
    }
    assert {(s.utilization_mode, s.memory_mode) for s in shares} == {("process", "process")}


def test_shared_gpu_without_process_tracing_shows_whole_values() -> None:
    procs = (ProcessSample(10, 3 * GiB, 0.5),)
    for t, owner_of in (
        (telemetry(processes=procs), None),  # no pod index
        (telemetry(processes=None), owners({10: A})),  # backend cannot list processes
    ):
        shares = split(t, [A, B], owner_of)
        assert [(s.utilization, s.utilization_mode, s.memory_bytes, s.memory_mode) for s in shares] == [
            (0.9, "shared", 10 * GiB, "shared")
        ] * 2


def test_an_untraced_process_makes_the_gpu_shared_not_zero() -> None:
    """A process whose container cannot be found (no /proc entry, pod index lagging) could be anyone's."""
    procs = (ProcessSample(10, 3 * GiB, 0.5), ProcessSample(20, 4 * GiB, 0.25))
    for mapping in ({}, {10: A}):  # nothing traced; one of two traced
        shares = split(telemetry(processes=procs), [A, B], owners(mapping))
        assert [(s.utilization, s.utilization_mode, s.memory_bytes, s.memory_mode) for s in shares] == [
            (0.9, "shared", 10 * GiB, "shared")
        ] * 2


def test_no_listed_process_is_no_proof_of_idleness() -> None:
    """NVML may list no process to an exporter that cannot see the workloads' PIDs."""
    shares = split(telemetry(processes=()), [A, B], owners({}))
    assert [(s.utilization, s.utilization_mode, s.memory_bytes, s.memory_mode) for s in shares] == [
        (0.9, "shared", 10 * GiB, "shared")
    ] * 2


def test_only_host_processes_give_every_consumer_zero() -> None:
    procs = (ProcessSample(30, 2 * GiB, 0.4),)
    shares = split(telemetry(processes=procs), [A, B], lambda pid: OUTSIDE_PODS)
    assert [(s.utilization, s.utilization_mode, s.memory_bytes, s.memory_mode) for s in shares] == [
        (0.0, "process", 0, "process")
    ] * 2


owner_choices = st.sampled_from([A.key, B.key, ContainerKey("ns", "pod-c", "main"), OUTSIDE_PODS, None])


@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["pod-a", "pod-b"]), st.sampled_from(["c1", "c2"]), st.integers(0, 3)),
        min_size=1,
        max_size=6,
        unique=True,
    ),
    procs=st.lists(
        st.tuples(
            st.integers(0, 2 * GiB),
            st.one_of(st.none(), st.floats(0, 1)),
            owner_choices,
        ),
        max_size=5,
    ),
    whole_mem=st.integers(0, 80 * GiB),
)
def test_summing_non_shared_rows_never_counts_a_container_twice(
    rows: list[tuple[str, str, int]],
    procs: list[tuple[int, float | None, ContainerKey | None]],
    whole_mem: int,
) -> None:
    consumers = [
        Consumer("ns", pod, "main", "ns", claim, DRIVER, "node-1", f"gpu-0-mig-{i}") for pod, claim, i in rows
    ]
    samples = tuple(ProcessSample(pid, mem, util) for pid, (mem, util, _) in enumerate(procs))
    owner = {pid: o for pid, (_, _, o) in enumerate(procs)}
    shares = split(telemetry(memory_used_bytes=whole_mem, processes=samples), consumers, owner.get)
    assert len({(s.utilization_mode, s.memory_mode) for s in shares}) == 1  # one rule per GPU and metric
    mem_mode = shares[0].memory_mode
    total = sum(s.memory_bytes or 0 for s in shares)
    if mem_mode == "exclusive":
        assert total == whole_mem
    elif mem_mode == "process":
        assert None not in owner.values()
        keys = {c.key for c in consumers}
        assert total == sum(m for m, _, o in procs if o in keys)
    else:
        assert {s.memory_bytes for s in shares} == {whole_mem}
    util_mode = shares[0].utilization_mode
    if util_mode == "exclusive":
        assert sum(s.utilization or 0.0 for s in shares) == pytest.approx(0.9)


def test_missing_per_process_values_fall_back_per_series() -> None:
    procs = (ProcessSample(10, 3 * GiB, None), ProcessSample(20, 1 * GiB, None))
    shares = split(telemetry(processes=procs), [A, B], owners({10: A, 20: B}))
    assert {s.consumer.pod: (s.utilization_mode, s.memory_mode, s.memory_bytes) for s in shares} == {
        "pod-a": ("shared", "process", 3 * GiB),
        "pod-b": ("shared", "process", 1 * GiB),
    }


def test_unreadable_gpu_has_no_values_but_keeps_its_consumers() -> None:
    shares = split(None, [A, B], owners({}))
    assert [(s.consumer, s.utilization, s.memory_bytes) for s in shares] == [(A, None, None), (B, None, None)]
    assert split(telemetry(), [], None) == ()


def test_container_key() -> None:
    assert A.key == ContainerKey("ns", "pod-a", "main")
    assert A.label_values() == ("ns", "pod-a", "main", "ns", "shared", DRIVER, "node-1", "gpu-0")
