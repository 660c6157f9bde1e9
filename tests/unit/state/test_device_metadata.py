"""Device metadata files (KEP-5304): their content and paths, and the preparer writing, mounting and removing
them with a claim's CDI spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from driver.devices.fake import load_named_profile
from driver.resources.attributes import device_attributes
from driver.state.api import ClaimRef
from driver.state.cdi import CdiStore
from driver.state.metadata import (
    API_VERSIONS,
    ClaimMetadataWriter,
    MetadataDevice,
    MetadataStore,
    claim_metadata,
    container_path,
)
from driver.state.prepare import NodePreparer
from tests.support.cdi_rules import assert_valid_cdi
from tests.support.jsonstream import documents
from tests.support.preparers import node_preparer

DRIVER = "gpu.accel-dra.dev"
INVENTORY = load_named_profile("mig-a100", node_name="node-1").inventory
SMALL, SMALL2, MEDIUM, LARGE = (d.name for d in INVENTORY.devices)
JSON = dict[str, Any]


def attributes(device: Any) -> dict[str, Any]:
    return device_attributes(device, INVENTORY, DRIVER)


def test_paths_follow_the_kubernetes_layout() -> None:
    assert container_path(DRIVER, "shared", None, "gpu") == (
        "/var/run/kubernetes.io/dra-device-attributes/resourceclaims/shared/gpu/gpu.accel-dra.dev-metadata.json"
    )
    assert container_path(DRIVER, "pod-gpu-x7k2", "gpu", "gpu") == (
        "/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/gpu/gpu/"
        "gpu.accel-dra.dev-metadata.json"
    )


def test_one_file_per_request_with_every_version_newest_first() -> None:
    devices = [
        MetadataDevice("mig/small", "node-1", INVENTORY.device(SMALL)),  # type: ignore[arg-type]
        MetadataDevice("mig/small", "node-1", INVENTORY.device(SMALL2)),  # type: ignore[arg-type]
        MetadataDevice("big", "node-1", INVENTORY.device(LARGE)),  # type: ignore[arg-type]
    ]
    files = claim_metadata(
        driver=DRIVER,
        namespace="ns",
        name="c",
        uid="uid-1",
        pod_claim_name="gpus",
        devices=devices,
        attributes=attributes,
    )
    assert [(f.request, f.container_path.split("/")[-2]) for f in files] == [
        ("mig", "mig"),
        ("big", "big"),
    ]
    docs = documents(files[0].content)
    assert [d["apiVersion"] for d in docs] == list(API_VERSIONS)
    assert docs[0] == {
        "kind": "DeviceMetadata",
        "apiVersion": "metadata.resource.k8s.io/v1beta1",
        "metadata": {"name": "c", "namespace": "ns", "uid": "uid-1", "generation": 1},
        "podClaimName": "gpus",
        "requests": [
            {
                "name": "mig/small",  # the full request name, as in the allocation result
                "devices": [
                    {
                        "driver": DRIVER,
                        "pool": "node-1",
                        "name": SMALL,
                        "attributes": attributes(INVENTORY.device(SMALL)),
                    },
                    {
                        "driver": DRIVER,
                        "pool": "node-1",
                        "name": SMALL2,
                        "attributes": attributes(INVENTORY.device(SMALL2)),
                    },
                ],
            }
        ],
    }
    assert {k: v for k, v in docs[1].items() if k != "apiVersion"} == {
        k: v for k, v in docs[0].items() if k != "apiVersion"
    }
    assert docs[0]["requests"][0]["devices"][0]["attributes"]["profile"] == {"string": "1g.5gb"}


def claim(uid: str, *results: tuple[str, str], template: str | None = None) -> JSON:
    meta: JSON = {"name": f"claim-{uid}", "namespace": "default", "uid": uid}
    if template:
        meta["annotations"] = {"resource.kubernetes.io/pod-claim-name": template}
    return {
        "metadata": meta,
        "spec": {"devices": {}},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": r, "driver": DRIVER, "pool": "node-1", "device": d} for r, d in results
                    ]
                }
            }
        },
    }


def preparer(root: Path, *, enabled: bool = True) -> NodePreparer:
    metadata = ClaimMetadataWriter(MetadataStore(root / "plugin"), attributes, enabled=enabled)
    return node_preparer(root, INVENTORY, metadata=metadata)


def spec_of(root: Path, uid: str) -> JSON:
    data: JSON = json.loads(CdiStore(root / "cdi", DRIVER).path(uid).read_text())
    return data


def mounts(spec: JSON) -> dict[str, list[tuple[str, str]]]:
    return {
        d["name"].split("-", 1)[1]: [
            (m["hostPath"], m["containerPath"]) for m in d["containerEdits"].get("mounts", [])
        ]
        for d in spec["devices"]
    }


def test_prepare_writes_the_files_and_mounts_each_once_per_request(tmp_path: Path) -> None:
    node = preparer(tmp_path)
    node.recover()
    results, _ = node.prepare_sync(
        [claim("u1", ("small", SMALL), ("small", SMALL2), ("big", LARGE), template="gpus")]
    )
    assert not results["u1"].error
    spec = spec_of(tmp_path, "u1")
    assert_valid_cdi(spec)
    base = tmp_path / "plugin" / "dra-device-metadata" / "u1"
    where = "/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/gpus"
    assert mounts(spec) == {
        SMALL: [(str(base / "small" / "metadata.json"), f"{where}/small/{DRIVER}-metadata.json")],
        SMALL2: [],
        LARGE: [(str(base / "big" / "metadata.json"), f"{where}/big/{DRIVER}-metadata.json")],
    }
    small = documents((base / "small" / "metadata.json").read_bytes())[0]
    assert [d["name"] for d in small["requests"][0]["devices"]] == [SMALL, SMALL2]
    assert (base / "small" / "metadata.json").stat().st_mode & 0o777 == 0o644

    # A repeated prepare puts back files that went missing; unprepare removes them with the spec.
    (base / "big" / "metadata.json").unlink()
    assert not node.prepare_sync([claim("u1", ("small", SMALL), ("small", SMALL2), ("big", LARGE))])[0][
        "u1"
    ].error
    assert (base / "big" / "metadata.json").is_file()
    assert node.unprepare_sync([ClaimRef("default", "u1", "claim-u1")]) == {"u1": ""}
    assert not base.exists() and not CdiStore(tmp_path / "cdi", DRIVER).exists("u1")


def test_a_restart_removes_the_files_of_claims_no_longer_prepared(tmp_path: Path) -> None:
    node = preparer(tmp_path)
    node.recover()
    assert not node.prepare_sync([claim("u1", ("gpu", MEDIUM))])[0]["u1"].error
    orphan = tmp_path / "plugin" / "dra-device-metadata" / "u9" / "gpu"
    orphan.mkdir(parents=True)
    (orphan / "metadata.json").write_text("{}")
    preparer(tmp_path).recover()
    assert sorted(p.name for p in (tmp_path / "plugin" / "dra-device-metadata").iterdir()) == ["u1"]


@pytest.mark.parametrize("pod_claim", [None, "gpu"])
def test_the_mount_targets_the_claim_or_template_path(tmp_path: Path, pod_claim: str | None) -> None:
    node = preparer(tmp_path)
    node.recover()
    assert not node.prepare_sync([claim("u1", ("gpu", MEDIUM), template=pod_claim)])[0]["u1"].error
    ((_, target),) = mounts(spec_of(tmp_path, "u1"))[MEDIUM]
    kind = "resourceclaimtemplates/gpu" if pod_claim else "resourceclaims/claim-u1"
    assert target == f"/var/run/kubernetes.io/dra-device-attributes/{kind}/gpu/{DRIVER}-metadata.json"


def test_switched_off_nothing_is_written_but_earlier_files_are_removed(tmp_path: Path) -> None:
    on = preparer(tmp_path)
    on.recover()
    assert not on.prepare_sync([claim("u1", ("gpu", MEDIUM))])[0]["u1"].error
    off = preparer(tmp_path, enabled=False)
    off.recover()
    assert not off.prepare_sync([claim("u2", ("gpu", LARGE))])[0]["u2"].error
    assert mounts(spec_of(tmp_path, "u2")) == {LARGE: []}
    directory = tmp_path / "plugin" / "dra-device-metadata"
    assert [p.name for p in directory.iterdir()] == ["u1"]
    assert off.unprepare_sync([ClaimRef("default", "u1", "claim-u1")]) == {"u1": ""}
    assert list(directory.iterdir()) == []
