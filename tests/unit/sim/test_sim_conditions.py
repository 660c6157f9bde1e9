"""A condition's ``lastTransitionTime`` in the sandbox moves only when the condition's status changes, as the
kubelet and kube-scheduler keep it."""

from __future__ import annotations

from typing import Any

import pytest

from driver.sim.node import pod_conditions
from driver.sim.timestamps import now, transition_time

EARLIER = "2026-01-02T03:04:05Z"


@pytest.mark.parametrize(
    ("previous", "status", "kept"),
    [
        ({"status": "True", "lastTransitionTime": EARLIER}, "True", True),
        ({"status": "False", "lastTransitionTime": EARLIER}, "True", False),
        ({"status": "True"}, "True", False),  # no time to keep
        ({"status": "True", "lastTransitionTime": ""}, "True", False),
        (None, "True", False),
    ],
)
def test_transition_time(previous: dict[str, Any] | None, status: str, kept: bool) -> None:
    before = now()
    moment = transition_time(previous, status)
    if kept:
        assert moment == EARLIER
    else:
        assert before <= moment <= now()


def _pod(*conditions: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"generation": 1}, "status": {"conditions": list(conditions)}}


def test_the_kubelets_pod_conditions_keep_their_time_until_their_status_changes() -> None:
    pod = _pod(
        {"type": "Initialized", "status": "True", "lastTransitionTime": EARLIER},
        {"type": "Ready", "status": "True", "lastTransitionTime": EARLIER},
    )
    before = now()
    out = {
        c["type"]: c
        for c in pod_conditions(pod, sandbox=True, pending_inits=(), unready=("main",), completed=False)
    }
    assert out["Initialized"]["lastTransitionTime"] == EARLIER
    assert out["Ready"]["status"] == "False"
    assert before <= out["Ready"]["lastTransitionTime"] <= now()
    assert before <= out["PodReadyToStartContainers"]["lastTransitionTime"] <= now()
