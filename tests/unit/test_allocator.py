"""The allocator, rule by rule, on slice sets small enough to check by reading them."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from driver.allocation.allocator import ERROR, INVALID_SELECTOR, NO_FIT, AllocationResult, allocate
from driver.allocation.model import InputError, Node
from driver.allocation.pools import in_use_from_claims
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
    in_use = in_use_from_claims(others)
    assert in_use == {(DRIVER, "node-1", "gpu-0"): "default/holder"}  # admin access does not hold a device
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
    in_use = {(DRIVER, "node-1", "shared-0"): "default/other"}
    result = run([claim(exactly(), name="a"), claim(exactly(), name="b")], slices, in_use=in_use)
    first = result.allocations[0].allocation["devices"]["results"][0]
    second = result.allocations[1].allocation["devices"]["results"][0]
    assert first["device"] == second["device"] == "shared-0"
    assert first["shareID"] != second["shareID"]


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
    assert "DeviceClass 'nope' not found" in result.failure.message


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
    assert "asks for all devices, but pool gpu.accel-dra.dev/split is incomplete" in result.failure.message


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
    assert [(s.name, s.reason) for s in result.devices.ignored] == [("other", "published for node node-2")]


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


def test_devices_consuming_shared_counters_are_not_handed_out() -> None:
    partition = {
        **device("gpu-0-part"),
        "consumesCounters": [{"counterSet": "gpu-0", "counters": {"mem": {"value": "1"}}}],
    }
    result = run(claim(exactly()), [make_slice("s", [partition, device("gpu-1")])])
    assert results(result) == [("gpu", "gpu-1")]
    alone = run(claim(exactly()), [make_slice("s", [partition])])
    assert (
        alone.failure is not None and "use features this allocator does not support" in alone.failure.message
    )
