"""Test-wide settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.support.realk8s import REQUIRED_ENV, Cluster, locate_binary, running_cluster

# gRPC's C core logs transport chatter (GOAWAY on server stop) to stderr at info level.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# CI machines have 2 cores shared with the processes the tests start: per-example deadlines only add noise.
settings.register_profile("accel-dra", deadline=None, print_blob=True)
settings.load_profile("accel-dra")


# -- the real-cluster tier (docs/testing.md) ---------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the real-cluster tests last: their cluster then stops right after them (its teardown is the
    session's) instead of idling beside every other test, and a broken build shows after the fast tests.
    Among them, tests/realk8s runs its modules in its own order (tests/realk8s/__init__.py)."""
    from tests.realk8s import MODULE_ORDER

    def order(item: pytest.Item) -> tuple[int, int]:
        if item.get_closest_marker("realk8s") is None:
            return (0, 0)
        module = getattr(item, "module", None)
        name = module.__name__.rpartition(".")[2] if module is not None else ""
        return (1, MODULE_ORDER.index(name) if name in MODULE_ORDER else len(MODULE_ORDER))

    items.sort(key=order)


@pytest.fixture(scope="session")
def realk8s(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A real Kubernetes cluster on loopback, shared by the session: etcd, kube-apiserver (Node,RBAC
    authorization, an audit log), kube-controller-manager, kube-scheduler and two hollow kubelets with the
    kubelet's real DRA manager. ``.kubeconfig`` is the admin's, ``.audit_log`` the API server's audit log.

    Skipped when the components are not built (``make realk8s``) -- a failure instead where
    $REALK8S_REQUIRED is set, as in CI.
    """
    binary, reason = locate_binary()
    if binary is None:
        if os.environ.get(REQUIRED_ENV):
            pytest.fail(f"{REQUIRED_ENV} is set but {reason}")
        pytest.skip(reason)
    failed_before = request.session.testsfailed
    with running_cluster(binary) as cluster:
        yield cluster
        if request.session.testsfailed > failed_before:
            cluster.keep = True
    if cluster.keep:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"realk8s: logs, audit log and kubeconfigs kept in {cluster.dir}")
