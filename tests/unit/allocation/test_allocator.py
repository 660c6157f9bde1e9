"""The allocator, rule by rule, on slice sets small enough to check by reading them."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest

from driver.allocation.allocated import AllocatedState
from driver.allocation.allocator import ERROR, INVALID_SELECTOR, NO_FIT, TIMEOUT, AllocationResult, allocate
from driver.allocation.model import InputError, Node
from driver.devices.backend import open_backend
from driver.resources.attributes import device_entry

DRIVER = "gpu.accel-dra.dev"
JSON = dict[str, Any]


# -- building blocks ------------------------------------------------------------------------------------------------


def fake_devices(profile: str) -> list[JSON]:
    """The devices our driver publishes for a fake machine profile."""
    inventory = open_backend(f"fake:{profile}").discover()
    return [device_entry(gpu, inventory, DRIVER) for gpu in inventory.gpus]


def device(name: str, **attributes: Any) -> JSON:
    """A hand-made device: str/int/bool keyword arguments become typed attributes."""
    typed = {}
    for key, value in attributes.items():
        kind = "bool" if isinstance(value, bool) else "int" if isinstance(value, int) else "string"
        typed[key] = {kind: value}
    return {"name": name, "attributes": typed}


def make_slice(
    name: str,
    devices: list[JSON],
    *,
    node: str | None = "node-1",
    pool: str | None = None,
    generation: int = 0,
    count: int = 1,
    **spec: Any,
) -> JSON:
    body: JSON = {
        "driver": DRIVER,
        "pool": {"name": pool or node or name, "generation": generation, "resourceSliceCount": count},
        "devices": devices,
        **spec,
    }
    if node:
        body["nodeName"] = node
    return {"metadata": {"name": name}, "spec": body}


def device_class(name: str = "gpu", selectors: tuple[str, ...] = (), config: tuple[JSON, ...] = ()) -> JSON:
    return {
        "metadata": {"name": name},
        "spec": {
            "selectors": [{"cel": {"expression": e}} for e in (f'device.driver == "{DRIVER}"', *selectors)],
            "config": list(config),
        },
    }


def exactly(
    name: str = "gpu", class_name: str = "gpu", selectors: tuple[str, ...] = (), **fields: Any
) -> JSON:
    body: JSON = {"deviceClassName": class_name, **fields}
    if selectors:
        body["selectors"] = [{"cel": {"expression": e}} for e in selectors]
    return {"name": name, "exactly": body}


def claim(
    *requests: JSON, name: str = "c", constraints: tuple[JSON, ...] = (), config: tuple[JSON, ...] = ()
) -> JSON:
    devices: JSON = {"requests": list(requests)}
    if constraints:
        devices["constraints"] = list(constraints)
    if config:
        devices["config"] = list(config)
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
        "spec": {"devices": devices},
    }


def run(
    claims: list[JSON] | JSON,
    slices: list[JSON],
    classes: tuple[JSON, ...] = (),
    node: str | Node = "node-1",
    in_use: Any = frozenset(),
) -> AllocationResult:
    claim_list = claims if isinstance(claims, list) else [claims]
    return allocate(claim_list, slices, list(classes) or [device_class()], node, in_use)


def results(result: AllocationResult, index: int = 0) -> list[tuple[str, str]]:
    assert result.ok, result.failure
    return [(r["request"], r["device"]) for r in result.allocations[index].allocation["devices"]["results"]]


def four_gpus() -> list[JSON]:
    return [make_slice("s", [device(f"gpu-{i}", index=i) for i in range(4)])]


# -- counts and modes ---------------------------------------------------------------------------------------------


def test_exact_count_one_takes_the_first_device_in_order() -> None:
    assert results(run(claim(exactly()), four_gpus())) == [("gpu", "gpu-0")]


def test_exact_count_two() -> None:
    assert results(run(claim(exactly(count=2)), four_gpus())) == [("gpu", "gpu-0"), ("gpu", "gpu-1")]


def test_exact_count_more_than_available_fails_with_counts() -> None:
    result = run(claim(exactly(count=5)), four_gpus())
    assert not result.ok and result.failure is not None
    assert result.failure.cause == NO_FIT
    assert "request gpu needs 5 device(s); 4 of 4 device(s) fit" in result.failure.message


def test_all_takes_every_matching_device() -> None:
    spec = exactly(allocationMode="All", selectors=('device.attributes["gpu.accel-dra.dev"].index % 2 == 1',))
    assert results(run(claim(spec), four_gpus())) == [("gpu", "gpu-1"), ("gpu", "gpu-3")]


def test_all_fails_when_one_matching_device_is_in_use() -> None:
    in_use = {(DRIVER, "node-1", "gpu-2"): "default/holder"}
    result = run(claim(exactly(allocationMode="All")), four_gpus(), in_use=in_use)
    assert not result.ok and result.failure is not None
    assert (
        "request gpu needs all 4 matching device(s); 3 of 4 device(s) fit (1 are in use)"
        in result.failure.message
    )
    assert result.failure.diagnoses[0].rejected == {"are in use": [f"{DRIVER}/node-1/gpu-2"]}


def test_all_fails_when_nothing_matches() -> None:
    spec = exactly(allocationMode="All", selectors=('device.attributes["gpu.accel-dra.dev"].index > 10',))
    result = run(claim(spec), four_gpus())
    assert not result.ok
    assert result.failure is not None and result.failure.diagnoses[0].fitting == []


def test_devices_in_use_by_other_claims_are_skipped() -> None:
    others = [
        {
            "metadata": {"name": "holder", "namespace": "default", "uid": "u1"},
            "status": {
                "allocation": {
                    "devices": {
                        "results": [{"request": "x", "driver": DRIVER, "pool": "node-1", "device": "gpu-0"}]
                    }
                }
            },
        },
        {
            "metadata": {"name": "admin", "namespace": "default", "uid": "u2"},
            "status": {
                "allocation": {
                    "devices": {
                        "results": [
                            {
                                "request": "x",
                                "driver": DRIVER,
                                "pool": "node-1",
                                "device": "gpu-1",
                                "adminAccess": True,
                            }
                        ]
                    }
                }
            },
        },
    ]
    in_use = AllocatedState.from_claims(others)
    assert in_use.dedicated == {(DRIVER, "node-1", "gpu-0"): "default/holder"}  # admin access holds nothing
    assert results(run(claim(exactly(count=2)), four_gpus(), in_use=in_use)) == [
        ("gpu", "gpu-1"),
        ("gpu", "gpu-2"),
    ]


def test_first_available_falls_through_to_the_second_subrequest() -> None:
    request = {
        "name": "gpu",
        "firstAvailable": [
            {"name": "eight", "deviceClassName": "gpu", "count": 8},
            {"name": "two", "deviceClassName": "gpu", "count": 2},
        ],
    }
    assert results(run(claim(request), four_gpus())) == [("gpu/two", "gpu-0"), ("gpu/two", "gpu-1")]


def test_first_available_prefers_the_first_subrequest_when_it_fits() -> None:
    request = {
        "name": "gpu",
        "firstAvailable": [
            {"name": "big", "deviceClassName": "gpu", "count": 3},
            {"name": "small", "deviceClassName": "gpu", "count": 1},
        ],
    }
    assert [r for r, _ in results(run(claim(request), four_gpus()))] == ["gpu/big"] * 3


def test_admin_access_may_use_a_device_in_use() -> None:
    in_use = {(DRIVER, "node-1", "gpu-0"): "default/holder"}
    result = run(claim(exactly(adminAccess=True)), four_gpus(), in_use=in_use)
    entry = result.allocations[0].allocation["devices"]["results"][0]
    assert entry == {
        "request": "gpu",
        "driver": DRIVER,
        "pool": "node-1",
        "device": "gpu-0",
        "adminAccess": True,
    }


def test_two_claims_get_different_devices() -> None:
    result = run([claim(exactly(), name="a"), claim(exactly(), name="b")], four_gpus())
    assert results(result, 0) == [("gpu", "gpu-0")]
    assert results(result, 1) == [("gpu", "gpu-1")]


def test_shareable_devices_stay_available() -> None:
    shared = {**device("shared-0"), "allowMultipleAllocations": True}
    slices = [make_slice("s", [shared])]
    key = (DRIVER, "node-1", "shared-0")
    in_use = AllocatedState(shared={key: {"3f1c0b4e-0000-4000-8000-000000000001": "default/other"}})
    result = run([claim(exactly(), name="a"), claim(exactly(), name="b")], slices, in_use=in_use)
    first = result.allocations[0].allocation["devices"]["results"][0]
    second = result.allocations[1].allocation["devices"]["results"][0]
    assert first["device"] == second["device"] == "shared-0"
    assert first["shareID"] != second["shareID"]
    # Held by a dedicated allocation (before it became shareable), it is in use.
    dedicated = run(claim(exactly(), name="a"), slices, in_use={key: "default/other"})
    assert not dedicated.ok


# -- constraints --------------------------------------------------------------------------------------------------------


NVLINK = f"{DRIVER}/nvlinkDomain"


def test_match_attribute_picks_the_nvlink_pair_where_first_fit_would_span_domains() -> None:
    devices = fake_devices("nvlink-pairs")  # 17+31 share one NVLink domain, b1+ca another
    domains = [d["attributes"]["nvlinkDomain"]["string"] for d in devices]
    assert domains[0] == domains[1] != domains[2] == domains[3]
    slices = [make_slice("s", devices)]
    in_use = {(DRIVER, "node-1", "gpu-0000-17-00-0"): "default/other"}
    first_fit = run(claim(exactly(count=2)), slices, in_use=in_use)
    assert [d for _, d in results(first_fit)] == ["gpu-0000-31-00-0", "gpu-0000-b1-00-0"]  # spans domains
    paired = run(claim(exactly(count=2), constraints=({"matchAttribute": NVLINK},)), slices, in_use=in_use)
    assert [d for _, d in results(paired)] == ["gpu-0000-b1-00-0", "gpu-0000-ca-00-0"]


def test_match_attribute_across_requests_and_devices_lacking_it() -> None:
    slices = [
        make_slice("s", [device("a"), device("b", rack="r1"), device("c", rack="r2"), device("d", rack="r2")])
    ]
    constraint = {"matchAttribute": f"{DRIVER}/rack", "requests": ["one", "two"]}
    result = run(claim(exactly("one"), exactly("two"), constraints=(constraint,)), slices)
    # "a" has no rack and never matches; b (r1) has no partner, so the search backtracks to c and d.
    assert results(result) == [("one", "c"), ("two", "d")]


def test_match_attribute_impossible_is_explained() -> None:
    slices = [make_slice("s", fake_devices("nvlink-pairs"))]
    in_use = {(DRIVER, "node-1", "gpu-0000-17-00-0"): "x/y", (DRIVER, "node-1", "gpu-0000-b1-00-0"): "x/z"}
    result = run(claim(exactly(count=2), constraints=({"matchAttribute": NVLINK},)), slices, in_use=in_use)
    assert not result.ok and result.failure is not None
    assert "no combination satisfies the constraints" in result.failure.message
    assert f"matchAttribute {NVLINK}" in result.failure.message


def test_distinct_attribute_spreads_over_numa_nodes() -> None:
    slices = [make_slice("s", fake_devices("dgx-h100"))]  # four GPUs on NUMA 0, then four on NUMA 1
    constraint = {"distinctAttribute": "resource.kubernetes.io/numaNode"}
    result = run(claim(exactly(count=2), constraints=(constraint,)), slices)
    assert [d for _, d in results(result)] == ["gpu-0000-18-00-0", "gpu-0000-9a-00-0"]
    three = run(claim(exactly(count=3), constraints=(constraint,)), slices)
    assert not three.ok


# -- taints --------------------------------------------------------------------------------------------------------------


def tainted(effect: str) -> list[JSON]:
    first = {
        **device("gpu-0"),
        "taints": [{"key": "example.com/unhealthy", "value": "xid-79", "effect": effect}],
    }
    return [make_slice("s", [first, device("gpu-1")])]


@pytest.mark.parametrize("effect", ["NoSchedule", "NoExecute"])
def test_blocking_taint_is_skipped(effect: str) -> None:
    assert results(run(claim(exactly()), tainted(effect))) == [("gpu", "gpu-1")]


def test_none_effect_never_blocks() -> None:
    assert results(run(claim(exactly()), tainted("None"))) == [("gpu", "gpu-0")]


@pytest.mark.parametrize(
    "toleration",
    [
        {"key": "example.com/unhealthy", "operator": "Exists"},
        {"key": "example.com/unhealthy", "operator": "Equal", "value": "xid-79", "effect": "NoSchedule"},
        {"key": "example.com/unhealthy", "value": "xid-79"},  # operator defaults to Equal
        {"operator": "Exists"},  # empty key with Exists tolerates everything
        {"operator": "Exists", "effect": "NoSchedule"},
    ],
)
def test_tolerated_taint_allows_the_device_and_is_recorded(toleration: JSON) -> None:
    result = run(claim(exactly(tolerations=[toleration])), tainted("NoSchedule"))
    entry = result.allocations[0].allocation["devices"]["results"][0]
    assert entry["device"] == "gpu-0"
    assert entry["tolerations"] == [toleration]


@pytest.mark.parametrize(
    "toleration",
    [
        {"key": "example.com/unhealthy", "operator": "Equal", "value": "xid-48"},
        {"key": "example.com/other", "operator": "Exists"},
        {"key": "example.com/unhealthy", "operator": "Exists", "effect": "NoExecute"},
    ],
)
def test_non_matching_toleration_does_not_help(toleration: JSON) -> None:
    assert results(run(claim(exactly(tolerations=[toleration])), tainted("NoSchedule"))) == [("gpu", "gpu-1")]


# -- selectors --------------------------------------------------------------------------------------------------------------


def test_class_and_request_selectors_both_apply() -> None:
    slices = [
        make_slice(
            "s",
            [
                device("nic-0", kind="nic", memory=0),
                device("gpu-small", kind="gpu", memory=16),
                device("gpu-big", kind="gpu", memory=80),
                device("nic-1", kind="nic", memory=96),
            ],
        )
    ]
    gpus = device_class("gpu", selectors=('device.attributes["gpu.accel-dra.dev"].kind == "gpu"',))
    big = exactly(selectors=('device.attributes["gpu.accel-dra.dev"].memory >= 40',))
    assert results(run(claim(big), slices, (gpus,))) == [("gpu", "gpu-big")]


def test_cel_runtime_error_aborts_when_the_search_reaches_the_device() -> None:
    slices = [make_slice("s", [device("a", model="x"), device("b")])]
    selector = 'device.attributes["gpu.accel-dra.dev"].model == "y"'  # "b" has no model: evaluation error
    result = run(claim(exactly(selectors=(selector,))), slices)
    assert not result.ok and result.failure is not None
    assert result.failure.cause == ERROR
    assert f"`{selector}`" in result.failure.message and f"{DRIVER}/node-1/b" in result.failure.message
    # A solution found before reaching the broken device is not affected.
    fine = run(claim(exactly(selectors=('device.attributes["gpu.accel-dra.dev"].model == "x"',))), slices)
    assert results(fine) == [("gpu", "a")]


def test_selector_that_does_not_compile_is_reported() -> None:
    result = run(claim(exactly(selectors=("device.attributes[",))), four_gpus())
    assert result.failure is not None and result.failure.cause == INVALID_SELECTOR
    assert "request gpu selector #0" in result.failure.message


def test_missing_device_class_is_an_error() -> None:
    result = run(claim(exactly(class_name="nope")), four_gpus())
    assert result.failure is not None and result.failure.cause == ERROR
    assert (
        'request gpu: could not retrieve device class nope: deviceclasses.resource.k8s.io "nope" not found'
        in (result.failure.message)
    )


def test_malformed_claim_is_an_input_error() -> None:
    bad = claim({"name": "gpu"})
    with pytest.raises(
        InputError, match=r"claim default/c: spec.devices.requests\[0\] \(gpu\): exactly one of"
    ):
        run(bad, four_gpus())


# -- configs and the result's shape ----------------------------------------------------------------------------------------


def opaque(value: str) -> JSON:
    return {"opaque": {"driver": DRIVER, "parameters": {"kind": value}}}


def test_class_and_claim_configs_are_passed_through_in_order() -> None:
    gpus = device_class("gpu", config=(opaque("class-gpu"),))
    other = device_class("other", config=(opaque("class-other-1"), opaque("class-other-2")))
    request_b = {
        "name": "b",
        "firstAvailable": [
            {"name": "many", "deviceClassName": "gpu", "count": 9},
            {"name": "one", "deviceClassName": "gpu"},
        ],
    }
    configs = (
        {"requests": ["a"], **opaque("claim-a")},
        {**opaque("claim-all")},
        {"requests": ["b/many"], **opaque("claim-unchosen")},
        {"requests": ["b/one", "c"], **opaque("claim-b-one")},
    )
    the_claim = claim(exactly("a"), request_b, exactly("c", class_name="other"), config=configs)
    config = run(the_claim, four_gpus(), (gpus, other)).allocations[0].allocation["devices"]["config"]
    assert config == [
        {"source": "FromClass", "requests": ["a", "b/one"], **opaque("class-gpu")},
        {"source": "FromClass", "requests": ["c"], **opaque("class-other-1")},
        {"source": "FromClass", "requests": ["c"], **opaque("class-other-2")},
        {"source": "FromClaim", "requests": ["a"], **opaque("claim-a")},
        {"source": "FromClaim", **opaque("claim-all")},
        {"source": "FromClaim", "requests": ["b/one", "c"], **opaque("claim-b-one")},
    ]


def test_config_covering_every_request_omits_the_request_list() -> None:
    gpus = device_class("gpu", config=(opaque("class"),))
    allocation = run(claim(exactly()), four_gpus(), (gpus,)).allocations[0].allocation
    assert allocation["devices"]["config"] == [{"source": "FromClass", **opaque("class")}]


def test_node_local_result_has_a_node_name_selector() -> None:
    allocation = run(claim(exactly()), four_gpus()).allocations[0].allocation
    assert allocation == {
        "devices": {"results": [{"request": "gpu", "driver": DRIVER, "pool": "node-1", "device": "gpu-0"}]},
        "nodeSelector": {
            "nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-1"]}]}
            ]
        },
    }


def test_label_selected_and_all_node_slices() -> None:
    selector = {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "rack", "operator": "In", "values": ["r1"]}]}]
    }
    by_label = make_slice("by-label", [device("fabric-0")], node=None, pool="fabric", nodeSelector=selector)
    everywhere = make_slice("everywhere", [device("net-0")], node=None, pool="net", allNodes=True)
    in_rack = Node("node-1", {"rack": "r1"})
    allocation = run(claim(exactly()), [by_label], node=in_rack).allocations[0].allocation
    assert allocation["nodeSelector"] == selector
    assert not run(claim(exactly()), [by_label], node=Node("node-1", {"rack": "r2"})).ok
    allocation = run(claim(exactly()), [everywhere]).allocations[0].allocation
    assert "nodeSelector" not in allocation


# -- pools -------------------------------------------------------------------------------------------------------------------


def test_incomplete_pool_is_skipped_with_a_reason() -> None:
    half = make_slice("half", [device("gpu-0")], pool="split", count=2)
    whole = make_slice("whole", [device("gpu-9")], pool="whole")
    assert results(run(claim(exactly()), [half, whole])) == [("gpu", "gpu-9")]
    result = run(claim(exactly()), [half])
    assert result.failure is not None
    assert "pool gpu.accel-dra.dev/split, which is not usable" in result.failure.message
    assert result.devices.pools[0].problem() == (
        "pool gpu.accel-dra.dev/split is incomplete: 1 of 2 slices of generation 0 published"
    )


def test_all_refuses_an_incomplete_pool() -> None:
    half = make_slice("half", [device("gpu-0")], pool="split", count=2)
    result = run(claim(exactly(allocationMode="All")), [half, *four_gpus()])
    assert result.failure is not None and result.failure.cause == ERROR
    assert "asks for all devices, but resource pool gpu.accel-dra.dev/split is currently being updated" in (
        result.failure.message
    )


def test_old_generation_is_ignored() -> None:
    old = make_slice("old", [device("gpu-old")], generation=1)
    new = make_slice("new", [device("gpu-new")], generation=2)
    result = run(claim(exactly()), [old, new])
    assert results(result) == [("gpu", "gpu-new")]
    assert [(s.name, s.reason) for s in result.devices.ignored] == [
        ("old", "its pool generation 1 is older than the pool's 2")
    ]


def test_other_nodes_slices_are_ignored() -> None:
    other = make_slice("other", [device("gpu-x")], node="node-2")
    assert not run(claim(exactly()), [other]).ok
    result = run(claim(exactly()), [other, *four_gpus()])
    assert results(result) == [("gpu", "gpu-0")]
    assert result.devices.ignored == []  # another node's slices are not even looked at
    assert result.devices.other_nodes == 1


def test_duplicate_device_names_make_a_pool_invalid() -> None:
    slices = [make_slice("a", [device("gpu-0")], count=2), make_slice("b", [device("gpu-0")], count=2)]
    result = run(claim(exactly()), slices)
    assert not result.ok
    assert (
        result.devices.pools[0].problem()
        == "pool gpu.accel-dra.dev/node-1 is invalid: duplicate device name gpu-0"
    )


def test_result_does_not_depend_on_slice_listing_order() -> None:
    slices = [
        make_slice("zeta", [device("z-0", rack="a"), device("z-1", rack="b")], pool="p2"),
        make_slice("alpha", [device("a-0", rack="b"), device("a-1", rack="c")], pool="p1", count=2),
        make_slice("beta", [device("b-0", rack="c"), device("b-1", rack="a")], pool="p1", count=2),
    ]
    the_claim = claim(exactly(count=2), constraints=({"matchAttribute": f"{DRIVER}/rack"},))
    outcomes = {tuple(results(run(the_claim, list(order)))) for order in itertools.permutations(slices)}
    # Search order: pool p1 (slice alpha, then beta), then p2: a-0(b) a-1(c) b-0(c) b-1(a) z-0(a) z-1(b).
    # a-0 comes first and its only rack-b partner is z-1.
    assert outcomes == {(("gpu", "a-0"), ("gpu", "z-1"))}


# -- partitionable devices (shared counters) ----------------------------------------------------------------------


def mig_pool(*profiles: tuple[str, int, int]) -> list[JSON]:
    """What dynamic MIG publishes for one 80 GB GPU on node-1: a counter set for the GPU (7 compute slices,
    8 memory slices) in one slice, and one device per placement consuming from it in another."""
    counters = {
        "metadata": {"name": "gpu-0-counters"},
        "spec": {
            "driver": DRIVER,
            "pool": {"name": "node-1", "generation": 1, "resourceSliceCount": 2},
            "nodeName": "node-1",
            "sharedCounters": [
                {"name": "gpu-0", "counters": {"compute": {"value": "7"}, "memory": {"value": "8"}}}
            ],
        },
    }
    placements = []
    for name, compute, memory in profiles:
        placement = device(name, profile=name.rsplit("-", 1)[0])
        placement["consumesCounters"] = [
            {
                "counterSet": "gpu-0",
                "counters": {"compute": {"value": str(compute)}, "memory": {"value": str(memory)}},
            }
        ]
        placements.append(placement)
    return [counters, make_slice("gpu-0-placements", placements, generation=1, count=2)]


MIG = mig_pool(("7g-0", 7, 8), ("3g-0", 3, 4), ("3g-4", 3, 4), ("1g-0", 1, 1), ("1g-6", 1, 1))


def profile(name: str, count: int = 1) -> JSON:
    return exactly(name, selectors=(f'device.attributes["{DRIVER}"].profile == "{name}"',), count=count)


def test_placements_share_the_gpu_counters() -> None:
    assert results(run(claim(profile("7g")), MIG)) == [("7g", "7g-0")]
    assert results(run(claim(profile("3g", count=2)), MIG)) == [("3g", "3g-0"), ("3g", "3g-4")]
    assert results(run(claim(profile("3g"), profile("1g", count=2)), MIG)) == [
        ("3g", "3g-0"),
        ("1g", "1g-0"),
        ("1g", "1g-6"),
    ]
    # The whole GPU and anything else exceed 7 compute slices; two halves and more exceed 8 memory slices.
    assert not run(claim(profile("7g"), profile("1g")), MIG).ok
    assert not run(claim(profile("3g", count=2), profile("1g")), MIG).ok


def test_allocated_placements_use_up_counters() -> None:
    taken = {(DRIVER, "node-1", "3g-0"): "default/a"}  # 3 of 7 compute, 4 of 8 memory slices
    assert results(run(claim(profile("1g", count=2)), MIG, in_use=taken)) == [("1g", "1g-0"), ("1g", "1g-6")]
    assert results(run(claim(profile("3g")), MIG, in_use=taken)) == [("3g", "3g-4")]
    assert not run(claim(profile("3g"), profile("1g")), MIG, in_use=taken).ok
    whole = run(claim(profile("7g")), MIG, in_use=taken)
    assert whole.failure is not None
    assert "1 lack shared counters" in whole.failure.message


def test_a_device_consuming_an_unknown_counter_set_makes_its_pool_invalid() -> None:
    broken = mig_pool(("1g-0", 1, 1))
    broken[1]["spec"]["devices"][0]["consumesCounters"][0]["counterSet"] = "gpu-9"
    result = run(claim(profile("1g")), broken)
    assert not result.ok and result.failure is not None
    assert "pool gpu.accel-dra.dev/node-1 is invalid: counter set gpu-9 not found" in result.failure.message


# -- what kube-scheduler 1.37 does that older allocators did not -------------------------------------------------


def test_a_subrequest_never_reached_does_not_fail_the_claim() -> None:
    broken = "device.attributes["  # does not compile
    claim_ = claim(
        {
            "name": "gpu",
            "firstAvailable": [
                {"name": "any", "deviceClassName": "gpu"},
                {"name": "odd", "deviceClassName": "gpu", "selectors": [{"cel": {"expression": broken}}]},
            ],
        }
    )
    assert results(run(claim_, four_gpus())) == [("gpu/any", "gpu-0")]
    # Reached (the first alternative wants too many devices), it fails the claim.
    claim_["spec"]["devices"]["requests"][0]["firstAvailable"][0]["count"] = 9
    reached = run(claim_, four_gpus())
    assert reached.failure is not None and reached.failure.cause == INVALID_SELECTOR


def test_the_filter_timeout_stops_a_long_search() -> None:
    ticks = itertools.count()
    slices = [make_slice("s", [device(f"gpu-{i}", rack=str(i % 5)) for i in range(12)])]
    # Six devices on distinct racks of five: the search tries hundreds of combinations before giving up.
    impossible = claim(exactly(count=6), constraints=({"distinctAttribute": f"{DRIVER}/rack"},))
    result = allocate([impossible], slices, [device_class()], "node-1", timeout=50, clock=lambda: next(ticks))
    assert result.failure is not None and result.failure.cause == TIMEOUT
    assert result.failure.message == "node node-1: timed out trying to allocate devices"
    assert not allocate([impossible], slices, [device_class()], "node-1").ok  # without: a plain "no"


def test_per_device_node_selection() -> None:
    here = {**device("here"), "nodeName": "node-1"}
    there = {**device("there"), "nodeName": "node-2"}
    everywhere = {**device("everywhere"), "allNodes": True}
    shared = make_slice("s", [there, here, everywhere], node=None, pool="fabric", perDeviceNodeSelection=True)
    result = run(claim(exactly(count=2)), [shared])
    assert results(result) == [("gpu", "here"), ("gpu", "everywhere")]
    assert result.allocations[0].allocation["nodeSelector"] == {
        "nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-1"]}]}
        ]
    }
    assert results(run(claim(exactly()), [shared], node="node-3")) == [("gpu", "everywhere")]


def test_node_selectors_of_the_devices_are_merged() -> None:
    def zone(values: list[str]) -> JSON:
        term = {"matchExpressions": [{"key": "zone", "operator": "In", "values": values}]}
        return {"nodeSelectorTerms": [term]}

    slices = [
        make_slice("a", [device("a")], node=None, pool="a", nodeSelector=zone(["x", "y"])),
        make_slice("b", [device("b")], node=None, pool="b", nodeSelector=zone(["y", "x"])),
    ]
    result = run(claim(exactly(count=2)), slices, node=Node("node-1", {"zone": "x"}))
    assert result.allocations[0].allocation["nodeSelector"] == zone(["x", "y"])  # equal sets count once
    assert not run(claim(exactly()), slices, node=Node("node-1", {"zone": "z"})).ok


def test_pools_with_binding_conditions_are_tried_last() -> None:
    attach = {**device("attach-0"), "bindingConditions": ["Attached"], "bindingFailureConditions": ["Failed"]}
    slices = [
        make_slice("a", [attach], pool="a-fabric"),
        make_slice("z", [device("local-0")], pool="z-local"),
    ]
    assert results(run(claim(exactly()), slices)) == [("gpu", "local-0")]
    both = run(claim(exactly(count=2)), slices)
    entry = both.allocations[0].allocation["devices"]["results"][1]
    assert entry["device"] == "attach-0"
    assert (entry["bindingConditions"], entry["bindingFailureConditions"]) == (["Attached"], ["Failed"])


def test_device_taint_rules_taint_the_devices_they_select() -> None:
    rule = {
        "metadata": {"name": "maintenance"},
        "spec": {
            "deviceSelector": {"driver": DRIVER, "device": "gpu-0"},
            "taint": {"key": "example.com/maintenance", "effect": "NoExecute"},
        },
    }
    slices = four_gpus()
    result = allocate([claim(exactly())], slices, [device_class()], "node-1", taint_rules=[rule])
    assert results(result) == [("gpu", "gpu-1")]
    tolerant = exactly(tolerations=[{"key": "example.com/maintenance", "operator": "Exists"}])
    assert results(allocate([claim(tolerant)], slices, [device_class()], "node-1", taint_rules=[rule])) == [
        ("gpu", "gpu-0")
    ]
    no_selector = {**rule, "spec": {"taint": rule["spec"]["taint"]}}  # selects nothing
    assert results(
        allocate([claim(exactly())], slices, [device_class()], "node-1", taint_rules=[no_selector])
    ) == [("gpu", "gpu-0")]


def test_consumable_capacity_rounds_requests_up_to_the_policy() -> None:
    shared = {
        **device("shared-0"),
        "allowMultipleAllocations": True,
        "capacity": {
            "memory": {
                "value": "80Gi",
                "requestPolicy": {
                    "default": "8Gi",
                    "validRange": {"min": "8Gi", "max": "40Gi", "step": "8Gi"},
                },
            }
        },
    }
    slices = [make_slice("s", [shared])]

    def asking(memory: str | None) -> AllocationResult:
        fields = {"capacity": {"requests": {"memory": memory}}} if memory else {}
        return run(claim(exactly(**fields)), slices)

    def consumed(result: AllocationResult) -> Any:
        return result.allocations[0].allocation["devices"]["results"][0]["consumedCapacity"]

    assert consumed(asking(None)) == {"memory": "8Gi"}  # the default
    assert consumed(asking("1Gi")) == {"memory": "8Gi"}  # raised to the minimum
    assert consumed(asking("20Gi")) == {"memory": "24Gi"}  # up to the next step
    too_big = asking("48Gi")  # fits in 80Gi, but the policy allows 40Gi at most
    assert too_big.failure is not None and "lack the capacity asked for" in too_big.failure.message
    held = AllocatedState(capacity={(DRIVER, "node-1", "shared-0"): {"memory": Decimal(64 * 2**30)}})
    assert not run(claim(exactly(capacity={"requests": {"memory": "20Gi"}})), slices, in_use=held).ok


def test_a_pool_is_complete_when_all_its_slices_exist_on_any_node() -> None:
    mine = make_slice("mine", [device("gpu-0")], pool="shared-pool", count=2)
    theirs = make_slice("theirs", [device("gpu-9")], node="node-2", pool="shared-pool", count=2)
    assert results(run(claim(exactly()), [mine, theirs])) == [("gpu", "gpu-0")]
    assert not run(claim(exactly()), [mine]).ok  # incomplete
    newer = make_slice("newer", [device("gpu-9")], node="node-2", pool="shared-pool", generation=1, count=2)
    replacing = run(claim(exactly()), [mine, newer])
    assert not replacing.ok  # a newer generation is on its way: the pool is left alone until it arrives
    assert [s.reason for s in replacing.devices.ignored] == [
        "a newer generation of its pool is being published for other nodes"
    ]


def test_allocated_state_from_claims_as_the_scheduler_gathers_it() -> None:
    def result(device_name: str, **extra: Any) -> JSON:
        return {"request": "r", "driver": DRIVER, "pool": "p", "device": device_name, **extra}

    holder = {
        "metadata": {"name": "holder", "namespace": "ns", "uid": "u1"},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        result("dedicated"),
                        result("admin", adminAccess=True),
                        result("shared", shareID="s1", consumedCapacity={"memory": "8Gi"}),
                        result("shared", shareID="s2", consumedCapacity={"memory": "16Gi"}),
                        result("shared-no-capacity", shareID="s3"),
                    ]
                }
            }
        },
    }
    state = AllocatedState.from_claims([holder])
    assert state.dedicated == {(DRIVER, "p", "dedicated"): "ns/holder"}
    assert state.shared[(DRIVER, "p", "shared")] == {"s1": "ns/holder", "s2": "ns/holder"}
    assert state.capacity == {(DRIVER, "p", "shared"): {"memory": Decimal(24 * 2**30)}}
    assert state.capacity_in_use((DRIVER, "p", "shared-no-capacity"))
    assert not state.is_allocated((DRIVER, "p", "admin"))
    assert AllocatedState.from_claims([holder], exclude=["u1"]) == AllocatedState()
