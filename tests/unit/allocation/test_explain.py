"""`accel-dra explain`: the report per request and device, its JSON shape, and the command on files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from driver.allocation.explain import NodeReport, explain, render_json, render_text
from driver.devices.backend import open_backend
from driver.resources.attributes import device_entry
from tests.support import paths

REPO = paths.REPO
DRIVER = "gpu.accel-dra.dev"
JSON = dict[str, Any]
BIG_MEMORY = f'device.capacity["{DRIVER}"].memory.compareTo(quantity("40Gi")) >= 0'


def node_slice(profile: str, node: str = "node-1", taint_first: JSON | None = None) -> JSON:
    inventory = open_backend(f"fake:{profile}", node_name=node).discover()
    devices = [device_entry(gpu, inventory, DRIVER) for gpu in inventory.gpus]
    if taint_first:
        devices[0]["taints"] = [taint_first]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-{DRIVER}-x1"},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": 0, "resourceSliceCount": 1},
            "devices": devices,
        },
    }


GPU_CLASS: JSON = {
    "apiVersion": "resource.k8s.io/v1",
    "kind": "DeviceClass",
    "metadata": {"name": DRIVER},
    "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
}


def gpu_claim(
    name: str = "gpus", count: int = 1, selectors: tuple[str, ...] = (), match_attribute: str | None = None
) -> JSON:
    exactly: JSON = {"deviceClassName": DRIVER, "count": count}
    if selectors:
        exactly["selectors"] = [{"cel": {"expression": e}} for e in selectors]
    devices: JSON = {"requests": [{"name": "gpu", "exactly": exactly}]}
    if match_attribute:
        devices["constraints"] = [{"matchAttribute": match_attribute}]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"devices": devices},
    }


def report_json(report: NodeReport) -> JSON:
    node: JSON = json.loads(render_json([report], ["x"]))["nodes"][0]
    return node


def devices_of(report: NodeReport, request: int = 0) -> list[JSON]:
    devices: list[JSON] = report_json(report)["claims"][0]["requests"][request]["devices"]
    return devices


# -- the report --------------------------------------------------------------------------------------------------


def test_claim_that_fits() -> None:
    report = explain([gpu_claim(count=2)], [node_slice("dgx-h100")], [GPU_CLASS], "node-1")
    assert report.allocatable
    body = report_json(report)
    assert body["verdict"] == "ALLOCATABLE: default/gpus can be allocated on node node-1"
    results = body["claims"][0]["allocation"]["devices"]["results"]
    assert [r["device"] for r in results] == ["gpu-0000-18-00-0", "gpu-0000-2a-00-0"]
    statuses = [(d["device"].rsplit("/", 1)[1], d["status"]) for d in devices_of(report)]
    assert statuses[:3] == [
        ("gpu-0000-18-00-0", "selected"),
        ("gpu-0000-2a-00-0", "selected"),
        ("gpu-0000-3a-00-0", "fits"),
    ]
    assert devices_of(report)[2]["note"].startswith("not-needed")
    text = render_text([report])
    assert "selected gpu-0000-18-00-0" in text
    assert "gpu -> gpu.accel-dra.dev/node-1/gpu-0000-2a-00-0" in text


def test_memory_selector_too_big_shows_the_value_seen() -> None:
    report = explain([gpu_claim(selectors=(BIG_MEMORY,))], [node_slice("pcie-l4x4")], [GPU_CLASS], "node-1")
    assert not report.allocatable
    devices = devices_of(report)
    assert [d["status"] for d in devices] == ["no"] * 4
    reason = devices[0]["reasons"][0]
    assert reason["kind"] == "request-selector"
    assert reason["seen"] == {"memory": "23034Mi"}
    assert reason["message"] == f"request gpu selector #0 `{BIG_MEMORY}` was false: memory=23034Mi"
    assert (
        "request gpu needs 1 device(s); 0 of 4 device(s) fit (4 fail request gpu selector #0"
        in report.verdict
    )
    assert f"`{BIG_MEMORY}` was false: memory=23034Mi" in render_text([report])


def test_class_selector_failure_is_told_apart_from_request_selector() -> None:
    picky_class = {
        **GPU_CLASS,
        "spec": {"selectors": [{"cel": {"expression": f'device.attributes["{DRIVER}"].brand == "AMD"'}}]},
    }
    report = explain([gpu_claim()], [node_slice("pcie-l4x4")], [picky_class], "node-1")
    reason = devices_of(report)[0]["reasons"][0]
    assert reason["kind"] == "class-selector"
    assert reason["message"].startswith(f"DeviceClass {DRIVER} selector #0")
    assert reason["seen"] == {"brand": '"Nvidia"'}


def test_constraint_conflict_with_the_chosen_devices() -> None:
    report = explain(
        [gpu_claim(count=2, match_attribute=f"{DRIVER}/nvlinkDomain")],
        [node_slice("nvlink-pairs")],
        [GPU_CLASS],
        "node-1",
    )
    assert report.allocatable
    devices = devices_of(report)
    assert [d["status"] for d in devices] == ["selected", "selected", "no", "no"]
    reason = devices[2]["reasons"][0]
    assert reason["kind"] == "constraint"
    assert reason["message"].startswith(f"matchAttribute {DRIVER}/nvlinkDomain: value nvlink-")
    assert "differs from nvlink-" in reason["message"]
    assert reason["message"].endswith("of gpu-0000-17-00-0 chosen for request gpu")


def test_impossible_constraint_lists_each_devices_value() -> None:
    report = explain(
        [gpu_claim(count=3, match_attribute=f"{DRIVER}/nvlinkDomain")],
        [node_slice("nvlink-pairs")],
        [GPU_CLASS],
        "node-1",
    )
    assert not report.allocatable
    assert "no combination satisfies the constraints" in report.verdict
    notes = [d["note"] for d in devices_of(report)]
    assert all(n.startswith(f"fits on its own ({DRIVER}/nvlinkDomain=nvlink-") for n in notes)


def test_devices_lacking_the_constraint_attribute_do_not_fit() -> None:
    report = explain(
        [gpu_claim(count=2, match_attribute=f"{DRIVER}/nvlinkDomain")],
        [node_slice("pcie-l4x4")],
        [GPU_CLASS],
        "node-1",
    )
    assert not report.allocatable
    assert f"0 of 4 device(s) fit (4 lack {DRIVER}/nvlinkDomain (matchAttribute))" in report.verdict
    reasons = [d["reasons"] for d in devices_of(report)]
    assert all(
        r[0]["kind"] == "constraint" and "does not have this attribute" in r[0]["message"] for r in reasons
    )


def test_untolerated_taint() -> None:
    taint = {"key": "example.com/unhealthy", "value": "xid-79", "effect": "NoSchedule"}
    report = explain([gpu_claim()], [node_slice("pcie-l4x4", taint_first=taint)], [GPU_CLASS], "node-1")
    first, second = devices_of(report)[:2]
    assert first["status"] == "no"
    assert first["reasons"] == [
        {
            "kind": "taint",
            "message": "tainted example.com/unhealthy=xid-79:NoSchedule, not tolerated by request gpu",
            "taints": [taint],
        }
    ]
    assert second["status"] == "selected"


def test_already_allocated_devices_name_their_claim() -> None:
    slices = [node_slice("pcie-l4x4")]
    names = [d["name"] for d in slices[0]["spec"]["devices"]]
    in_use = {(DRIVER, "node-1", name): "team-a/training" for name in names}
    report = explain([gpu_claim()], slices, [GPU_CLASS], "node-1", in_use)
    assert not report.allocatable
    reason = devices_of(report)[0]["reasons"][0]
    assert reason == {
        "kind": "in-use",
        "message": "already allocated to claim team-a/training",
        "claim": "team-a/training",
    }
    assert "4 are in use" in report.verdict


def test_incomplete_pool_and_other_nodes_are_explained() -> None:
    partial = node_slice("pcie-l4x4")
    partial["spec"]["pool"]["resourceSliceCount"] = 2
    other = node_slice("dgx-h100", node="node-2")
    east = node_slice("dgx-h100", node="rack")
    del east["spec"]["nodeName"]
    east["spec"]["nodeSelector"] = {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["east"]}]}]
    }
    report = explain([gpu_claim()], [partial, other, east], [GPU_CLASS], "node-1")
    body = report_json(report)
    assert (
        body["pools"][0]["problem"]
        == f"pool {DRIVER}/node-1 is incomplete: 1 of 2 slices of generation 0 published"
    )
    assert body["slicesForOtherNodes"] == 1  # counted, not listed device by device
    kinds = {d["reasons"][0]["kind"] for d in devices_of(report)}
    assert kinds == {"pool", "wrong-node"}
    wrong = [d for d in devices_of(report) if d["reasons"][0]["kind"] == "wrong-node"]
    assert len(wrong) == 8
    assert (
        wrong[0]["reasons"][0]["message"]
        == f"slice rack-{DRIVER}-x1: its nodeSelector does not match node node-1"
    )


def test_first_available_marks_the_chosen_subrequest() -> None:
    claim = gpu_claim()
    claim["spec"]["devices"]["requests"] = [
        {
            "name": "gpu",
            "firstAvailable": [
                {
                    "name": "big",
                    "deviceClassName": DRIVER,
                    "selectors": [{"cel": {"expression": BIG_MEMORY}}],
                },
                {"name": "small", "deviceClassName": DRIVER},
            ],
        }
    ]
    body = report_json(explain([claim], [node_slice("pcie-l4x4")], [GPU_CLASS], "node-1"))
    requests = body["claims"][0]["requests"]
    assert [(r["request"], r["subrequest"]) for r in requests] == [
        ("gpu/big", "tried"),
        ("gpu/small", "chosen"),
    ]
    assert body["claims"][0]["allocation"]["devices"]["results"][0]["request"] == "gpu/small"


def test_json_shape() -> None:
    report = explain([gpu_claim()], [node_slice("pcie-l4x4")], [GPU_CLASS], "node-1")
    body = json.loads(render_json([report], ["default/gpus"]))
    assert set(body) == {"claims", "allocatable", "allocatableOn", "nodes"}
    assert body["allocatableOn"] == ["node-1"]
    node = body["nodes"][0]
    assert set(node) == {
        "node",
        "allocatable",
        "verdict",
        "failure",
        "pools",
        "ignoredSlices",
        "slicesForOtherNodes",
        "claims",
    }
    claim = node["claims"][0]
    assert set(claim) == {"claim", "allocatable", "allocation", "constraints", "requests"}
    request = claim["requests"][0]
    assert set(request) == {
        "request",
        "deviceClassName",
        "allocationMode",
        "count",
        "adminAccess",
        "selectors",
        "devices",
    }
    assert set(request["devices"][0]) == {"device", "status", "match", "reasons"}


# -- the command --------------------------------------------------------------------------------------------------


def explain_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the command in a fresh interpreter (through its run() until `accel-dra explain` is wired)."""
    code = (
        "import argparse, sys\n"
        "from driver.allocation.cli import add_explain_arguments, run\n"
        "parser = argparse.ArgumentParser(prog='accel-dra explain')\n"
        "add_explain_arguments(parser)\n"
        "sys.exit(run(parser.parse_args(sys.argv[1:])))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    slices = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [node_slice("pcie-l4x4"), node_slice("dgx-h100", "node-2")],
    }
    paths = {
        "slices": tmp_path / "slices.yaml",
        "class": tmp_path / "class.yaml",
        "big": tmp_path / "big.yaml",
        "small": tmp_path / "small.yaml",
    }
    paths["slices"].write_text(yaml.safe_dump(slices))
    paths["class"].write_text(yaml.safe_dump(GPU_CLASS))
    paths["big"].write_text(yaml.safe_dump(gpu_claim("big", selectors=(BIG_MEMORY,))))
    paths["small"].write_text(yaml.safe_dump(gpu_claim("small")))
    return paths


def test_cli_not_allocatable_exits_1_and_shows_why(files: dict[str, Path]) -> None:
    done = explain_cli(
        files["big"], "--slices", files["slices"], "--class", files["class"], "--node", "node-1"
    )
    assert done.returncode == 1, done.stderr
    assert "Node node-1: NOT ALLOCATABLE" in done.stdout
    assert "was false: memory=23034Mi" in done.stdout


def test_cli_tries_every_node_when_none_is_given(files: dict[str, Path]) -> None:
    done = explain_cli(files["big"], "--slices", files["slices"], "--class", files["class"], "-o", "json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["claims"] == ["default/big"]
    assert body["allocatableOn"] == ["node-2"]
    assert [n["node"] for n in body["nodes"]] == ["node-1", "node-2"]


def test_cli_template_and_in_use_claims_file(files: dict[str, Path], tmp_path: Path) -> None:
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "one-gpu", "namespace": "default"},
        "spec": {"spec": gpu_claim()["spec"]},
    }
    template_file = tmp_path / "template.yaml"
    template_file.write_text(yaml.safe_dump(template))
    names = [d["name"] for d in node_slice("pcie-l4x4")["spec"]["devices"]]
    holder = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "holder", "namespace": "team-a"},
        "spec": gpu_claim()["spec"],
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": "gpu", "driver": DRIVER, "pool": "node-1", "device": n} for n in names
                    ]
                }
            }
        },
    }
    others = tmp_path / "claims.yaml"
    others.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [holder]}))
    args = (template_file, "--slices", files["slices"], "--class", files["class"], "--node", "node-1")
    assert explain_cli(*args).returncode == 0
    done = explain_cli(*args, "--claims", others)
    assert done.returncode == 1
    assert "Claim default/one-gpu" in done.stdout
    assert "already allocated to claim team-a/holder" in done.stdout


def test_cli_multi_document_claims_with_classes_inline(files: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.yaml"
    bundle.write_text(yaml.safe_dump_all([GPU_CLASS, gpu_claim("a"), gpu_claim("b", count=3)]))
    done = explain_cli(bundle, "--slices", files["slices"], "--node", "node-1", "-o", "json")
    assert done.returncode == 0, done.stderr
    claims = json.loads(done.stdout)["nodes"][0]["claims"]
    devices = [[r["device"] for r in c["allocation"]["devices"]["results"]] for c in claims]
    assert len(devices[0]) == 1 and len(devices[1]) == 3
    assert not set(devices[0]) & set(devices[1])


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing-file", "No such file"),
        ("no-claim", "no ResourceClaim, ResourceClaimTemplate or Pod found"),
        ("bad-selector", "CEL compile error"),
        ("malformed", "exactly one of `exactly` or `firstAvailable` must be set"),
    ],
)
def test_cli_input_errors_exit_2(files: dict[str, Path], tmp_path: Path, setup: str, message: str) -> None:
    target = tmp_path / f"{setup}.yaml"
    if setup == "no-claim":
        target.write_text(yaml.safe_dump(GPU_CLASS))
    elif setup == "bad-selector":
        target.write_text(yaml.safe_dump(gpu_claim(selectors=("device.capacity[",))))
    elif setup == "malformed":
        broken = gpu_claim()
        del broken["spec"]["devices"]["requests"][0]["exactly"]
        target.write_text(yaml.safe_dump(broken))
    done = explain_cli(target, "--slices", files["slices"], "--class", files["class"], "--node", "node-1")
    assert done.returncode == 2
    assert message in done.stderr


def test_cli_summarises_many_nodes_and_details_on_request(files: dict[str, Path]) -> None:
    args = (files["big"], "--slices", files["slices"], "--class", files["class"])
    summary = explain_cli(*args)
    assert summary.returncode == 0, summary.stderr
    assert summary.stdout.splitlines()[:3] == [
        "Claims: default/big",
        "Nodes tried: 2",
        "Allocatable on 1 node(s): node-2",
    ]
    assert (
        f"  1 node(s)  claim default/big, request gpu: devices fail request gpu selector #0 `{BIG_MEMORY}`"
        "  (e.g. node-1)"
    ) in summary.stdout
    assert "selected" not in summary.stdout  # no per-device lines
    detailed = explain_cli(*args, "-v")
    assert "Node node-1: NOT ALLOCATABLE" in detailed.stdout and "Node node-2: ALLOCATABLE" in detailed.stdout
    assert "was false: memory=23034Mi" in detailed.stdout


def test_cli_reads_json_dumps_and_device_taint_rules(files: dict[str, Path], tmp_path: Path) -> None:
    dump = tmp_path / "slices.json"
    dump.write_text(json.dumps(yaml.safe_load(files["slices"].read_text()), indent=4))
    rule = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceTaintRule",
        "metadata": {"name": "drain-node-2"},
        "spec": {"deviceSelector": {"pool": "node-2"}, "taint": {"key": "drain", "effect": "NoExecute"}},
    }
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule))
    done = explain_cli(
        files["big"], "--slices", dump, "--class", files["class"], "--class", rules, "-o", "json"
    )
    assert done.returncode == 1, done.stderr
    node = json.loads(done.stdout)["nodes"][1]
    reason = node["claims"][0]["requests"][0]["devices"][0]["reasons"][0]
    assert reason["kind"] == "taint"
    assert (
        reason["message"]
        == "tainted drain:NoExecute (DeviceTaintRule drain-node-2), not tolerated by request gpu"
    )


def api_list(kind: str, objects: list[JSON]) -> JSON:
    """A list as the API server sends it (``GET /apis/...``): typed, and its items carry no kind."""
    items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in objects]
    return {"apiVersion": "resource.k8s.io/v1", "kind": f"{kind}List", "metadata": {}, "items": items}


def test_cli_reads_lists_straight_from_the_api(tmp_path: Path) -> None:
    slices, classes, claims = tmp_path / "slices.json", tmp_path / "classes.json", tmp_path / "claims.json"
    slices.write_text(json.dumps(api_list("ResourceSlice", [node_slice("pcie-l4x4")])))
    classes.write_text(json.dumps(api_list("DeviceClass", [GPU_CLASS])))
    claims.write_text(json.dumps(api_list("ResourceClaim", [gpu_claim("wanted", count=2)])))
    done = explain_cli(claims, "--slices", slices, "--class", classes, "-o", "json")
    assert done.returncode == 0, done.stderr
    assert "ignoring" not in done.stderr
    assert json.loads(done.stdout)["allocatableOn"] == ["node-1"]
