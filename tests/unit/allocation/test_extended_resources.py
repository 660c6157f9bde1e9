"""The claim kube-scheduler 1.37 makes for a pod's DRA-backed extended resources (driver.allocation.extended),
and the DeviceClasses that provide them (driver.resources.deviceclasses)."""

from __future__ import annotations

from typing import Any

import pytest

from driver.allocation.extended import (
    EXTENDED_CLAIM_ANNOTATION,
    NotBackedError,
    class_for,
    extended_claim,
    is_extended_resource_name,
    pod_requests,
)
from driver.resources.deviceclasses import device_classes, mig_profiles_in_use, profile_class_name
from tests.support.deploy_checks import fake_slices

JSON = dict[str, Any]
CLASSES = device_classes("gpu.accel-dra.dev")


def container(name: str, limits: dict[str, Any], **extra: Any) -> JSON:
    return {"name": name, "image": "x", "resources": {"limits": limits}, **extra}


def pod(*containers: JSON, inits: tuple[JSON, ...] = ()) -> JSON:
    spec: JSON = {"containers": list(containers)}
    if inits:
        spec["initContainers"] = list(inits)
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u-1"}, "spec": spec}


def summary(claim: Any) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, str]]]:
    return (
        [(r["name"], r["exactly"]["deviceClassName"], r["exactly"]["count"]) for r in claim.requests],
        [(m["containerName"], m["resourceName"], m["requestName"]) for m in claim.mappings],
    )


@pytest.mark.parametrize(
    ("name", "extended"),
    [
        ("nvidia.com/gpu", True),
        ("deviceclass.resource.kubernetes.io/gpu.accel-dra.dev", True),
        ("cpu", False),
        ("hugepages-2Mi", False),
        ("kubernetes.io/something", False),
        ("requests.nvidia.com/gpu", False),
    ],
)
def test_which_names_are_extended_resources(name: str, extended: bool) -> None:
    assert is_extended_resource_name(name) is extended


def test_the_classes_stand_for_the_device_plugin_names() -> None:
    assert class_for("nvidia.com/gpu", CLASSES) == "gpu.accel-dra.dev"
    assert class_for("nvidia.com/mig-1g.5gb", CLASSES) == profile_class_name("1g.5gb", "gpu.accel-dra.dev")
    assert class_for("deviceclass.resource.kubernetes.io/mig.accel-dra.dev", CLASSES) == "mig.accel-dra.dev"
    assert class_for("example.com/fpga", CLASSES) is None
    # Two classes with one name: the newer wins (a migration from one class to another), the lower name on a tie.
    older = {
        "metadata": {"name": "b", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"extendedResourceName": "x.com/y"},
    }
    newer = {
        "metadata": {"name": "c", "creationTimestamp": "2026-02-01T00:00:00Z"},
        "spec": {"extendedResourceName": "x.com/y"},
    }
    same = {**older, "metadata": {**older["metadata"], "name": "a"}}
    assert class_for("x.com/y", [older, newer]) == "c"
    assert class_for("x.com/y", [older, same]) == "a"


def test_one_request_per_container_and_resource() -> None:
    found = extended_claim(
        pod(
            container("a", {"cpu": "1", "nvidia.com/gpu": 2}),
            container("b", {"nvidia.com/mig-1g.5gb": "1", "nvidia.com/gpu": 1, "memory": "1Gi"}),
        ),
        CLASSES,
        allocatable={"cpu": "8"},
    )
    assert found is not None
    assert summary(found) == (
        [
            ("container-0-request-1", "gpu.accel-dra.dev", 2),  # sorted names: cpu, nvidia.com/gpu
            (
                "container-1-request-1",
                "gpu.accel-dra.dev",
                1,
            ),  # memory, nvidia.com/gpu, nvidia.com/mig-1g.5gb
            ("container-1-request-2", "1g.5gb.mig.accel-dra.dev", 1),
        ],
        [
            ("a", "nvidia.com/gpu", "container-0-request-1"),
            ("b", "nvidia.com/gpu", "container-1-request-1"),
            ("b", "nvidia.com/mig-1g.5gb", "container-1-request-2"),
        ],
    )
    claim = found.claim(pod(container("a", {})))
    assert claim["metadata"]["generateName"] == "p-extended-resources-"
    assert claim["metadata"]["annotations"] == {EXTENDED_CLAIM_ANNOTATION: "true"}
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert found.status("p-extended-resources-x")["resourceClaimName"] == "p-extended-resources-x"


def test_init_containers_reuse_the_requests_of_later_containers() -> None:
    sidecar = container("side", {"nvidia.com/gpu": 1}, restartPolicy="Always")
    found = extended_claim(
        pod(
            container("main", {"nvidia.com/gpu": 1}),
            inits=(
                container("setup", {"nvidia.com/gpu": 2}),
                sidecar,
                container("small", {"nvidia.com/gpu": 1}),
            ),
        ),
        CLASSES,
        allocatable={},
    )
    assert found is not None
    requests, mappings = summary(found)
    # Init containers reuse what containers started after them hold: "setup" the sidecar's and main's,
    # "small" (after the sidecar) main's.
    assert requests == [
        ("container-1-request-0", "gpu.accel-dra.dev", 1),
        ("container-3-request-0", "gpu.accel-dra.dev", 1),
    ]
    assert ("setup", "nvidia.com/gpu", "container-1-request-0") in mappings
    assert ("setup", "nvidia.com/gpu", "container-3-request-0") in mappings
    assert ("small", "nvidia.com/gpu", "container-3-request-0") in mappings
    assert pod_requests(
        pod(
            container("main", {"nvidia.com/gpu": 1}),
            inits=(container("setup", {"nvidia.com/gpu": 3}), sidecar),
        )
    ) == {"nvidia.com/gpu": 3}


def test_the_largest_short_lived_request_serves_every_init_container() -> None:
    found = extended_claim(
        pod(
            container("main", {}),
            inits=(container("i1", {"nvidia.com/gpu": 1}), container("i2", {"nvidia.com/gpu": 3})),
        ),
        CLASSES,
        allocatable={},
    )
    assert found is not None and summary(found) == (
        [("container-1-request-0", "gpu.accel-dra.dev", 3)],
        [
            ("i1", "nvidia.com/gpu", "container-1-request-0"),
            ("i2", "nvidia.com/gpu", "container-1-request-0"),
        ],
    )


def test_a_device_plugin_on_the_node_takes_precedence() -> None:
    wanting = pod(container("a", {"nvidia.com/gpu": 1}))
    assert extended_claim(wanting, CLASSES, allocatable={"nvidia.com/gpu": "8"}) is None
    assert extended_claim(wanting, CLASSES, allocatable={"nvidia.com/gpu": "0"}) is not None
    assert extended_claim(pod(container("a", {"cpu": "1"})), CLASSES, allocatable={}) is None


def test_a_resource_nothing_provides_is_insufficient() -> None:
    with pytest.raises(NotBackedError, match=r"Insufficient example\.com/fpga"):
        extended_claim(pod(container("a", {"example.com/fpga": 1})), CLASSES, allocatable={})


def test_the_mig_profiles_in_use_come_from_the_published_devices() -> None:
    assert mig_profiles_in_use(fake_slices("mig-a100"), "gpu.accel-dra.dev") == [
        "1g.5gb",
        "2g.10gb",
        "3g.20gb",
    ]
    assert mig_profiles_in_use(fake_slices("dgx-h100"), "gpu.accel-dra.dev") == []
    assert mig_profiles_in_use(fake_slices("mig-a100"), "gpu.other.dev") == []
