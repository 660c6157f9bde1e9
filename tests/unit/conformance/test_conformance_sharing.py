"""gpu_sharing's strategies: the vendor settings that name them, the requirement's "at least one strategy"
rule, and the pure decisions of each check (the checks themselves run against the sandbox in
tests/integration/test_conformance_sandbox.py)."""

from __future__ import annotations

import importlib
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from driver.conformance import context as ctxlib
from driver.conformance import devices as devlib
from driver.conformance import pods as podlib
from driver.conformance.checklist import load_checklist
from driver.conformance.context import PodRun, ProbeContext
from driver.conformance.e2elog import E2ELog
from driver.conformance.evidence import decide
from driver.conformance.model import (
    CheckFailedError,
    CheckResult,
    CheckSkippedError,
    Outcome,
    ProbeResult,
    summarize,
)
from driver.conformance.probes.common import attribute_selector
from driver.conformance.probes.gpu_sharing import PROBE
from driver.conformance.probes.sharing_strategies import (
    _over_capacity,
    busy_parents,
    carried_config,
    choose_parent,
    counter_room,
    distinct_partitions,
    free_capacity,
    half_share,
    not_shown,
    partition_parents,
    shareable,
    started,
    summary,
)
from driver.conformance.reporthtml import _strategies
from driver.conformance.vendor import VendorError, load_vendor
from driver.kube.client import PODS, RESOURCE_CLAIMS, ApiError
from driver.quantity import parse_quantity
from tests.support import paths

FIXTURES = paths.FIXTURES / "conformance"
GiB = 2**30


def sharing_result(**strategies: Outcome) -> ProbeResult:
    checks = [CheckResult(name, "passed", "") for name in PROBE.required]
    checks += [CheckResult(name, outcome, f"{name} {outcome}") for name, outcome in strategies.items()]
    outcome, message = summarize(checks)
    return ProbeResult(
        PROBE.name, PROBE.test, PROBE.title, PROBE.requirements, outcome, message, checks, 1.0, 60.0,
        required=PROBE.required, required_any=PROBE.required_any,
    )  # fmt: skip


def gpu_sharing(result: ProbeResult) -> tuple[str, str]:
    checklist = load_checklist(str(FIXTURES / "checklist-1.37.yaml"))
    (decision,) = [
        d for d in decide(checklist, [result], load_vendor("sandbox"), "r") if d.id == "gpu_sharing"
    ]
    assert decision.fill is not None
    return decision.status, decision.fill.notes


def test_one_strategy_shown_is_enough() -> None:
    status, notes = gpu_sharing(
        sharing_result(TimeSlicing="skipped", Partitions="passed", ConsumableCapacity="skipped")
    )
    assert status == "Implemented"
    assert "shown: Partitions" in notes and "TimeSlicing skipped: TimeSlicing skipped" in notes


def test_claim_sharing_alone_is_not_a_strategy() -> None:
    status, notes = gpu_sharing(
        sharing_result(TimeSlicing="skipped", Partitions="skipped", ConsumableCapacity="skipped")
    )
    assert status == "Partially Implemented"
    assert "none of TimeSlicing, Partitions, ConsumableCapacity was shown" in notes


def test_a_failing_strategy_is_not_outweighed_by_another() -> None:
    status, notes = gpu_sharing(
        sharing_result(TimeSlicing="passed", Partitions="failed", ConsumableCapacity="skipped")
    )
    assert status == "Partially Implemented"
    assert "Partitions failed: Partitions failed" in notes and "shown: TimeSlicing" in notes


def test_the_report_lists_what_each_strategy_showed() -> None:
    rows = [
        {"strategy": "TimeSlicing", "outcome": "passed", "shown": "pods a and b ran <together>"},
        {"strategy": "Partitions", "outcome": "skipped", "verdict": "not offered", "shown": "no MIG"},
        {
            "strategy": "ConsumableCapacity",
            "outcome": "skipped",
            "verdict": "not shown (skipped)",
            "shown": "full",
        },
    ]
    html = _strategies(rows)
    assert "Sharing strategies shown: TimeSlicing." in html
    assert "<td>Time slicing</td><td>shown</td><td>pods a and b ran &lt;together&gt;</td>" in html
    assert "<td>not offered</td><td>no MIG</td>" in html
    assert "<td>not shown (skipped)</td><td>full</td>" in html
    old_row = {"strategy": "Partitions", "outcome": "skipped", "shown": "in use"}  # results without a verdict
    assert "<td>not shown (skipped)</td><td>in use</td>" in _strategies([old_row])
    assert _strategies([]) == ""
    assert "No sharing strategy was shown." in _strategies(rows[1:])


# -- vendor settings ----------------------------------------------------------------------------------


def test_presets_name_the_strategies_their_drivers_offer() -> None:
    ours, nvidia, amd = load_vendor("accel-dra"), load_vendor("nvidia"), load_vendor("amd")
    assert ours.sharing.time_slicing.config == {
        "apiVersion": "gpu.accel-dra.dev/v1",
        "kind": "GpuConfig",
        "sharing": {"strategy": "TimeSlicing", "timeSlicing": {"interval": "Long"}},
    }
    assert ours.sharing.partitions.device_class == "mig.accel-dra.dev"
    assert nvidia.sharing.partitions.device_class == "mig.nvidia.com"
    assert nvidia.sharing.partitions.parent_attribute == "parentUUID"
    assert nvidia.sharing.time_slicing.config is None  # behind NVIDIA's alpha gate TimeSlicingSettings
    assert ours.sharing.capacity.capacity == nvidia.sharing.capacity.capacity == "memory"
    assert load_vendor("sandbox").sharing == ours.sharing
    assert (
        amd.sharing.time_slicing.config,
        amd.sharing.partitions.device_class,
        amd.sharing.capacity.capacity,
    ) == (
        None,
        None,
        None,
    )


def test_a_vendor_file_names_its_strategies(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(
        "preset: nvidia\n"
        "sharing:\n"
        "  timeSlicing:\n"
        "    config: {apiVersion: resource.nvidia.com/v1beta1, kind: GpuConfig,\n"
        "             sharing: {strategy: TimeSlicing, timeSlicingConfig: {interval: Long}}}\n"
        "  partitions: {deviceClass: partition.acme.example, parentAttribute: acme.example/parent}\n"
        "  capacity: null\n"
    )
    sharing = load_vendor(str(path)).sharing
    assert sharing.time_slicing.config == {
        "apiVersion": "resource.nvidia.com/v1beta1",
        "kind": "GpuConfig",
        "sharing": {"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Long"}},
    }
    assert sharing.partitions.device_class == "partition.acme.example"
    assert sharing.partitions.identity_attribute == "uuid"  # the preset's, not overridden
    assert sharing.capacity.capacity is None  # null: not offered


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("preset: nvidia\nsharing: {mps: {}}\n", r"sharing: Additional properties are not allowed \('mps'"),
        (
            "preset: nvidia\nsharing: {timeSlicing: {config: {kind: GpuConfig}}}\n",
            "'apiVersion' is a required",
        ),
        ("preset: nvidia\nsharing: {partitions: {parentAttribute: ''}}\n", "should be non-empty"),
    ],
)
def test_bad_sharing_settings_name_the_setting(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(content)
    with pytest.raises(VendorError, match=message):
        load_vendor(str(path))


# -- the checks' decisions ----------------------------------------------------------------------------


def device(
    name: str, attributes: dict[str, Any], capacity: dict[str, Any] | None = None, **raw: Any
) -> devlib.Device:
    return devlib.Device(
        "gpu.example.com", "pool", "slice", name, "node", attributes,
        {k: str(v["value"]) for k, v in (capacity or {}).items()},
        {"name": name, "capacity": capacity or {}, **raw},
    )  # fmt: skip


def test_partitions_are_grouped_by_their_parent_when_it_has_two() -> None:
    devices = [
        device("gpu-0", {"type": "gpu"}),
        device("gpu-0-mig-a", {"parentUUID": "GPU-0"}),
        device("gpu-0-mig-b", {"parentUUID": "GPU-0"}),
        device("gpu-1-mig-a", {"parentUUID": "GPU-1"}),  # alone: two pods cannot share its GPU
    ]
    parents = partition_parents(devices, "parentUUID")
    assert {p: [d.name for d in ds] for p, ds in parents.items()} == {
        ("node", "GPU-0"): ["gpu-0-mig-a", "gpu-0-mig-b"]
    }


def test_only_multi_allocatable_devices_with_the_capacity_are_shareable() -> None:
    memory = {"memory": {"value": "80Gi"}}
    devices = [
        device("shared", {}, memory, allowMultipleAllocations=True),
        device("exclusive", {}, memory),
        device("no-memory", {}, {"cores": {"value": "8"}}, allowMultipleAllocations=True),
    ]
    assert [d.name for d in shareable(devices, "memory")] == ["shared"]


@pytest.mark.parametrize(
    ("total", "policy", "share"),
    [
        (81559 * 2**20, {"default": "79Gi", "validRange": {"min": "1Gi", "step": "1Gi"}}, 39 * GiB),
        (80 * GiB, {"validRange": {"min": "10Gi", "step": "10Gi", "max": "30Gi"}}, 30 * GiB),
        (80 * GiB, {"validValues": ["10Gi", "40Gi", "60Gi"]}, 40 * GiB),
        (80 * GiB, {}, 40 * GiB),
        (3 * GiB, {"validRange": {"min": "2Gi", "step": "1Gi"}}, None),  # two cannot fit
        (80 * GiB, {"validValues": ["50Gi"]}, None),
    ],
)
def test_a_share_is_the_largest_amount_the_policy_allows_that_fits_twice(
    total: int, policy: dict[str, Any], share: int | None
) -> None:
    assert half_share(total, policy) == (None if share is None else Decimal(share))


def test_the_share_the_sandbox_asks_for_leaves_no_room_for_a_third() -> None:
    total = int(parse_quantity("81559Mi"))
    share = half_share(total, {"validRange": {"min": "1Gi", "step": "1Gi"}})
    assert share is not None and 2 * share <= total < 3 * share


def test_selectors_name_the_attribute_in_its_domain() -> None:
    assert (
        attribute_selector("gpu.nvidia.com", "parentUUID", "GPU-1")
        == 'has(device.attributes["gpu.nvidia.com"].parentUUID) && device.attributes["gpu.nvidia.com"].parentUUID == "GPU-1"'
    )
    assert (
        attribute_selector("gpu.nvidia.com", "resource.kubernetes.io/pciBusID", "0000:5d:00.0")
        == 'has(device.attributes["resource.kubernetes.io"].pciBusID) && '
        'device.attributes["resource.kubernetes.io"].pciBusID == "0000:5d:00.0"'
    )


def test_the_configuration_must_reach_the_driver_through_the_allocation() -> None:
    parameters = {"apiVersion": "v1", "kind": "GpuConfig", "sharing": {"strategy": "TimeSlicing"}}
    entry = {"source": "FromClaim", "requests": ["gpu"], "opaque": {"driver": "d", "parameters": parameters}}
    claim = {"status": {"allocation": {"devices": {"results": [], "config": [entry]}}}}
    assert carried_config(claim, "d", parameters)
    assert not carried_config(claim, "other", parameters)
    assert not carried_config(claim, "d", {**parameters, "sharing": {"strategy": "MPS"}})
    assert not carried_config({"status": {}}, "d", parameters)


def test_other_workloads_shares_leave_less_room() -> None:
    gpu = device("shared", {}, {"memory": {"value": "80Gi"}}, allowMultipleAllocations=True)
    assert free_capacity(gpu, "memory", []) == 80 * GiB
    shares = [{"consumedCapacity": {"memory": "30Gi"}}, {"consumedCapacity": {"memory": "10Gi"}}]
    assert free_capacity(gpu, "memory", shares) == 40 * GiB
    assert free_capacity(gpu, "memory", [{"device": "shared"}]) == 0  # held whole


def test_a_device_held_whole_offers_no_partitions() -> None:
    devices = [
        device("gpu-0", {"uuid": "GPU-0"}),
        device("gpu-0-mig-a", {"parentUUID": "GPU-0"}),
        device("gpu-1", {"uuid": "GPU-1"}),
    ]
    held = {("gpu.example.com", "pool", "gpu-0"): [{}]}
    assert busy_parents(devices, held, "uuid") == {("node", "GPU-0")}
    assert busy_parents(devices, held, None) == set()


GPU0, GPU1 = ("node", "GPU-0"), ("node", "GPU-1")


def mig(name: str, parent: str, memory: str, **raw: Any) -> devlib.Device:
    return device(name, {"parentUUID": parent}, {"memory": {"value": memory}}, **raw)


def test_any_two_static_partitions_fit_whatever_their_sizes() -> None:
    """A uniform MIG layout (all 1g.10gb): every partition is as large as the largest."""
    parents = {GPU0: [mig(f"mig-{i}", "GPU-0", "10Gi") for i in range(7)]}
    choice = choose_parent(parents, "parentUUID", "gpu.example.com", "memory", {})
    assert choice is not None and choice.parent == GPU0 and len(choice.fitting) == 7
    assert choice.selectors == [
        'has(device.attributes["gpu.example.com"].parentUUID) && '
        'device.attributes["gpu.example.com"].parentUUID == "GPU-0"'
    ]


def slices_of(counter_set: str, slices: int) -> devlib.Pool:
    """A pool whose one GPU's counter set has ``slices`` compute slices."""
    shared = [{"name": counter_set, "counters": {"slices": {"value": str(slices)}}}]
    return devlib.Pool("gpu.example.com", "pool", 1, 1, [{"spec": {"sharedCounters": shared}}])


def cut(name: str, memory: str, slices: int, parent: str = "GPU-0") -> devlib.Device:
    consumes = [{"counterSet": parent.lower(), "counters": {"slices": {"value": str(slices)}}}]
    return mig(name, parent, memory, consumesCounters=consumes)


def test_two_partitionable_devices_must_fit_in_their_parent() -> None:
    whole, half, small = cut("7g", "80Gi", 7), cut("3g", "40Gi", 3), cut("1g", "10Gi", 1)
    room = counter_room([slices_of("gpu-0", 7)], {})
    assert room == {("pool", "gpu-0"): {"slices": Decimal(7)}}
    choice = choose_parent({GPU0: [whole, half, small]}, "parentUUID", "gpu.example.com", "memory", room)
    assert choice is not None and [d.name for d in choice.fitting] == ["3g", "1g"]
    assert 'compareTo(quantity("42949672960")) <= 0' in choice.selectors[1]


def test_partitions_held_elsewhere_count_against_their_parent() -> None:
    """A 4g held by another workload leaves 3 of 7 slices: no two 3g fit any more, two 1g still do."""
    threes = [cut("3g-a", "40Gi", 3), cut("3g-b", "40Gi", 3)]
    room = counter_room([slices_of("gpu-0", 7)], {})
    assert choose_parent({GPU0: threes}, "parentUUID", "gpu.example.com", "memory", room) is not None
    pool = slices_of("gpu-0", 7)
    held_4g = cut("4g", "50Gi", 4).raw
    pool.slices.append({"spec": {"devices": [held_4g]}})
    pool.expected = 2
    room = counter_room([pool], {("gpu.example.com", "pool", "4g"): [{}]})
    assert room == {("pool", "gpu-0"): {"slices": Decimal(3)}}
    assert choose_parent({GPU0: threes}, "parentUUID", "gpu.example.com", "memory", room) is None
    ones = [cut("1g-a", "10Gi", 1), cut("1g-b", "10Gi", 1)]
    choice = choose_parent({GPU0: threes + ones}, "parentUUID", "gpu.example.com", "memory", room)
    assert choice is not None and [d.name for d in choice.fitting] == ["1g-a", "1g-b"]


def test_a_parent_without_two_fitting_partitions_gives_way_to_the_next() -> None:
    parents = {
        GPU0: [cut("a-7g", "80Gi", 7), cut("a-4g", "50Gi", 4)],
        GPU1: [mig("b-1g", "GPU-1", "10Gi"), mig("b-1g-2", "GPU-1", "10Gi")],
    }
    room = counter_room([slices_of("gpu-0", 7)], {})
    choice = choose_parent(parents, "parentUUID", "gpu.example.com", "memory", room)
    assert choice is not None and choice.parent == GPU1
    assert choose_parent({GPU0: parents[GPU0]}, "parentUUID", "gpu.example.com", "memory", room) is None


def test_the_probe_has_time_for_every_pod_waiting_check() -> None:
    """Five checks wait for pods; a real cluster's pod timeout is 300 s and the health check comes last."""
    assert PROBE.timeout >= 3 * load_vendor("nvidia").pod_timeout


sharing_probe = importlib.import_module("driver.conformance.probes.gpu_sharing")


def sharing_context(kube: object) -> ProbeContext:
    """The probe's context over ``kube``, a stand-in for the API client."""
    return ProbeContext(
        kube=kube,  # type: ignore[arg-type]
        vendor=load_vendor("sandbox"),
        namespace="ns",
        run_id="t",
        probe=PROBE,
        log=E2ELog(None),
    )


async def test_the_strategies_table_shows_what_ran_when_the_probe_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def nothing(_ctx: ProbeContext, _consumers: Any) -> None:
        return None

    async def shown(ctx: ProbeContext, _consumers: Any) -> None:
        async with ctx.check("TimeSlicing") as check:
            check.message = "two pods shared it"

    async def stopped(_ctx: ProbeContext, _consumers: Any) -> None:
        raise TimeoutError

    for name, replacement in (("_containers", nothing), ("_pods", nothing)):
        monkeypatch.setattr(sharing_probe, name, replacement)
    monkeypatch.setattr(sharing_probe.strategies, "time_slicing", shown)
    monkeypatch.setattr(sharing_probe.strategies, "partitions", stopped)
    ctx = sharing_context(None)
    with pytest.raises(TimeoutError):
        await PROBE.run(ctx)
    assert ctx.data["strategies"] == [
        {"strategy": "TimeSlicing", "outcome": "passed", "verdict": "shown", "shown": "two pods shared it"}
    ]


class LaggingCluster:
    """Pods that print their results at once, each with a claim generated from its template; a claim stays
    allocated for a few reads after its pod went (the claim controller deallocates it a moment later)."""

    LAG = 3

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.claims: dict[str, int | None] = {}  # claim -> reads left until it goes (None: its pod runs)

    async def create(self, _rt: Any, obj: dict[str, Any], _namespace: str) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        claim = f"{name}-gpu"
        status = {"phase": "Running", "resourceClaimStatuses": [{"name": "gpu", "resourceClaimName": claim}]}
        self.pods[name] = {**obj, "metadata": {**obj["metadata"], "uid": name}, "status": status}
        self.claims[claim] = None
        return self.pods[name]

    async def get(self, rt: Any, name: str, _namespace: str | None = None) -> dict[str, Any]:
        if rt is PODS and name in self.pods:
            return self.pods[name]
        left = self.claims.get(name, 0)
        if rt is RESOURCE_CLAIMS and name in self.claims:
            if left is not None and left <= 0:
                del self.claims[name]
            else:
                self.claims[name] = None if left is None else left - 1
                return {"metadata": {"name": name}, "status": {"allocation": {"devices": {}}}}
        raise ApiError(404, "NotFound", f"{name} not found")

    async def delete(self, rt: Any, name: str, _namespace: str | None = None) -> None:
        if rt is PODS:
            claim = f"{name}-gpu"
            self.pods.pop(name, None)
            if self.claims.get(claim, 0) is None:
                self.claims[claim] = self.LAG

    async def request_text(self, _method: str, _path: str) -> str:
        return "RESULT: DONE\n"


async def test_a_strategy_ends_only_once_its_claims_are_deallocated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next check must not find the devices of this one's claims still held."""
    monkeypatch.setattr(ctxlib, "POLL_FIRST", 0.0)
    cluster = LaggingCluster()
    ctx = sharing_context(cluster)
    body = podlib.pod(
        ctx.vendor, "sharing", [podlib.Container("probe", "true", ("gpu",))], templates={"gpu": "t"}
    )
    async with started(ctx, [body]) as (run,):
        assert run.name == "sharing" and cluster.claims == {"sharing-gpu": None}
    assert cluster.pods == {} and cluster.claims == {}


def partition_run(name: str, printed: str) -> PodRun:
    text = f"DEVICE: /dev/nvidia0\nRESULT: ACCELERATOR_COUNT=1\n{printed}\nRESULT: DONE\n"
    return PodRun(
        name, {"metadata": {"name": name, "uid": name}, "spec": {}}, {"probe": podlib.parse_output(text)}
    )


def test_a_partition_id_command_that_fails_in_a_container_fails_the_check() -> None:
    got = [[mig("mig-a", "GPU-0", "10Gi")], [mig("mig-b", "GPU-0", "10Gi")]]
    runs = [
        partition_run("a", "RESULT: IDENTITY_ERROR=sh: nvidia-smi: not found"),
        partition_run("b", "IDENTITY: MIG-b"),
    ]
    with pytest.raises(CheckFailedError, match="showed nothing in pod a: sh: nvidia-smi: not found"):
        distinct_partitions(runs, got, "parentUUID", None, "nvidia-smi -L")
    runs[0] = partition_run("a", "IDENTITY: MIG-a")
    assert "they see MIG-a and MIG-b respectively" in distinct_partitions(
        runs, got, "parentUUID", None, "nvidia-smi -L"
    )


def on(node: str, device: devlib.Device) -> devlib.Device:
    return replace(device, node=node, pool=node)


def test_partitions_are_grouped_per_node_and_the_whole_device_is_none() -> None:
    """Ids are unique within a node only: pciBusID is the same on every node of a homogeneous cluster."""
    same_bus = {"resource.kubernetes.io/pciBusID": "0000:5d:00.0"}
    devices = [
        on("node-a", device("gpu", {**same_bus})),  # the whole GPU, in the same DeviceClass (AMD)
        on("node-a", device("gpu-p0", {"parent": "0000:5d:00.0"})),
        on("node-a", device("gpu-p1", {"parent": "0000:5d:00.0"})),
        on("node-b", device("gpu-p0", {"parent": "0000:5d:00.0"})),
        on("node-b", device("gpu", {**same_bus, "parent": "0000:5d:00.0"})),
    ]
    parents = partition_parents(devices, "parent", "resource.kubernetes.io/pciBusID")
    assert {p: [d.name for d in ds] for p, ds in parents.items()} == {
        ("node-a", "0000:5d:00.0"): ["gpu-p0", "gpu-p1"]
    }


def test_partitions_of_devices_with_one_id_on_two_nodes_are_not_one_device() -> None:
    got = [[on("node-a", mig("mig-a", "GPU-0", "10Gi"))], [on("node-b", mig("mig-b", "GPU-0", "10Gi"))]]
    runs = [partition_run("a", "IDENTITY: MIG-a"), partition_run("b", "IDENTITY: MIG-b")]
    with pytest.raises(
        CheckFailedError, match=r"belong to different devices \(GPU-0 on node-a and GPU-0 on node-b\)"
    ):
        distinct_partitions(runs, got, "parentUUID", None)


def test_pods_are_kept_to_the_node_of_the_devices_chosen_for_them() -> None:
    body = podlib.pod(
        load_vendor("sandbox"), "p", [podlib.Container("probe", "true", ("gpu",))], claims={"gpu": "c"}
    )
    pinned = podlib.on_node(body, "node-a")
    terms = pinned["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {
        "nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-a"]}]}
        ]
    }
    assert "affinity" not in podlib.on_node(podlib.pod(load_vendor("sandbox"), "q", []), "")["spec"]


async def test_a_strategy_offered_but_not_shown_is_not_called_not_offered() -> None:
    ctx = sharing_context(None)
    async with ctx.check("Partitions"):
        raise CheckSkippedError("vendor names no DeviceClass of hardware partitions")
    async with ctx.check("ConsumableCapacity"):
        raise not_shown(ctx, "device gpu-0 has no room for two more claims of its memory")
    assert [(r["strategy"], r["verdict"]) for r in summary(ctx)] == [
        ("Partitions", "not offered"),
        ("ConsumableCapacity", "not shown (skipped)"),
    ]


class ThirdShare:
    """The over-capacity pod's claim, allocated or not."""

    def __init__(self, allocation: dict[str, Any] | None) -> None:
        self.allocation = allocation

    async def get(self, _rt: Any, name: str, _namespace: str | None = None) -> dict[str, Any]:
        return {
            "metadata": {"name": name},
            "status": {"allocation": self.allocation} if self.allocation else {},
        }


@pytest.mark.parametrize(
    ("allocation", "verdict", "fails"),
    [
        (None, "0/1 nodes are available: 1 cannot allocate all claims.", None),
        (
            None,
            "0/1 nodes are available: 1 node(s) had untolerated taint {gpu: maintenance}.",
            "not what the",
        ),
        (
            {"devices": {"results": [{"device": "gpu-0"}]}},
            "0/1 nodes are available: 1 cannot allocate all claims.",
            "was allocated",
        ),
    ],
)
async def test_only_an_unallocated_claim_shows_the_capacity_is_enforced(
    monkeypatch: pytest.MonkeyPatch, allocation: dict[str, Any] | None, verdict: str, fails: str | None
) -> None:
    ctx = sharing_context(ThirdShare(allocation))

    async def create(_rt: Any, body: dict[str, Any], _namespace: str | None = None) -> dict[str, Any]:
        return body

    async def unschedulable(_name: str, timeout: float = 60.0) -> str:
        return verdict

    async def share_claim() -> str:
        return "capacity-share-3"

    async def nothing(*_args: Any) -> None:
        return None

    monkeypatch.setattr(ctx, "create", create)
    monkeypatch.setattr(ctx, "wait_unschedulable", unschedulable)
    monkeypatch.setattr(sharing_probe.strategies, "released", nothing)
    if fails is None:
        assert verdict in await _over_capacity(ctx, Decimal(39 * GiB), share_claim, "node")
    else:
        with pytest.raises(CheckFailedError, match=fails):
            await _over_capacity(ctx, Decimal(39 * GiB), share_claim, "node")
