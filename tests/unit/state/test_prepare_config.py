"""Opaque GpuConfig: validation messages, precedence of class and claim configs, which requests they cover."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from driver.state.api import allocation_results
from driver.state.opaque import (
    API_VERSION,
    ConfigError,
    GpuConfig,
    config_for,
    parse_gpu_config,
    resolve_configs,
    schema,
)
from tests.support import paths

DRIVER = "gpu.accel-dra.dev"


def params(interval: str | None = "Short", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "GpuConfig"}
    if interval is not None:
        body["sharing"] = {"strategy": "TimeSlicing", "timeSlicing": {"interval": interval}}
    body.update(extra)
    return body


def entry(
    parameters: Any, requests: tuple[str, ...] = (), driver: str = DRIVER, source: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"opaque": {"driver": driver, "parameters": parameters}}
    if requests:
        out["requests"] = list(requests)
    if source:
        out["source"] = source
    return out


def claim(
    results: list[tuple[str, str]],
    *,
    spec_config: list[Any] | None = None,
    allocated_config: list[Any] | None = None,
) -> dict[str, Any]:
    devices: dict[str, Any] = {
        "results": [{"request": r, "driver": DRIVER, "pool": "node-1", "device": d} for r, d in results]
    }
    if allocated_config is not None:
        devices["config"] = allocated_config
    return {
        "metadata": {"name": "c", "namespace": "ns", "uid": "u-1"},
        "spec": {"devices": {"config": spec_config or []}},
        "status": {"allocation": {"devices": devices}},
    }


def effective(c: dict[str, Any]) -> dict[str, str | None]:
    entries = resolve_configs(c, DRIVER)
    out = {}
    for r in allocation_results(c, DRIVER):
        config = config_for(r, entries)
        out[r.device] = None if config is None else config.sharing
    return out


def test_claim_configs_override_class_configs_and_later_entries_win() -> None:
    c = claim(
        [("a", "gpu-a"), ("b", "gpu-b"), ("c", "gpu-c")],
        allocated_config=[
            # Listed claim-first on purpose: precedence comes from the source, not the order.
            entry(params("Long"), ("a",), source="FromClaim"),
            entry(params("Short"), source="FromClass"),
            entry(params("Medium"), ("b",), source="FromClaim"),
            entry(params("Default"), ("b",), source="FromClaim"),
        ],
    )
    assert effective(c) == {
        "gpu-a": "TimeSlicing:Long",
        "gpu-b": "TimeSlicing:Default",
        "gpu-c": "TimeSlicing:Short",
    }


def test_spec_configs_are_used_when_the_allocation_has_none() -> None:
    c = claim([("gpu", "gpu-a")], spec_config=[entry(params("Medium"))])
    assert effective(c) == {"gpu-a": "TimeSlicing:Medium"}


def test_a_parent_request_covers_its_subrequests_but_not_others() -> None:
    c = claim([("gpu/big", "gpu-a"), ("other", "gpu-b")], spec_config=[entry(params("Long"), ("gpu",))])
    assert effective(c) == {"gpu-a": "TimeSlicing:Long", "gpu-b": None}
    c = claim(
        [("gpu/big", "gpu-a"), ("gpu/small", "gpu-b")], spec_config=[entry(params("Long"), ("gpu/small",))]
    )
    assert effective(c) == {"gpu-a": None, "gpu-b": "TimeSlicing:Long"}


def test_other_drivers_configs_are_ignored_even_when_invalid_for_us() -> None:
    c = claim([("gpu", "gpu-a")], spec_config=[entry({"anything": True}, driver="net.example.com")])
    assert effective(c) == {"gpu-a": None}


def test_a_config_without_sharing_is_valid_and_sets_nothing() -> None:
    c = claim([("gpu", "gpu-a")], spec_config=[entry(params(None))])
    assert resolve_configs(c, DRIVER)[0].config == GpuConfig()
    assert effective(c) == {"gpu-a": None}
    assert GpuConfig().to_json() == {}
    assert GpuConfig(time_slicing="Short").to_json() == {
        k: v for k, v in params("Short").items() if k == "sharing"
    }


def test_interval_defaults_to_default() -> None:
    c = claim(
        [("gpu", "gpu-a")], spec_config=[entry({**params(None), "sharing": {"strategy": "TimeSlicing"}})]
    )
    assert effective(c) == {"gpu-a": "TimeSlicing:Default"}


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            params("Fast"),
            r"spec\.devices\.config\[1\]\.opaque\.parameters\.sharing\.timeSlicing\.interval: 'Fast' is not one of",
        ),
        (
            {"apiVersion": "resource.nvidia.com/v1beta1", "kind": "GpuConfig"},
            r"config\[1\]\.opaque\.parameters\.apiVersion: 'resource.nvidia.com/v1beta1' is not supported",
        ),
        ({"apiVersion": API_VERSION, "kind": "MigConfig"}, r"parameters\.kind: 'MigConfig' is not supported"),
        (params("Short", replicas=3), r"parameters\.replicas: Additional properties are not allowed"),
        (
            {**params(None), "sharing": {"timeSlicing": {}}},
            r"parameters\.sharing\.strategy: 'strategy' is a required property",
        ),
        (
            {**params(None), "sharing": {"strategy": "MPS"}},
            r"parameters\.sharing\.strategy: 'MPS' is not one of",
        ),
    ],
)
def test_invalid_configs_name_claim_entry_and_field(parameters: Any, message: str) -> None:
    c = claim(
        [("gpu", "gpu-a")],
        spec_config=[entry({"ignored": 1}, driver="other.example.com"), entry(parameters)],
    )
    with pytest.raises(ConfigError, match=r"^claim ns/c \(u-1\): invalid opaque config: " + ".*" + message):
        resolve_configs(c, DRIVER)


def test_the_schema_ships_with_the_package() -> None:
    s = schema()
    assert s["properties"]["apiVersion"]["const"] == API_VERSION
    assert s["properties"]["sharing"]["properties"]["timeSlicing"]["properties"]["interval"]["enum"] == [
        "Default",
        "Short",
        "Medium",
        "Long",
    ]


def test_the_time_slicing_example_is_a_valid_config() -> None:
    path = paths.REPO / "deploy/examples/gpu-test-timeslicing/gpu-test-timeslicing.yaml"
    (template,) = [
        d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "ResourceClaimTemplate"
    ]
    spec = template["spec"]["spec"]
    c = {
        "metadata": {"name": "pod-gpu-x", "namespace": "gpu-test-timeslicing", "uid": "u"},
        "spec": spec,
        "status": {
            "allocation": {
                "devices": {"results": [{"request": "gpu", "driver": DRIVER, "pool": "n", "device": "d"}]}
            }
        },
    }
    assert effective(c) == {"d": "TimeSlicing:Long"}


def test_the_documented_examples_are_valid_configs() -> None:
    doc = (paths.REPO / "docs/opaque-config.md").read_text()
    first_yaml = doc.split("```yaml", 1)[1].split("```", 1)[0]
    (entry_,) = yaml.safe_load(first_yaml)["spec"]["devices"]["config"]
    assert parse_gpu_config(entry_["opaque"]["parameters"]) == GpuConfig(time_slicing="Long")
