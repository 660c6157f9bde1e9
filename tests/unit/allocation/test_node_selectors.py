"""One core/v1 NodeSelector implementation (driver.allocation.model.node_selector_matches), with
kube-scheduler's semantics, behind both of its callers: the allocator (explain, the sandbox scheduler) and
the conformance suite's view of where a slice's devices can be used."""

from __future__ import annotations

from typing import Any

import pytest

from driver.allocation.model import Node, NodeSelectorError, node_selector_matches
from driver.conformance import devices as devlib

LABELS = {"zone": "y", "gpus": "8", "rack": "07"}


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": operator, **({"values": list(values)} if values else {})}


def terms(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"nodeSelectorTerms": list(terms)}


# (selector, verdict for node "n1" with LABELS): True / False, or "error" where the scheduler cannot parse
# the selector -- then the slice is usable on no node.
CASES: list[tuple[str, dict[str, Any], bool | str]] = [
    ("in", terms({"matchExpressions": [expr("zone", "In", "x", "y")]}), True),
    ("notin-missing-label", terms({"matchExpressions": [expr("pool", "NotIn", "a")]}), True),
    ("exists", terms({"matchExpressions": [expr("gpus", "Exists")]}), True),
    ("does-not-exist", terms({"matchExpressions": [expr("gpus", "DoesNotExist")]}), False),
    ("gt", terms({"matchExpressions": [expr("gpus", "Gt", "4")]}), True),
    ("lt-leading-zero", terms({"matchExpressions": [expr("rack", "Lt", "8")]}), True),
    ("fields", terms({"matchFields": [expr("metadata.name", "In", "n1")]}), True),
    ("fields-other-node", terms({"matchFields": [expr("metadata.name", "In", "n2")]}), False),
    ("requirements-and", terms({"matchExpressions": [expr("zone", "In", "y"), expr("gpus", "Gt", "8")]}), False),
    ("terms-or", terms({"matchExpressions": [expr("zone", "In", "x")]}, {"matchExpressions": [expr("zone", "In", "y")]}), True),
    ("empty-term-matches-nothing", terms({}), False),
    ("gt-not-an-integer", terms({"matchExpressions": [expr("gpus", "Gt", "4x")]}), "error"),
    ("in-without-values", terms({"matchExpressions": [expr("zone", "In")]}), "error"),
    ("bad-operator", terms({"matchExpressions": [expr("zone", "Equals", "y")]}), "error"),
    ("bad-key", terms({"matchExpressions": [expr("bad key", "Exists")]}), "error"),
    # One unparsable term spoils the whole selector, even when another term matches.
    (
        "bad-term-beside-a-matching-one",
        terms({"matchExpressions": [expr("zone", "In", "y")]}, {"matchExpressions": [expr("gpus", "Gt", "x")]}),
        "error",
    ),
    ("fields-two-values", terms({"matchFields": [expr("metadata.name", "In", "n1", "n2")]}), "error"),
]  # fmt: skip


@pytest.mark.parametrize(("selector", "verdict"), [(s, v) for _, s, v in CASES], ids=[c[0] for c in CASES])
def test_the_allocator_evaluates_node_selectors_like_the_scheduler(
    selector: dict[str, Any], verdict: bool | str
) -> None:
    node = Node("n1", LABELS)
    if verdict == "error":
        with pytest.raises(NodeSelectorError):
            node_selector_matches(selector, node)
    else:
        assert node_selector_matches(selector, node) is verdict


@pytest.mark.parametrize(("selector", "verdict"), [(s, v) for _, s, v in CASES], ids=[c[0] for c in CASES])
def test_the_conformance_suite_reaches_the_nodes_the_scheduler_would(
    selector: dict[str, Any], verdict: bool | str
) -> None:
    node = {"metadata": {"name": "n1", "labels": LABELS}}
    slice_obj = {"spec": {"nodeSelector": selector}}
    assert devlib.reachable_nodes(slice_obj, [node]) == (["n1"] if verdict is True else [])
