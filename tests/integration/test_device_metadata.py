"""Device metadata as its consumers see it: decoded by Kubernetes' own reader (k8s.io/dynamic-resource-
allocation/devicemetadata, through hack/draoracle) as a 1.36 consumer (v1alpha1, KubeVirt today) and a 1.37 one
(v1beta1), and read inside a sandbox container at the well-known path."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_asyncio
import yaml

from driver.devices.fake import load_named_profile
from driver.kube.client import RESOURCE_CLAIMS, RESOURCE_SLICES
from driver.resources.attributes import device_attributes
from driver.sim.sandbox import Sandbox, SandboxConfig
from driver.state.metadata import MetadataDevice, claim_metadata
from tests.support.chart import DEPLOY
from tests.support.jsonstream import documents

DRIVER = "gpu.accel-dra.dev"
API_V1BETA1 = "metadata.resource.k8s.io/v1beta1"
INVENTORY = load_named_profile("mig-a100", node_name="node-1").inventory
EXAMPLES = DEPLOY / "examples" / "gpu-test-metadata"
NAMESPACE = "gpu-test-metadata"
PATH = "/var/run/kubernetes.io/dra-device-attributes/resourceclaimtemplates/gpu/gpu/gpu.accel-dra.dev-metadata.json"


@pytest.mark.parametrize("consumer", ["v1alpha1", "v1beta1"])
def test_kubernetes_reads_and_validates_the_files(oracle: Any, consumer: str) -> None:
    devices = [MetadataDevice("gpus/mig", "node-1", d) for d in INVENTORY.devices]
    files = claim_metadata(
        driver=DRIVER,
        namespace="team-a",
        name="train-gpus-4x9t2",
        uid="5f0c6a8e-7c1b-4d0e-9a49-8d2b1f6e3c77",
        pod_claim_name="gpus",
        devices=devices,
        attributes=lambda d: device_attributes(d, INVENTORY, DRIVER),
    )
    stream = files[0].content.decode()
    newest, oldest = documents(stream)
    # A reader skips versions it does not know (a 1.36 one skips v1beta1): a stream led by a version newer
    # than any reader knows is read from the next document.
    future = json.dumps({**newest, "apiVersion": "metadata.resource.k8s.io/v2"}) + "\n" + stream
    streams = [
        ("stream", stream),
        ("v1alpha1 document", json.dumps(oldest)),
        ("a newer version first", future),
    ]
    answers = oracle(
        "metadata", {"files": [{"id": name, "content": text, "consumer": consumer} for name, text in streams]}
    )
    for answer in answers:
        assert not answer.get("error") and not answer.get("validation"), answer
    # A consumer takes the first version in the stream it knows: 1.37's reader knows v1beta1, the first.
    assert [a["from"] for a in answers] == [API_V1BETA1, "metadata.resource.k8s.io/v1alpha1", API_V1BETA1]
    assert answers[0]["decoded"] == answers[1]["decoded"] == answers[2]["decoded"], (
        "the versions say the same"
    )
    decoded = answers[0]["decoded"]
    assert decoded["podClaimName"] == "gpus"
    (request,) = decoded["requests"]
    assert request["name"] == "gpus/mig"
    assert [d["name"] for d in request["devices"]] == [d.name for d in INVENTORY.devices]
    first = request["devices"][0]
    assert (first["driver"], first["pool"]) == (DRIVER, "node-1")
    assert first["attributes"]["uuid"] == {"string": INVENTORY.devices[0].uuid}
    assert first["attributes"]["resource.kubernetes.io/pciBusID"] == {"string": "0000:07:00.0"}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sandbox() -> Any:
    async with Sandbox(SandboxConfig(profile="pcie-l4x4", exporter=False)) as box:
        yield box


@pytest.mark.asyncio(loop_scope="module")
async def test_a_container_reads_its_requests_metadata(sandbox: Sandbox) -> None:
    """The gpu-test-metadata example, its container left to finish once it printed the files."""
    objects = [d for d in yaml.safe_load_all((EXAMPLES / "gpu-test-metadata.yaml").read_text()) if d]
    (pod,) = [o for o in objects if o["kind"] == "Pod"]
    (container,) = pod["spec"]["containers"]
    container["args"] = [container["args"][0].replace("; sleep 3600", "")]
    assert "sleep" not in container["args"][0]
    await sandbox.apply(objects)
    await sandbox.wait_pod(NAMESPACE, "pod", ["Succeeded"])
    text = sandbox.pod_log(NAMESPACE, "pod", "ctr")
    lines = text.strip().splitlines()
    assert (lines[0], lines[-1]) == (f"== {PATH}", "== end"), text
    docs = documents("\n".join(lines[1:-1]))
    assert [d["apiVersion"] for d in docs] == [API_V1BETA1, "metadata.resource.k8s.io/v1alpha1"]
    first = docs[0]
    assert first["podClaimName"] == "gpu"
    (device,) = first["requests"][0]["devices"]
    (claim,) = sandbox.apiserver.objects(RESOURCE_CLAIMS, NAMESPACE)
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert (device["driver"], device["pool"], device["name"]) == (DRIVER, result["pool"], result["device"])
    assert first["metadata"]["uid"] == claim["metadata"]["uid"]
    published = {
        d["name"]: d["attributes"]
        for s in sandbox.apiserver.objects(RESOURCE_SLICES)
        for d in s["spec"]["devices"]
    }
    assert device["attributes"] == published[result["device"]]
