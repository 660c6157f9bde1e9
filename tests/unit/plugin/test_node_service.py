"""Prepare/unprepare rules around the preparer, without sockets (see the integration tests for the wire)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from driver.devices.fake import load_named_profile
from driver.kube.client import ApiError
from driver.plugin.node_service import ClaimCheckError, NodeService
from driver.state.api import Claim, ClaimRef, PreparedDevice, PrepareResult, allocation_results
from driver.state.lock import NodeLock
from driver.state.prepare import NodePreparer
from tests.support.preparers import node_preparer

DRIVER = "gpu.accel-dra.dev"
# Device names of the fake:pcie-l4x4 profile (named after their PCI addresses).
GPU0, GPU1, GPU2 = "gpu-0000-01-00-0", "gpu-0000-41-00-0", "gpu-0000-81-00-0"


def claim(
    uid: str, name: str, results: list[dict[str, Any]] | None, namespace: str = "default"
) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": name, "namespace": namespace, "uid": uid}, "status": {}}
    if results is not None:
        body["status"]["allocation"] = {"devices": {"results": results}}
    return body


def result(request: str, device: str, driver: str = DRIVER, **extra: Any) -> dict[str, Any]:
    return {"request": request, "driver": driver, "pool": "node-1", "device": device, **extra}


class Claims:
    def __init__(self, *claims: dict[str, Any]) -> None:
        self.by_name = {(c["metadata"]["namespace"], c["metadata"]["name"]): c for c in claims}
        self.gets: list[tuple[str, str]] = []

    async def get_claim(self, namespace: str, name: str) -> Claim:
        self.gets.append((namespace, name))
        try:
            return self.by_name[(namespace, name)]
        except KeyError:
            raise ApiError(404, "NotFound", f'resourceclaims.resource.k8s.io "{name}" not found') from None


def ref(c: dict[str, Any]) -> ClaimRef:
    m = c["metadata"]
    return ClaimRef(m["namespace"], m["uid"], m["name"])


@pytest.fixture
def lock(tmp_path: Path) -> NodeLock:
    return NodeLock(tmp_path / "serialize.lock")


@pytest.fixture
def preparer(tmp_path: Path, lock: NodeLock) -> NodePreparer:
    """The real node-state preparer on a simulated node, writing into ``tmp_path``."""
    return node_preparer(tmp_path, load_named_profile("pcie-l4x4", node_name="node-1").inventory, lock=lock)


async def test_prepare_returns_one_entry_per_claim_with_base_request_names(
    lock: NodeLock, preparer: NodePreparer
) -> None:
    a = claim("uid-a", "a", [result("gpu/sub-1", GPU0), result("gpu", GPU1, shareID="s1")])
    b = claim("uid-b", "b", [result("other", "nic-0", driver="net.example.com"), result("x", GPU2)])
    node = NodeService(Claims(a, b), preparer, lock, DRIVER)
    out = await node.prepare([ref(a), ref(b)])
    assert set(out) == {"uid-a", "uid-b"}
    assert [d.request_names for d in out["uid-a"].devices] == [("gpu",), ("gpu",)]
    assert [d.share_id for d in out["uid-a"].devices] == [None, "s1"]
    # The other driver's result is ignored.
    assert [d.device_name for d in out["uid-b"].devices] == [GPU2]


async def test_empty_request_is_an_empty_answer_without_api_calls(
    lock: NodeLock, preparer: NodePreparer
) -> None:
    claims = Claims()
    node = NodeService(claims, preparer, lock, DRIVER)
    assert await node.prepare([]) == {}
    assert await node.unprepare([]) == {}
    assert claims.gets == []


@pytest.mark.parametrize(
    ("stored", "asked", "message"),
    [
        (None, ClaimRef("default", "uid-a", "a"), r"get ResourceClaim default/a: 404"),
        (
            claim("uid-a", "a", None),
            ClaimRef("default", "uid-a", "a"),
            r"default/a \(uid-a\) is not allocated",
        ),
        (
            claim("uid-new", "a", []),
            ClaimRef("default", "uid-a", "a"),
            r"default/a got replaced: UID is uid-new",
        ),
    ],
)
async def test_claim_checks_fail_the_whole_call(
    preparer: NodePreparer,
    tmp_path: Path,
    stored: dict[str, Any] | None,
    asked: ClaimRef,
    message: str,
) -> None:
    good = claim("uid-g", "g", [result("gpu", GPU0)])
    node = NodeService(Claims(*([stored] if stored else []), good), preparer, preparer.lock, DRIVER)
    with pytest.raises(ClaimCheckError, match=message):
        await node.prepare([ref(good), asked])
    # No claim may be prepared when any check fails: nothing was recorded, no CDI spec written.
    assert not (tmp_path / "plugin" / "checkpoint.json").exists()
    assert not (tmp_path / "cdi").exists() or not list((tmp_path / "cdi").iterdir())


class ForgetfulPreparer:
    """A preparer that answers for the first claim only, with an error."""

    async def prepare(self, claims: Sequence[Claim]) -> dict[str, PrepareResult]:
        first = claims[0]["metadata"]["uid"]
        return {first: PrepareResult(error="device gpu-9 does not exist")}

    async def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, str]:
        return {}


async def test_missing_and_failed_entries_become_per_claim_errors(lock: NodeLock) -> None:
    a = claim("uid-a", "a", [result("gpu", "gpu-9")])
    b = claim("uid-b", "b", [result("gpu", GPU1)])
    node = NodeService(Claims(a, b), ForgetfulPreparer(), lock, DRIVER)
    out = await node.prepare([ref(a), ref(b)])
    assert out["uid-a"].error == "device gpu-9 does not exist"
    assert "no prepare result for claim default/b (uid-b)" in out["uid-b"].error
    errors = await node.unprepare([ref(a)])
    assert "no unprepare result for claim default/a (uid-a)" in errors["uid-a"]


async def test_unprepare_of_unknown_claim_succeeds_without_api_calls(
    lock: NodeLock, preparer: NodePreparer
) -> None:
    claims = Claims()
    node = NodeService(claims, preparer, lock, DRIVER)
    assert await node.unprepare([ClaimRef("default", "never-seen", "x")]) == {"never-seen": ""}
    assert claims.gets == []


def test_allocation_results_keep_admin_access_and_share_id() -> None:
    c = claim(
        "u", "c", [result("gpu/a", "gpu-0", adminAccess=True, shareID="abc"), result("n", "x", driver="o")]
    )
    (only,) = allocation_results(c, DRIVER)
    assert (only.base_request, only.admin_access, only.share_id) == ("gpu", True, "abc")


def test_prepared_device_is_immutable() -> None:
    device = PreparedDevice(("gpu",), "pool", "gpu-0", ("k8s.x/gpu=a",))
    with pytest.raises(AttributeError):
        device.pool_name = "other"  # type: ignore[misc]


HOSTILE_REFS = [
    ClaimRef("default", "a\x00b", "c"),  # "embedded null byte" in a file name
    ClaimRef("default", "u" * 300, "c"),  # "File name too long"
    ClaimRef("default", "../../etc/x", "c"),
    ClaimRef("default", "", "c"),
    ClaimRef("Not_A_Namespace", "uid-x", "c"),
    ClaimRef("default", "uid-y", "n" * 10_000),
    ClaimRef("default", "uid-z\n", "c"),  # '$' in a pattern also matches before a trailing newline
    ClaimRef("default\n", "uid-w", "c"),
    ClaimRef("default", "uid-v", "c\n"),
]
IDS = ["nul", "long-uid", "path", "empty-uid", "ns", "long-name", "uid-newline", "ns-newline", "name-newline"]


@pytest.mark.parametrize("bad", HOSTILE_REFS, ids=IDS)
async def test_unprepare_of_a_claim_that_cannot_exist_succeeds_untouched(
    lock: NodeLock, preparer: NodePreparer, tmp_path: Path, bad: ClaimRef
) -> None:
    good = claim("uid-g", "g", [result("gpu", GPU0)])
    node = NodeService(Claims(good), preparer, lock, DRIVER)
    await node.prepare([ref(good)])
    assert await node.unprepare([bad, ref(good)]) == {bad.uid: "", "uid-g": ""}
    assert not list((tmp_path / "cdi").iterdir())


@pytest.mark.parametrize("bad", HOSTILE_REFS, ids=IDS)
async def test_prepare_of_a_claim_that_cannot_exist_fails_alone_with_a_short_error(
    lock: NodeLock, preparer: NodePreparer, bad: ClaimRef
) -> None:
    good = claim("uid-g", "g", [result("gpu", GPU0)])
    claims = Claims(good)
    node = NodeService(claims, preparer, lock, DRIVER)
    out = await node.prepare([bad, ref(good)])
    assert out["uid-g"].error == ""
    error = out[bad.uid].error
    assert error.startswith("claim "), error
    assert len(error.encode()) < 600, "error messages must stay far below gRPC's 8 KiB status limit"
    assert claims.gets == [("default", "g")], "a reference that cannot be a claim is not fetched"


class Unreachable:
    async def get_claim(self, namespace: str, name: str) -> Claim:
        raise OSError(111, "Connection refused")


async def test_an_unreachable_api_server_fails_prepare_naming_the_claim(
    lock: NodeLock, preparer: NodePreparer
) -> None:
    node = NodeService(Unreachable(), preparer, lock, DRIVER)
    with pytest.raises(ClaimCheckError, match=r"get ResourceClaim default/a: API server unreachable"):
        await node.prepare([ClaimRef("default", "uid-a", "a")])
