"""Selector results shared between devices that look the same to the expression (driver.cel.selectors.
SelectorCache): the answer must always be the one evaluating the expression on the device itself gives."""

from __future__ import annotations

import random
from typing import Any

import pytest

from driver.cel import syntax
from driver.cel.selectors import (
    STORED,
    CelCompileError,
    CelRuntimeError,
    SelectorCache,
    _environment,
    compile_expression,
    device_activation,
)
from tests.support import celgen


def direct(expression: str, driver: str, device: dict[str, Any]) -> str:
    try:
        return str(compile_expression(expression).evaluate(device_activation(driver, device)))
    except CelCompileError:
        return "compile-error"
    except CelRuntimeError as exc:
        return f"runtime-error: {exc.detail}"


def cached(cache: SelectorCache, expression: str, driver: str, device: dict[str, Any], ident: str) -> str:
    try:
        return str(cache.matches(expression, driver, device, ident))
    except CelCompileError:
        return "compile-error"
    except CelRuntimeError as exc:
        return f"runtime-error: {exc.detail}"


@pytest.mark.parametrize("seed", [3, 4])
def test_cached_results_equal_direct_evaluation(seed: int) -> None:
    """Generated expressions over generated devices (every attribute type, malformed ones included), each
    expression against many devices through one cache."""
    cases = celgen.cases(150, seed)
    devices = [case["device"] for case in cases]
    rng = random.Random(seed)
    cache = SelectorCache()
    compared = 0
    for case in cases:
        for index in rng.sample(range(len(devices)), 12):
            device = devices[index]
            expected = direct(case["expression"], case["driver"], device)
            assert cached(cache, case["expression"], case["driver"], device, f"dev-{index}") == expected, (
                case["expression"],
                device,
            )
            compared += 1
    assert compared == 150 * 12


def reads(expression: str) -> frozenset[tuple[str, ...]] | None:
    checked = syntax.decode(_environment(STORED).checker.compile(expression).serialize())
    return syntax.device_reads(checked)


def test_what_an_expression_reads() -> None:
    assert reads('device.attributes["gpu.example.com"].model == "H100" && device.driver == "x"') == {
        ("attributes", "gpu.example.com", "model"),
        ("driver",),
    }
    assert reads('device.capacity["gpu.example.com"]["memory"].isGreaterThan(quantity("1Gi"))') == {
        ("capacity", "gpu.example.com", "memory")
    }
    assert reads('has(device.attributes.gpu) && has(device.attributes["d"].x)') == {
        ("has", "attributes", "gpu"),
        ("attributes", "d", "x"),
    }
    assert reads("device.allowMultipleAllocations") == {("allowMultipleAllocations",)}
    # Anything that may look at the whole map: not known.
    assert reads('device.attributes["d"].exists(k, k == "x")') is None
    assert reads('"x" in device.attributes["d"]') is None
    assert reads("size(device.attributes) > 0") is None
    assert reads('device.attributes["d"][device.driver] == 1') is None


def test_a_malformed_device_is_not_answered_from_the_cache() -> None:
    cache = SelectorCache()
    expression = 'device.attributes["d"].model == "A"'
    good = {"name": "a", "attributes": {"model": {"string": "A"}}}
    bad = {"name": "b", "attributes": {"model": {"string": "A"}, "v": {"version": "not-semver"}}}
    assert cache.matches(expression, "d", good, "d/p/a") is True
    with pytest.raises(CelRuntimeError, match="attribute v"):
        cache.matches(expression, "d", bad, "d/p/b")
