"""The plugin on a real cluster as the chart deploys it: registration, its slices, the admission policy and
the permissions of its ServiceAccount."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from driver.devices.fake import named_profiles
from driver.kube.client import NODES, RESOURCE_SLICES, KubeClient
from driver.resources.cli import discovered_slices
from tests.support import chart, rbac
from tests.support.realk8s import ROOT, Cluster, foreign_sockets
from tests.support.realk8s_driver import (
    DRIVER,
    NAMESPACE,
    PROFILES,
    SERVICE_ACCOUNT,
    SERVICE_ACCOUNT_GROUPS,
    Answer,
    Driver,
    mig_mode,
    send,
    subject_access,
)

pytestmark = pytest.mark.realk8s

DRY_RUN = (("dryRun", "All"),)


@pytest.fixture
async def as_plugin(accel_dra: Driver) -> AsyncIterator[KubeClient]:
    """The API as node-1's plugin sees it: the chart's ServiceAccount with a token bound to node-1."""
    async with await KubeClient.connect(str(accel_dra.kubeconfigs["node-1"])) as kube:
        yield kube


def kubelet_metric(cluster: Cluster, node: str, name: str) -> list[tuple[dict[str, str], float]]:
    with cluster.admin_open(f"/api/v1/nodes/{node}/proxy/metrics") as response:
        text = response.read().decode()
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


@pytest.mark.parametrize("node", ["node-1", "node-2"])
def test_the_kubelet_registers_the_plugin(realk8s: Cluster, accel_dra: Driver, node: str) -> None:
    socket = str(realk8s.nodes[node].registry_dir / f"{DRIVER}-reg.sock")
    plugins = kubelet_metric(realk8s, node, "plugin_manager_total_plugins")
    assert ({"socket_path": socket, "state": "actual_state_of_world"}, 1.0) in plugins


@pytest.mark.parametrize("node", ["node-1", "node-2"])
async def test_the_plugin_publishes_its_nodes_gpus(admin: KubeClient, accel_dra: Driver, node: str) -> None:
    listed = await admin.list(RESOURCE_SLICES, field_selector=f"spec.nodeName={node}")
    slices = [s for s in listed["items"] if s["spec"]["driver"] == DRIVER]
    expected = discovered_slices(f"fake:{PROFILES[node]}", DRIVER, node, mig_mode=mig_mode(node))
    assert sorted(d["name"] for s in slices for d in s["spec"].get("devices") or []) == sorted(
        d["name"] for s in expected for d in s["spec"].get("devices") or []
    )
    assert [c for s in slices for c in s["spec"].get("sharedCounters") or []] == [
        c for s in expected for c in s["spec"].get("sharedCounters") or []
    ]
    node_uid = (await admin.get(NODES, node))["metadata"]["uid"]
    for item in slices:
        assert item["spec"]["pool"]["name"] == node
        (owner,) = item["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("Node", node, node_uid)


PROFILE_NAMES = named_profiles()
#: Every GPU in dynamic MIG mode: partitionable devices (counter slices, consumesCounters) where it can be.
PUBLICATIONS = [(profile, "static") for profile in PROFILE_NAMES] + [
    (profile, "dynamic") for profile in ("mig-dynamic", "mig-a100", "dgx-h100-mig")
]


@pytest.mark.parametrize(("profile", "mode"), PUBLICATIONS)
async def test_the_slices_of_every_fake_profile_are_accepted_without_warnings(
    as_plugin: KubeClient, profile: str, mode: str
) -> None:
    """What ``accel-dra discover`` says the plugin would publish, sent as node-1's plugin (dry run: the
    API server validates, defaults and admits without storing)."""
    items = discovered_slices(f"fake:{profile}", DRIVER, "node-1", mig_mode=mode)
    if mode == "dynamic":
        assert any(i["spec"].get("sharedCounters") for i in items)
    for item in items:
        answer = await send(as_plugin, "POST", RESOURCE_SLICES.path(), item, params=DRY_RUN)
        assert answer.status == 201, answer.body
        assert answer.warnings == []
        for field in ("devices", "sharedCounters"):
            assert answer.body["spec"].get(field) == item["spec"].get(field), f"the server changed {field}"


def foreign_slice(node: str) -> dict[str, Any]:
    item = discovered_slices("fake:pcie-l4x4", DRIVER, node)[0]
    item["spec"]["pool"]["name"] = f"{node}-foreign"
    return item


async def create_until_refused(kube: KubeClient, body: dict[str, Any], timeout: float = 30) -> Answer:
    """A dry-run create, repeated while it succeeds: a new admission policy takes effect moments after it
    is created, once the API server's policy informer has it."""
    async with asyncio.timeout(timeout):
        while True:
            answer = await send(kube, "POST", RESOURCE_SLICES.path(), body, params=DRY_RUN)
            if answer.status != 201:
                return answer
            await asyncio.sleep(0.2)


async def test_the_admission_policy_refuses_a_slice_of_another_node(as_plugin: KubeClient) -> None:
    answer = await create_until_refused(as_plugin, foreign_slice("node-2"))
    assert answer.status == 403, answer.body
    assert "may write ResourceSlices only of node node-1, not of node node-2" in answer.body["message"]
    # The same slice for its own node passes: the policy, not RBAC, refused it.
    assert (
        await send(as_plugin, "POST", RESOURCE_SLICES.path(), foreign_slice("node-1"), params=DRY_RUN)
    ).status == 201


@pytest.mark.usefixtures("accel_dra")
async def test_a_token_bound_to_no_node_cannot_write_slices(realk8s: Cluster, admin: KubeClient) -> None:
    answer = await admin.request(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{chart.RELEASE}/token",
        body={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
        },
    )
    path = realk8s.write_kubeconfig(
        realk8s.dir / "unbound.kubeconfig", "unbound", token=answer["status"]["token"]
    )
    async with await KubeClient.connect(str(path)) as unbound:
        refused = await create_until_refused(unbound, foreign_slice("node-1"))
    assert refused.status == 403, refused.body
    assert "only with a token bound to a node" in refused.body["message"]


async def test_the_service_account_may_do_what_the_plugin_does_and_no_more(
    admin: KubeClient, accel_dra: Driver
) -> None:
    """Every call of the plugin's code is allowed by the rendered chart on the real authorizer; a few
    neighbours of those calls are not."""
    for permission in sorted(rbac.component_permissions()["plugin"]):
        resource, _, subresource = permission.resource.partition("/")
        attributes = {"group": permission.group, "resource": resource, "verb": permission.verb}
        if subresource:
            attributes["subresource"] = subresource
        if permission.name:
            attributes["name"] = permission.name
        allowed, why = await subject_access(admin, SERVICE_ACCOUNT, SERVICE_ACCOUNT_GROUPS, attributes)
        assert allowed, f"{permission}: {why}"
    for group, resource, subresource, verb in [
        ("resource.k8s.io", "resourceclaims", "", "patch"),
        ("resource.k8s.io", "resourceclaims", "", "list"),
        ("", "secrets", "", "get"),
        ("", "pods", "", "create"),
        ("", "nodes", "", "patch"),
        ("resource.k8s.io", "deviceclasses", "", "create"),
    ]:
        attributes = {"group": group, "resource": resource, "subresource": subresource, "verb": verb}
        allowed, _ = await subject_access(admin, SERVICE_ACCOUNT, SERVICE_ACCOUNT_GROUPS, attributes)
        assert not allowed, f"{group or 'core'}/{resource}:{verb} is allowed"


async def test_the_service_account_may_write_device_status_for_its_driver_only(
    admin: KubeClient, accel_dra: Driver
) -> None:
    """Since 1.36 (DRAResourceClaimGranularStatusAuthorization) writing a claim's ``status.devices`` also
    needs ``resourceclaims/driver`` with ``associated-node:*`` on the driver's name."""
    for verb in ("associated-node:patch", "associated-node:update"):
        for name, expected in ((DRIVER, True), ("other.example.com", False)):
            attributes = {"group": "resource.k8s.io", "resource": "resourceclaims", "subresource": "driver"}
            attributes |= {"verb": verb, "name": name}
            allowed, why = await subject_access(admin, SERVICE_ACCOUNT, SERVICE_ACCOUNT_GROUPS, attributes)
            assert allowed == expected, f"{verb} on {name}: {why}"


# -- docs/troubleshooting.md ------------------------------------------------------------------------------------

TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"


def can_i_commands() -> list[list[str]]:
    text = TROUBLESHOOTING.read_text()
    service_account = re.search(r"^SA=(\S+)$", text, re.MULTILINE)
    assert service_account and service_account.group(1) == SERVICE_ACCOUNT
    lines = [line for line in text.splitlines() if line.startswith("kubectl auth can-i ")]
    assert lines, "docs/troubleshooting.md shows no `kubectl auth can-i` command"
    return [
        shlex.split(line.replace("$SA", SERVICE_ACCOUNT).replace("NAMESPACE", "default")) for line in lines
    ]


async def review_attributes(kube: KubeClient, argv: list[str]) -> tuple[str, dict[str, str]]:
    """The user and SubjectAccessReview attributes of ``kubectl auth can-i VERB TYPE[/NAME] [flags]``, read
    the way kubectl reads them: ``TYPE/NAME`` names an object, the subresource comes from --subresource."""
    verb, target, *flags = argv[3:]
    options = dict(
        f.removeprefix("--").split("=", 1) if "=" in f else (f, "") for f in flags if f.startswith("--")
    )
    if "-n" in flags:
        options["namespace"] = flags[flags.index("-n") + 1]
    type_name, _, name = target.partition("/")
    plural, _, group = type_name.partition(".")
    if not group:
        group = await group_of(kube, plural)
    attributes = {"verb": verb, "group": group, "resource": plural, "name": name}
    attributes |= {"subresource": options.get("subresource", ""), "namespace": options.get("namespace", "")}
    return options["as"], attributes


async def group_of(kube: KubeClient, plural: str) -> str:
    """The API group serving ``plural`` (what kubectl's discovery finds for a bare resource name)."""
    groups = (await kube.request("GET", "/apis"))["groups"]
    paths = ["/api/v1", *(f"/apis/{g['preferredVersion']['groupVersion']}" for g in groups)]
    for path in paths:
        if any(r["name"] == plural for r in (await kube.request("GET", path))["resources"]):
            return path.removeprefix("/apis/").rpartition("/")[0] if path != "/api/v1" else ""
    raise AssertionError(f"no API group serves {plural}")


async def test_the_troubleshooting_permission_checks_answer_yes(admin: KubeClient, accel_dra: Driver) -> None:
    for argv in can_i_commands():
        user, attributes = await review_attributes(admin, argv)
        assert user == SERVICE_ACCOUNT
        allowed, why = await subject_access(admin, user, SERVICE_ACCOUNT_GROUPS, attributes)
        assert allowed, f"`{shlex.join(argv)}` answers no ({attributes}): {why}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_troubleshooting_permission_checks_answer_yes_in_kubectl(
    realk8s: Cluster, accel_dra: Driver
) -> None:
    for argv in can_i_commands():
        result = subprocess.run(
            [*argv, f"--kubeconfig={realk8s.kubeconfig}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.stdout.strip() == "yes", f"`{shlex.join(argv)}`: {result.stdout}{result.stderr}"


def test_the_plugin_is_not_told_about_anything_it_cannot_do(accel_dra: Driver) -> None:
    """No 403/422 from the API server in the plugins' logs so far."""
    for node, component in accel_dra.plugins.items():
        assert not re.search(r"\b(403|422)\b", component.output()), f"plugin on {node}:\n{component.tail()}"


def test_the_plugins_talk_over_loopback_only(realk8s: Cluster, accel_dra: Driver) -> None:
    pids = [c.pid for c in [*realk8s.components.values(), *accel_dra.plugins.values()] if c.pid is not None]
    assert len(pids) == len(realk8s.components) + len(accel_dra.plugins), "a process is not running"
    assert foreign_sockets(pids) == []
