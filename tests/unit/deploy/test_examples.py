"""The examples in deploy/examples: valid for Kubernetes 1.36/1.37, consistent, and allocatable.

Every object validates against the 1.36 and 1.37 API schemas (strict) and, for DRA objects, against the API
server's rules (``driver.kube.api``). Pods reference claims that exist; CEL and matchAttribute
use only attributes of the standard profile; DeviceClasses are the chart's. The gpu-test examples are then
allocated -- with the scheduler-equivalent allocator and the chart's DeviceClasses -- on the fake machine
profiles their READMEs name, and the outcome the README promises is checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from driver.allocation.allocator import allocate
from driver.allocation.extended import class_for, extended_claim, pod_requests
from driver.allocation.model import claim_from_template
from driver.kube.api import deviceclass, resourceclaim
from driver.resources.attributes import PROFILE
from tests.support.chart import DEPLOY
from tests.support.deploy_checks import fake_slices, schema_errors

EXAMPLES = DEPLOY / "examples"
DRIVER = "gpu.accel-dra.dev"
OURS = [f"gpu-test{i}" for i in range(1, 7)]

JSON = dict[str, Any]


def example_files() -> list[Path]:
    return sorted(EXAMPLES.rglob("*.yaml"))


def load(path: Path) -> list[JSON]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def example(name: str) -> list[JSON]:
    return [obj for path in sorted((EXAMPLES / name).glob("*.yaml")) for obj in load(path)]


def chart_classes() -> list[JSON]:
    return [o for o in load(DEPLOY / "base" / "accel-dra.yaml") if o["kind"] == "DeviceClass"]


def of_kind(objects: list[JSON], kind: str) -> list[JSON]:
    return [o for o in objects if o["kind"] == kind]


def test_every_example_has_a_readme_and_is_listed() -> None:
    index = (EXAMPLES / "README.md").read_text()
    directories = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    assert set(OURS) <= set(directories)
    for name in directories:
        assert (EXAMPLES / name / "README.md").is_file(), f"{name} has no README.md"
        assert f"]({name}/)" in index, f"deploy/examples/README.md does not list {name}"
        assert list((EXAMPLES / name).glob("*.yaml")), f"{name} has no manifest"


@pytest.mark.parametrize("path", example_files(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_objects_validate_against_the_kubernetes_schemas(path: Path) -> None:
    objects = load(path)
    assert objects
    assert schema_errors(objects) == []


@pytest.mark.parametrize("path", example_files(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_dra_objects_pass_the_api_servers_rules(path: Path) -> None:
    validators = {
        "ResourceClaim": resourceclaim.validate_resource_claim,
        "ResourceClaimTemplate": resourceclaim.validate_resource_claim_template,
        "DeviceClass": deviceclass.validate_device_class,
    }
    for obj in load(path):
        if obj["kind"] in validators:
            assert obj["apiVersion"] == "resource.k8s.io/v1"
            errors = validators[obj["kind"]](obj)
            assert [str(e) for e in errors] == [], f"{obj['kind']} {obj['metadata']['name']}"


def _claim_specs(objects: list[JSON]) -> dict[tuple[str, str, str], JSON]:
    """(kind, namespace, name) -> claim spec, for claims and templates."""
    out = {}
    for obj in objects:
        if obj["kind"] == "ResourceClaim":
            out[("claim", obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj["spec"]
        elif obj["kind"] == "ResourceClaimTemplate":
            out[("template", obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj["spec"]["spec"]
    return out


@pytest.mark.parametrize("path", example_files(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_pods_reference_claims_and_requests_that_exist(path: Path) -> None:
    objects = load(path)
    specs = _claim_specs(objects)
    namespaces = {o["metadata"]["name"] for o in of_kind(objects, "Namespace")}
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") in namespaces, (
                f"{obj['kind']} outside the example's namespace"
            )
    pods = of_kind(objects, "Pod")
    assert pods
    for pod in pods:
        ns = pod["metadata"]["namespace"]
        pod_claims: dict[str, JSON] = {}
        if not pod["spec"].get("resourceClaims"):
            # Extended resources instead of claims: each is one a chart class stands for.
            assert pod_requests(pod), f"pod {pod['metadata']['name']} asks for no device"
            assert all(class_for(r, chart_classes()) for r in pod_requests(pod))
            continue
        for ref in pod["spec"]["resourceClaims"]:
            if "resourceClaimName" in ref:
                pod_claims[ref["name"]] = specs[("claim", ns, ref["resourceClaimName"])]
            else:
                pod_claims[ref["name"]] = specs[("template", ns, ref["resourceClaimTemplateName"])]
        used = set()
        for container in pod["spec"]["containers"]:
            for claim in container["resources"]["claims"]:
                assert claim["name"] in pod_claims, f"{container['name']} uses unknown claim {claim['name']}"
                used.add(claim["name"])
                if "request" in claim:
                    names = {r["name"] for r in pod_claims[claim["name"]]["devices"]["requests"]}
                    assert claim["request"] in names
        assert used == set(pod_claims), "a pod claim no container uses holds devices for nothing"


def _selector_names(spec: JSON) -> Iterator[tuple[str, str]]:
    """(kind, name) of attributes and capacities the claim's CEL and constraints refer to, in our domain."""
    for request in spec["devices"]["requests"]:
        for alternative in [request.get("exactly", {}), *request.get("firstAvailable", [])]:
            for selector in alternative.get("selectors", []):
                expression = selector["cel"]["expression"]
                for kind, name in re.findall(
                    r'device\.(attributes|capacity)\["' + re.escape(DRIVER) + r'"\]\.(\w+)', expression
                ):
                    yield kind, name
    for constraint in spec["devices"].get("constraints", []):
        domain, _, name = constraint["matchAttribute"].rpartition("/")
        if domain == DRIVER:
            yield "attributes", name


@pytest.mark.parametrize("name", OURS)
def test_examples_use_the_standard_attributes_and_the_charts_classes(name: str) -> None:
    attributes = {s.name for s in PROFILE if s.type != "capacity" and s.domain is None}
    capacities = {s.name for s in PROFILE if s.type == "capacity"}
    classes = {c["metadata"]["name"] for c in chart_classes()}
    for spec in _claim_specs(example(name)).values():
        for kind, attr in _selector_names(spec):
            assert attr in (attributes if kind == "attributes" else capacities), (
                f"{name}: unknown {kind} {attr}"
            )
        for request in spec["devices"]["requests"]:
            assert request["exactly"]["deviceClassName"] in classes


def allocate_pod(name: str, profile: str, mig_mode: str = "static") -> dict[str, list[tuple[str, str]]]:
    """Allocate every claim of the example's first pod on ``fake:<profile>``: claim -> [(request, device)]."""
    objects = example(name)
    pod = of_kind(objects, "Pod")[0]
    ns = pod["metadata"]["namespace"]
    claims = []
    extended = extended_claim(pod, chart_classes(), allocatable={})
    if extended is not None:
        claims.append({**extended.claim(pod), "metadata": {"name": "extended-resources", "namespace": ns}})
    for ref in pod["spec"].get("resourceClaims") or []:
        if "resourceClaimName" in ref:
            claim = next(
                o
                for o in of_kind(objects, "ResourceClaim")
                if o["metadata"]["name"] == ref["resourceClaimName"]
            )
        else:
            template = next(
                o
                for o in of_kind(objects, "ResourceClaimTemplate")
                if o["metadata"]["name"] == ref["resourceClaimTemplateName"]
            )
            claim = claim_from_template(template)
        claim["metadata"] = {"name": ref["name"], "namespace": ns}
        claims.append(claim)
    result = allocate(claims, fake_slices(profile, mig_mode=mig_mode), chart_classes(), "node-1")
    if not result.ok:
        return {}
    out = {}
    for claim in claims:
        allocation = result.allocation_for(f"{ns}/{claim['metadata']['name']}")
        assert allocation is not None
        out[claim["metadata"]["name"]] = [
            (r["request"], r["device"]) for r in allocation["devices"]["results"]
        ]
    return out


@pytest.mark.parametrize(
    ("name", "profile"),
    [
        (n, p)
        for n in ("gpu-test1", "gpu-test2", "gpu-test3", "gpu-test-metadata")
        for p in ("pcie-l4x4", "dgx-h100", "nvlink-pairs")
    ],
)
def test_basic_examples_get_one_gpu_anywhere(name: str, profile: str) -> None:
    (devices,) = allocate_pod(name, profile).values()
    assert len(devices) == 1 and "-mig-" not in devices[0][1]


def test_gpu_test4_selects_on_memory() -> None:
    assert allocate_pod("gpu-test4", "pcie-l4x4") == {}  # L4: 22.5 GiB < 40 GiB
    for profile in ("dgx-h100", "nvlink-pairs", "nvl72-tray"):
        assert len(allocate_pod("gpu-test4", profile)["gpu"]) == 1


def test_gpu_test5_gets_an_nvlink_connected_pair() -> None:
    assert allocate_pod("gpu-test5", "pcie-l4x4") == {}
    pairs = {("gpu-0000-17-00-0", "gpu-0000-31-00-0"), ("gpu-0000-b1-00-0", "gpu-0000-ca-00-0")}
    devices = tuple(sorted(d for _, d in allocate_pod("gpu-test5", "nvlink-pairs")["gpus"]))
    assert devices in pairs, "the two GPUs must be bridged to each other"
    assert len(allocate_pod("gpu-test5", "dgx-h100")["gpus"]) == 2


@pytest.mark.parametrize("profile", ["pcie-l4x4", "dgx-h100", "nvlink-pairs"])
def test_the_extended_resource_example_gets_one_gpu(profile: str) -> None:
    (devices,) = allocate_pod("gpu-test-extended-resource", profile).values()
    assert len(devices) == 1 and devices[0][0] == "container-0-request-0" and "-mig-" not in devices[0][1]


def test_the_extended_mig_example_gets_one_device_of_each_profile() -> None:
    assert allocate_pod("gpu-test-extended-mig", "dgx-h100") == {}
    results = dict(allocate_pod("gpu-test-extended-mig", "mig-a100")["extended-resources"])
    assert re.fullmatch(r"gpu-0000-07-00-0-mig-1g-5gb-\d", results["container-0-request-0"])
    assert results["container-1-request-0"] == "gpu-0000-07-00-0-mig-2g-10gb-0"


def test_gpu_test6_gets_one_mig_device_per_profile() -> None:
    assert allocate_pod("gpu-test6", "dgx-h100") == {}  # no MIG devices
    results = dict(allocate_pod("gpu-test6", "mig-a100")["mig"])
    assert re.fullmatch(r"gpu-0000-07-00-0-mig-1g-5gb-\d", results["small"])
    assert results["medium"] == "gpu-0000-07-00-0-mig-2g-10gb-0"


def test_the_dynamic_mig_example_splits_one_dynamic_gpu() -> None:
    assert allocate_pod("gpu-test-mig-dynamic", "mig-a100") == {}  # hand-made instances: no 4g
    results = dict(
        allocate_pod(
            "gpu-test-mig-dynamic", "mig-dynamic", "static,0000:0f:00.0=dynamic,0000:47:00.0=dynamic"
        )["mig"]
    )
    assert results == {"big": "gpu-0000-0f-00-0-mig-4g-20gb-0", "small": "gpu-0000-0f-00-0-mig-3g-20gb-4"}
    only_h100 = dict(
        allocate_pod("gpu-test-mig-dynamic", "mig-dynamic", "static,0000:47:00.0=dynamic")["mig"]
    )
    assert only_h100 == {"big": "gpu-0000-47-00-0-mig-4g-40gb-0", "small": "gpu-0000-47-00-0-mig-3g-40gb-4"}


@pytest.mark.parametrize("profile", ["dgx-h100", "nvlink-pairs", "nvl72-tray", "pcie-l4x4"])
def test_the_impossible_example_is_never_allocatable(profile: str) -> None:
    assert allocate_pod("gpu-test-impossible", profile) == {}


def test_deployed_device_classes_match_the_ones_the_sandbox_creates() -> None:
    """deploy/ (rendered from the chart) and driver.resources.deviceclasses must not drift apart."""
    from driver.resources.deviceclasses import device_classes

    def essence(objs: list[JSON]) -> dict[str, tuple[list[str], str | None]]:
        return {
            o["metadata"]["name"]: (
                [s["cel"]["expression"].strip() for s in o["spec"]["selectors"]],
                o["spec"].get("extendedResourceName"),
            )
            for o in objs
        }

    assert essence(chart_classes()) == essence(device_classes("gpu.accel-dra.dev"))
