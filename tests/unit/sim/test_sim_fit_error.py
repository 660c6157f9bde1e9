"""The sandbox scheduler's message for a pod no node takes, in kube-scheduler's words (its FitError)."""

from __future__ import annotations

from driver.sim.controllers import NOT_READY_NODE, UNSCHEDULABLE_NODE, fit_error


def test_every_node_with_the_same_reason() -> None:
    reasons = {"a": "cannot allocate all claims", "b": "cannot allocate all claims"}
    assert fit_error(2, reasons=reasons) == (
        "0/2 nodes are available: 2 cannot allocate all claims. "
        "preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
    )


def test_reasons_are_counted_and_sorted_and_a_shortage_may_be_helped_by_preemption() -> None:
    reasons = {
        "a": "cannot allocate all claims",
        "b": UNSCHEDULABLE_NODE,
        "c": "Insufficient nvidia.com/gpu",
        "d": NOT_READY_NODE,
    }
    assert fit_error(4, reasons=reasons, victims={"c"}) == (
        "0/4 nodes are available: 1 Insufficient nvidia.com/gpu, 1 cannot allocate all claims, "
        "1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 1 node(s) were unschedulable. "
        "preemption: 0/4 nodes are available: 1 No preemption victims found for incoming pod, "
        "3 Preemption is not helpful for scheduling."
    )


def test_a_prefilter_verdict_replaces_the_per_node_reasons() -> None:
    message = fit_error(3, prefilter="request gpu: device class x does not exist", reasons={"a": "ignored"})
    assert message == (
        "0/3 nodes are available: request gpu: device class x does not exist. "
        "preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    )


def test_no_node_at_all() -> None:
    assert fit_error(0) == "no nodes available to schedule pods"
