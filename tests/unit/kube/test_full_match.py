"""Names, keys and values are checked against the whole string, as Go's anchored regexps check them.

Python's ``$`` also matches before a trailing newline, so ``pattern.match("gpu-0\\n")`` passes a pattern
ending in ``$``; every check below refused nothing of the kind before it used ``fullmatch``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from driver.allocation.model import Node, NodeSelectorError, node_selector_matches
from driver.flags import ConfigError, check_driver_name
from driver.kube.api.names import is_dns_label
from driver.state.cdi import valid_device_name, valid_kind


def _selector(key: str, operator: str, *values: str) -> dict[str, object]:
    expression = {"key": key, "operator": operator, "values": list(values)}
    return {"nodeSelectorTerms": [{"matchExpressions": [expression]}]}


def _refuses_selector(key: str, operator: str, *values: str) -> bool:
    try:
        node_selector_matches(_selector(key, operator, *values), Node("node-1", {"zone": "a"}))
    except NodeSelectorError:
        return True
    return False


def _refuses_driver_name(name: str) -> bool:
    try:
        check_driver_name(name)
    except ConfigError:
        return True
    return False


CHECKS: dict[str, tuple[Callable[[str], bool], str]] = {
    "device name (DNS label)": (lambda v: not is_dns_label(v), "gpu-0"),
    "CDI device name": (lambda v: not valid_device_name(v), "claim-uid-0"),
    "CDI kind": (lambda v: not valid_kind(v), "gpu.accel-dra.dev/claim"),
    "driver name flag": (_refuses_driver_name, "gpu.accel-dra.dev"),
    "node selector label key": (lambda v: _refuses_selector(v, "Exists"), "zone"),
    "node selector label value": (lambda v: _refuses_selector("zone", "In", v), "a"),
    "node selector integer": (lambda v: _refuses_selector("zone", "Gt", v), "1"),
}


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_a_trailing_newline_is_refused(check: str) -> None:
    refuses, good = CHECKS[check]
    assert not refuses(good), f"{check}: {good!r} must pass"
    assert refuses(good + "\n"), f"{check}: {good!r} with a trailing newline must be refused"
