"""The sandbox API server reports the Kubernetes release the real-cluster tier runs."""

from __future__ import annotations

import re

from driver.sim.apiserver import DEFAULT_KUBERNETES_VERSION
from tests.support import paths

GO_MOD = paths.REPO / "hack" / "realk8s" / "go.mod"


def test_the_default_server_version_is_the_pinned_release() -> None:
    pinned = re.search(r"^\s*k8s\.io/kubernetes (v\S+)$", GO_MOD.read_text(), re.M)
    assert pinned is not None
    assert pinned.group(1) == DEFAULT_KUBERNETES_VERSION
