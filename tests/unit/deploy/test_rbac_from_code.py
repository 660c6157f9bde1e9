"""The static scan that derives each component's RBAC from its KubeClient calls (tests/support/rbac.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.support.rbac import Permission, ScanError, permissions_of_rules, rules_of, scan

HEADER = "from driver.kube.client import NODES, PODS, RESOURCE_CLAIMS, RESOURCE_SLICES\n"


def scan_source(tmp_path: Path, *sources: str) -> set[Permission]:
    package = tmp_path / "pkg"
    package.mkdir()
    for i, source in enumerate(sources):
        (package / f"m{i}.py").write_text(HEADER + textwrap.dedent(source))
    return scan(["pkg"], root=tmp_path)


def test_direct_calls_map_to_group_resource_and_verb(tmp_path: Path) -> None:
    found = scan_source(
        tmp_path,
        """
        async def f(kube, other):
            await kube.get(NODES, "n")
            await other.delete_collection(RESOURCE_SLICES)   # any receiver, when the type is a constant
            async for _ in kube.watch(PODS, "ns"):
                pass
            {}.get("x")                                      # not an API call
        """,
    )
    assert found == {
        Permission("", "nodes", "get"),
        Permission("resource.k8s.io", "resourceslices", "deletecollection"),
        Permission("", "pods", "watch"),
    }


def test_subresource_by_keyword_and_by_position(tmp_path: Path) -> None:
    found = scan_source(
        tmp_path,
        """
        class W:
            async def write(self, claim):
                await self._kube.patch(RESOURCE_CLAIMS, "c", {}, "ns", subresource="status")
                await self._kube.update(RESOURCE_CLAIMS, claim, "ns", "status")
        """,
    )
    assert found == {
        Permission("resource.k8s.io", "resourceclaims/status", "patch"),
        Permission("resource.k8s.io", "resourceclaims/status", "update"),
    }


def test_a_type_stored_by_a_constructor_is_resolved_at_every_construction(tmp_path: Path) -> None:
    found = scan_source(
        tmp_path,
        """
        class ListWatch:
            def __init__(self, kube, rt, selector=None):
                self._kube = kube
                self._rt = rt

            async def run(self):
                await self._kube.list(self._rt, field_selector="x")
                async for _ in self._kube.watch(self._rt):
                    pass
        """,
        """
        def pods(kube):
            return ListWatch(kube, PODS)

        def slices(kube):
            return ListWatch(kube, rt=RESOURCE_SLICES)
        """,
    )
    assert found == {
        Permission("", "pods", "list"),
        Permission("", "pods", "watch"),
        Permission("resource.k8s.io", "resourceslices", "list"),
        Permission("resource.k8s.io", "resourceslices", "watch"),
    }


def test_a_type_passed_as_a_function_parameter_is_resolved_at_the_call_sites(tmp_path: Path) -> None:
    found = scan_source(
        tmp_path,
        """
        async def fetch(kube, rt, name):
            return await kube.get(rt, name)

        async def use(kube):
            await fetch(kube, NODES, "n")
        """,
    )
    assert found == {Permission("", "nodes", "get")}


def test_raw_requests_through_type_path(tmp_path: Path) -> None:
    found = scan_source(
        tmp_path,
        """
        async def f(kube):
            await kube.request_text("GET", PODS.path("ns", "p", "log"))
            await kube.request("GET", RESOURCE_SLICES.path())
            await kube.request("DELETE", RESOURCE_SLICES.path(None, "s"))
        """,
    )
    assert found == {
        Permission("", "pods/log", "get"),
        Permission("resource.k8s.io", "resourceslices", "list"),
        Permission("resource.k8s.io", "resourceslices", "delete"),
    }


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "async def f(kube, table):\n    await kube.get(table['rt'], 'n')\n",
            "cannot tell which resource type",
        ),
        (
            "async def f(kube, sub):\n    await kube.patch(NODES, 'n', {}, subresource=sub)\n",
            "is not a literal",
        ),
        ("async def f(kube, path):\n    await kube.request('GET', path)\n", "needs a literal method"),
        ("async def f(kube, rt):\n    await kube.get(rt, 'n')\n", "no call of f passes a resource type"),
    ],
)
def test_a_call_that_cannot_be_resolved_is_an_error(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(ScanError, match=message):
        scan_source(tmp_path, source)


def test_rules_round_trip() -> None:
    perms = {
        Permission("", "nodes", "get"),
        Permission("resource.k8s.io", "resourceslices", "list"),
        Permission("resource.k8s.io", "resourceslices", "watch"),
    }
    rules = rules_of(perms)
    assert rules == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
        {"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices"], "verbs": ["list", "watch"]},
    ]
    assert permissions_of_rules(rules) == perms


def test_the_driver_code_scans_without_unresolved_calls() -> None:
    from tests.support.rbac import component_permissions

    perms = component_permissions()
    # What the DaemonSet's two processes fundamentally need, whatever else they grow.
    assert Permission("resource.k8s.io", "resourceslices", "create") in perms["plugin"]
    assert Permission("resource.k8s.io", "resourceclaims", "get") in perms["plugin"]
    assert {p.verb for p in perms["exporter"]} <= {"get", "list", "watch"}, "the exporter must never write"


def test_writing_claim_status_needs_the_granular_permission_for_the_driver() -> None:
    from tests.support.rbac import GRANULAR_STATUS, component_permissions, granular_status_permissions

    status = Permission("resource.k8s.io", "resourceclaims/status", "patch")
    expected = {
        Permission("resource.k8s.io", "resourceclaims/driver", v, "gpu.example.com") for v in GRANULAR_STATUS
    }
    assert granular_status_permissions({status}, "gpu.example.com") == expected
    assert granular_status_permissions({Permission("resource.k8s.io", "resourceclaims", "get")}, "x") == set()
    perms = component_permissions("gpu.example.com")
    assert expected <= perms["plugin"]
    assert not any(p.resource == "resourceclaims/driver" for p in perms["exporter"])


def test_rules_with_resource_names_round_trip() -> None:
    perms = {
        Permission("resource.k8s.io", "resourceclaims/driver", "associated-node:patch", "d"),
        Permission("resource.k8s.io", "resourceclaims/driver", "associated-node:update", "d"),
        Permission("resource.k8s.io", "resourceclaims/status", "patch"),
    }
    rules = rules_of(perms)
    assert rules == [
        {
            "apiGroups": ["resource.k8s.io"],
            "resources": ["resourceclaims/driver"],
            "resourceNames": ["d"],
            "verbs": ["associated-node:patch", "associated-node:update"],
        },
        {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims/status"], "verbs": ["patch"]},
    ]
    assert permissions_of_rules(rules) == perms


def test_the_list_watch_helper_needs_list_and_watch_of_its_type(tmp_path: Path) -> None:
    found = scan_source(
        tmp_path,
        """
        from driver.kube.listwatch import ListWatcher

        def nodes(kube):
            return ListWatcher(kube, NODES, on_list=print, on_event=print)

        class Index:
            def __init__(self, kube, rt):
                self.watcher = ListWatcher(kube, rt, on_list=print, on_event=print)

        def pods(kube):
            return Index(kube, PODS)
        """,
    )
    assert found == {
        Permission("", "nodes", "list"),
        Permission("", "nodes", "watch"),
        Permission("", "pods", "list"),
        Permission("", "pods", "watch"),
    }
