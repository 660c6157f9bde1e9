"""DRA CEL selectors: the `device` variable, the Kubernetes quantity/semver library, errors."""

from __future__ import annotations

import re
from typing import Any

import pytest

from driver.cel.selectors import (
    CelCompileError,
    CelRuntimeError,
    compile_expression,
    device_activation,
    referenced_values,
)
from driver.devices.backend import open_backend
from driver.resources.attributes import device_entry
from tests.support import paths

DRIVER = "gpu.accel-dra.dev"


@pytest.fixture(scope="module")
def h100() -> dict[str, Any]:
    """The first GPU of the fake DGX H100 exactly as the driver publishes it."""
    inventory = open_backend("fake:dgx-h100").discover()
    return device_entry(inventory.gpus[0], inventory, DRIVER)


def matches(expression: str, device: dict[str, Any], driver: str = DRIVER) -> bool:
    return compile_expression(expression).evaluate(device_activation(driver, device))


SMALL = {
    "name": "dev-0",
    "attributes": {
        "model": {"string": "H100"},
        "index": {"int": 3},
        "mig": {"bool": False},
        "driverVersion": {"version": "580.65.6"},
        "other.example.com/family": {"string": "hopper"},
    },
    "capacity": {"memory": {"value": "80Gi"}, "other.example.com/slots": {"value": "4"}},
}


# -- the device variable ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('device.driver == "gpu.accel-dra.dev"', True),
        ('device.driver == "other.example.com"', False),
        # unqualified names land in the driver's domain
        ('device.attributes["gpu.accel-dra.dev"].model == "H100"', True),
        (
            'device.attributes["gpu.accel-dra.dev"].index == 3 && !device.attributes["gpu.accel-dra.dev"].mig',
            True,
        ),
        # qualified names land in their own domain, and not in the driver's
        ('device.attributes["other.example.com"].family == "hopper"', True),
        ('has(device.attributes["gpu.accel-dra.dev"].family)', False),
        ('"model" in device.attributes["gpu.accel-dra.dev"]', True),
        ('device.attributes["gpu.accel-dra.dev"].model.matches("^H1[0-9]+$")', True),
        # capacities are quantities
        ('device.capacity["gpu.accel-dra.dev"].memory == quantity("80Gi")', True),
        ('device.capacity["gpu.accel-dra.dev"].memory.compareTo(quantity("40Gi")) >= 0', True),
        ('device.capacity["gpu.accel-dra.dev"].memory.compareTo(quantity("100Gi")) >= 0', False),
        ('device.capacity["other.example.com"].slots.asInteger() == 4', True),
        # versions are semver objects
        ('device.attributes["gpu.accel-dra.dev"].driverVersion.isGreaterThan(semver("550.0.0"))', True),
        ('device.attributes["gpu.accel-dra.dev"].driverVersion.compareTo(semver("580.65.6")) == 0', True),
        ('device.attributes["gpu.accel-dra.dev"].driverVersion.minor() == 65', True),
        ("device.allowMultipleAllocations == false", True),
        # unknown domains are empty maps: has/in are false instead of errors
        ('has(device.attributes["nvidia.com"].productName)', False),
        ('"memory" in device.capacity["nvidia.com"]', False),
        ('device.attributes["nvidia.com"].size() == 0', True),
        # the cel.bind macro Kubernetes enables
        ('cel.bind(gpu, device.attributes["gpu.accel-dra.dev"], gpu.model == "H100" && gpu.index > 2)', True),
        ("[1, 2, 3].exists(x, x == 3)", True),
    ],
)
def test_device_variable(expression: str, expected: bool) -> None:
    assert matches(expression, SMALL) is expected


def test_allow_multiple_allocations_is_reported() -> None:
    shared = {**SMALL, "allowMultipleAllocations": True}
    assert matches("device.allowMultipleAllocations", shared)
    assert not matches("device.allowMultipleAllocations", SMALL)


def test_published_attributes_of_a_fake_h100(h100: dict[str, Any]) -> None:
    std = 'device.attributes["resource.kubernetes.io"]'
    gpu = f'device.attributes["{DRIVER}"]'
    assert matches(f"{std}.numaNode == 0", h100)
    assert matches(f'{std}.pciBusID == "0000:18:00.0"', h100)
    assert matches(f'{gpu}.productName.startsWith("NVIDIA H100")', h100)
    assert matches(f'{gpu}.cudaComputeCapability.isGreaterThan(semver("8.9.0"))', h100)
    assert matches(f"{gpu}.cudaDriverVersion.major() == 12", h100)
    assert matches(f'device.capacity["{DRIVER}"].memory.isGreaterThan(quantity("79Gi"))', h100)
    assert not matches(f'device.capacity["{DRIVER}"].memory.isGreaterThan(quantity("80Gi"))', h100)


# -- quantity ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('quantity("200M").compareTo(quantity("0.2G")) == 0', True),
        ('quantity("50M").compareTo(quantity("50Mi")) == -1', True),
        ('quantity("50Mi").compareTo(quantity("50M")) == 1', True),
        ('quantity("150Mi").isGreaterThan(quantity("100Mi"))', True),
        ('quantity("50Mi").isGreaterThan(quantity("100Mi"))', False),
        ('quantity("50M").isLessThan(quantity("100M"))', True),
        ('quantity("100M").isLessThan(quantity("50M"))', False),
        ('quantity("1Gi") == quantity("1024Mi")', True),
        ('quantity("1Gi") != quantity("1G")', True),
        ('quantity("50k").asInteger() == 50000', True),
        ('quantity("50000000G").isInteger()', True),
        ('quantity("1.5").isInteger()', False),
        ('quantity("9999999999999999999999999999999999999G").isInteger()', False),
        ('quantity("50k").sub(20000).asApproximateFloat() == 30000.0', True),
        ('quantity("1.5Gi").asApproximateFloat() == 1610612736.0', True),
        ('quantity("50k").add(quantity("20k")) == quantity("70k")', True),
        ('quantity("50k").add(20) == quantity("50020")', True),
        ('quantity("50k").sub(quantity("20k")) == quantity("30k")', True),
        ('quantity("50k").add(20).sub(quantity("100k")).sub(-50000) == quantity("20")', True),
        ('sign(quantity("5")) == 1 && sign(quantity("-5")) == -1 && sign(quantity("0")) == 0', True),
        ('sign(quantity("-1m")) == -1', True),
        ('isQuantity("1.3G") && isQuantity("1.3Gi") && isQuantity("10000k") && isQuantity("1e3")', True),
        ('isQuantity("1,3G") || isQuantity("200K") || isQuantity("Three") || isQuantity("1e")', False),
        # apimachinery's parser takes a bare suffix or sign as zero, and rounds up to nanos
        ('isQuantity("Mi") && quantity("+") == quantity("0") && quantity("0.1n") == quantity("1n")', True),
    ],
)
def test_quantity_library(expression: str, expected: bool) -> None:
    assert matches(expression, SMALL) is expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ('quantity("200K") == quantity("1")', "quantities must match the regular expression"),
        ('quantity("1.5").asInteger() == 1', "cannot convert value to integer"),
        (
            'quantity("9999999999999999999999999999999999999G").asInteger() > 0',
            "cannot convert value to integer",
        ),
    ],
)
def test_quantity_errors(expression: str, message: str) -> None:
    with pytest.raises(CelRuntimeError) as caught:
        matches(expression, SMALL)
    assert message in str(caught.value)
    assert caught.value.expression == expression
    assert caught.value.device == f"{DRIVER}/dev-0"


# -- semver ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('semver("1.2.3").compareTo(semver("1.2.3")) == 0', True),
        ('semver("1.2.3").compareTo(semver("2.0.0")) == -1', True),
        ('semver("1.2.3").compareTo(semver("0.1.2")) == 1', True),
        ('semver("1.10.0").isGreaterThan(semver("1.9.0"))', True),
        ('semver("1.0.0-alpha").isLessThan(semver("1.0.0"))', True),
        ('semver("1.0.0-alpha.1").isLessThan(semver("1.0.0-alpha.beta"))', True),
        ('semver("1.0.0-2").isLessThan(semver("1.0.0-10"))', True),
        ('semver("1.0.0-rc.1").isLessThan(semver("1.0.0-rc.1.1"))', True),
        ('semver("1.0.0+build.5") == semver("1.0.0+build.7")', True),
        (
            'semver("1.2.3").major() == 1 && semver("1.2.3").minor() == 2 && semver("1.2.3").patch() == 3',
            True,
        ),
        ('isSemver("1.0.0") && isSemver("0.1.0-alpha.1")', True),
        ('isSemver("v1.0") || isSemver("1.0") || isSemver("01.1.1") || isSemver("hello")', False),
        ('isSemver("v1.0", true) && isSemver("01.01.01", true)', True),
        ('semver("v1.0", true) == semver("1.0.0")', True),
        ('semver("01.01.01", true) == semver("1.1.1")', True),
        ('isSemver("1.0-rc1", true)', False),
    ],
)
def test_semver_library(expression: str, expected: bool) -> None:
    assert matches(expression, SMALL) is expected


def test_semver_parse_error_is_an_evaluation_error() -> None:
    with pytest.raises(CelRuntimeError, match=r"could not parse 'v1\.0' as semver"):
        matches('semver("v1.0") == semver("1.0.0")', SMALL)


# -- compile errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "detail", "column"),
    [
        ('device.driver ==== "x"', "Syntax error: extraneous input '=='", 17),
        ('frobnicate(device.driver) == "x"', "undeclared reference to 'frobnicate'", 11),
        ('device.driver.frobnicate() == "x"', "undeclared reference to 'frobnicate'", 25),
        ('dev.driver == "x"', "undeclared reference to 'dev'", 4),
        ('device.atributes["x"].y == 1', "undefined field 'atributes'", 7),
        ("   ", "must not be empty", None),
        # type errors are compile errors (the scheduler's type checker), not runtime errors
        ("1 < 2 < 3", "found no matching overload for '_<_' applied to '(bool, int)'", 7),
        (
            'quantity("1Gi") > quantity("1Mi")',
            "found no matching overload for '_>_' applied to '(kubernetes.Quantity, kubernetes.Quantity)'",
            17,
        ),
        (
            'device.capacity["gpu.accel-dra.dev"].memory == "80Gi"',
            "found no matching overload for '_==_'",
            45,
        ),
        ('quantity("1Gi").add(true) == quantity("1")', "found no matching overload for 'add'", 20),
        ('quantity("1Gi").compareTo(semver("1.0.0")) == 0', "found no matching overload for 'compareTo'", 26),
        ('quantity("5").sign() == 1', "undeclared reference to 'sign'", 19),
        ('quantity("1").value == "1"', "type 'kubernetes.Quantity' does not support field selection", 14),
        ('[1, "a"].size() == 2', "expected type 'int' but found 'string'", 5),
        ('"a".matches("(")', "invalid matches argument", 12),
        ('int("x") == 1', "program instantiation failed", None),
        ("device.driver", "must evaluate to bool or the unknown type, not string", None),
    ],
)
def test_compile_errors_name_expression_and_position(
    expression: str, detail: str, column: int | None
) -> None:
    with pytest.raises(CelCompileError) as caught:
        compile_expression(expression)
    error = caught.value
    assert detail in error.detail
    assert error.expression == expression
    assert error.column == column
    assert f"`{expression}`" in str(error)
    if column is not None:
        assert f"line 1, column {column}" in str(error)


def test_too_long_expression_is_rejected() -> None:
    expression = "true && " * 1400 + "true"
    with pytest.raises(CelCompileError, match="longer than 10240 bytes"):
        compile_expression(expression)


def test_expressions_are_compiled_once() -> None:
    expression = 'device.driver == "cache.example.com"'
    assert compile_expression(expression) is compile_expression(expression)
    bad = "cache(("
    with pytest.raises(CelCompileError) as first:
        compile_expression(bad)
    with pytest.raises(CelCompileError) as second:
        compile_expression(bad)
    assert first.value is second.value


# -- evaluation errors -------------------------------------------------------------------------------------------------


def test_missing_attribute_without_has_is_an_error_naming_expression_and_device() -> None:
    expression = 'device.attributes["gpu.accel-dra.dev"].productName == "x"'
    with pytest.raises(CelRuntimeError) as caught:
        matches(expression, SMALL)
    text = str(caught.value)
    assert "productName" in text
    assert f"`{expression}`" in text
    assert "gpu.accel-dra.dev/dev-0" in text


def test_missing_attribute_in_unknown_domain_is_an_error() -> None:
    with pytest.raises(CelRuntimeError, match="no such key: productName"):
        matches('device.attributes["nvidia.com"].productName == "x"', SMALL)


def test_short_circuit_hides_an_error_on_the_other_side() -> None:
    assert (
        matches(
            'has(device.attributes["gpu.accel-dra.dev"].nope) && device.attributes["gpu.accel-dra.dev"].nope',
            SMALL,
        )
        is False
    )
    assert matches('device.attributes["gpu.accel-dra.dev"].nope == 1 || true', SMALL) is True


def test_result_must_be_bool() -> None:
    with pytest.raises(CelRuntimeError, match="CEL result of type string could not be converted to bool"):
        matches('device.attributes["gpu.accel-dra.dev"].model', SMALL)


def test_invalid_attribute_makes_every_selector_fail_on_that_device() -> None:
    broken = {"name": "broken", "attributes": {"driverVersion": {"version": "580.65.06"}}}
    with pytest.raises(CelRuntimeError, match="attribute driverVersion: parse semantic version"):
        matches('device.driver == "gpu.accel-dra.dev"', broken)


# -- what a selector read ---------------------------------------------------------------------------------------------


def test_referenced_values_show_what_a_selector_saw(h100: dict[str, Any]) -> None:
    expression = (
        f'device.driver == "{DRIVER}" && device.capacity["{DRIVER}"].memory.compareTo(quantity("100Gi")) >= 0 '
        f"&& device.attributes['resource.kubernetes.io'].numaNode == 0 "
        f'&& device.attributes["{DRIVER}"].productName.startsWith("NVIDIA") '
        f'&& device.attributes["{DRIVER}"].nosuch == 1'
    )
    assert referenced_values(expression, DRIVER, h100) == [
        ("driver", f'"{DRIVER}"'),
        ("memory", "81559Mi"),
        ("resource.kubernetes.io/numaNode", "0"),
        ("productName", '"NVIDIA H100 80GB HBM3"'),
        ("nosuch", "<unset>"),
    ]


# -- the examples users copy from docs/cel.md ----------------------------------------------------------------------------


def doc_examples() -> list[str]:
    text = (paths.DOCS / "cel.md").read_text()
    blocks = re.findall(r"```cel\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def fake_machine_devices() -> list[dict[str, Any]]:
    devices = []
    for profile in ("dgx-h100", "mig-a100", "pcie-l4x4"):
        inventory = open_backend(f"fake:{profile}").discover()
        devices += [device_entry(d, inventory, DRIVER) for d in inventory.devices]
    return devices


@pytest.mark.parametrize("expression", doc_examples())
def test_documented_examples_work(expression: str, fake_machine_devices: list[dict[str, Any]]) -> None:
    # Every example evaluates without error on every device and selects at least one of them.
    assert any([matches(expression, device) for device in fake_machine_devices])


# -- the rest of the Kubernetes CEL environment ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        # Kubernetes libraries: regex, lists, URLs, IPs, CIDRs
        'device.attributes["gpu.accel-dra.dev"].model.find("[0-9]+") == "100"',
        '"a1b22".findAll("[0-9]+") == ["1", "22"] && "a1b22".findAll("[0-9]+", 1) == ["1"]',
        "[1, 2, 3].isSorted() && [3, 1].sum() == 4 && [3, 1].min() == 1 && [1, 2, 2].lastIndexOf(2) == 2",
        '[1, 2].includes(2) && "x".includes("x")',
        'url("https://gpu.example.com:8443/a?x=1").getPort() == "8443"',
        'isIP("10.0.0.1") && ip("10.0.0.1").family() == 4 && !isIP("::ffff:1.2.3.4")',
        'cidr("10.0.0.0/8").containsIP("10.1.2.3") && string(cidr("10.1.0.0/8").masked()) == "10.0.0.0/8"',
        # CEL extensions Kubernetes enables: strings, sets, lists, optionals, two-variable comprehensions
        '"H100".lowerAscii() == "h100" && "a,b".split(",").size() == 2 && "%s-%d".format(["a", 1]) == "a-1"',
        "sets.contains([1, 2, 3], [2]) && lists.range(3) == [0, 1, 2] && [3, 1].sort() == [1, 3]",
        'device.attributes["gpu.accel-dra.dev"][?"nosuch"].orValue("none") == "none"',
        'device.attributes["gpu.accel-dra.dev"].exists(name, value, name == "index" && value == 3)',
        # cross-type numeric comparisons, lazy cel.bind, list index errors left unread
        'device.attributes["gpu.accel-dra.dev"].index > 2.5 && 1u < 2',
        "cel.bind(unused, [1][5], true)",
        # an unknown domain is an empty map also through cel.bind
        'cel.bind(nv, device.attributes["nvidia.com"], !has(nv.model) && nv.size() == 0)',
    ],
)
def test_kubernetes_environment(expression: str) -> None:
    assert matches(expression, SMALL) is True


def test_list_type_attributes_are_lists() -> None:
    device = {
        "name": "d",
        "attributes": {"cores": {"ints": [1, 2]}, "vers": {"versions": ["1.0.0", "2.0.0"]}},
    }
    assert matches('device.attributes["gpu.accel-dra.dev"].cores.includes(2)', device)
    assert matches(
        'device.attributes["gpu.accel-dra.dev"].vers.exists(v, v.isGreaterThan(semver("1.5.0")))', device
    )


def test_expressions_over_the_cost_limit_fail_on_every_device() -> None:
    ten = "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"
    expression = (
        f"{ten}.all(a, {ten}.all(b, {ten}.all(c, {ten}.all(d, {ten}.all(e, {ten}.all(f, a < 100))))))"
    )
    assert compile_expression(expression).max_cost > 1_000_000
    with pytest.raises(CelRuntimeError, match="actual cost limit exceeded"):
        matches(expression, SMALL)
    assert compile_expression(f"{ten}.all(a, {ten}.all(b, a > 0))").max_cost < 10_000
