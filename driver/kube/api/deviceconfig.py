"""What DeviceClasses and claims share: CEL device selectors and opaque driver configuration."""

from __future__ import annotations

import json
from typing import Any

from driver.kube.api.fields import (
    JSON,
    Errors,
    Path,
    check_size,
    forbidden,
    get_obj,
    get_str,
    invalid,
    items_of,
    required,
    too_long,
)
from driver.kube.api.limits import MAX_CEL_LENGTH, MAX_OPAQUE_PARAMETERS_LENGTH, MAX_SELECTORS
from driver.kube.api.names import validate_driver_name


def validate_selectors(selectors: list[Any] | None, path: Path, out: Errors, *, stored: bool = False) -> None:
    if not check_size(selectors, MAX_SELECTORS, path, out):
        return
    for selector_path, selector in items_of(selectors, path, out):
        cel = get_obj(selector, "cel", selector_path, out)
        if cel is None:
            out.append(required(selector_path.child("cel")))
            continue
        expression = get_str(cel, "expression", selector_path.child("cel"), out) or ""
        if not stored:
            validate_cel_expression(expression, selector_path.child("cel", "expression"), out)


def validate_cel_expression(expression: str, path: Path, out: Errors) -> None:
    """Length limit, then what the API server's DRA CEL compiler says about a new selector: syntax, types
    (the 1.37 new-expression environment) and the estimated cost limit."""
    if len(expression.encode()) > MAX_CEL_LENGTH:
        out.append(too_long(path, MAX_CEL_LENGTH))
        return
    if not expression.strip():
        # The API server's CEL parser meets the end of the input where it expects an expression.
        detail = (
            f"compilation failed: ERROR: <input>:1:{len(expression)}: Syntax error: mismatched input '<EOF>' "
            "expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, "
            "STRING, BYTES, IDENTIFIER}"
        )
        out.append(invalid(path, expression, detail))
        return
    from driver.cel.selectors import COST_LIMIT, NEW, CelCompileError, compile_expression

    try:
        compiled = compile_expression(expression, NEW)
    except CelCompileError as exc:
        out.append(invalid(path, expression, exc.upstream_text()))
        return
    if compiled.max_cost > COST_LIMIT:
        out.append(forbidden(path, "too complex, exceeds cost limit"))


def validate_opaque_config(config: JSON, path: Path, out: Errors, *, stored: bool = False) -> None:
    """``opaque``: a driver name and parameters, a JSON object of at most 10 KiB unless already ``stored``
    (the limit came later; stored parameters are grandfathered in)."""
    opaque = get_obj(config, "opaque", path, out)
    if opaque is None:
        out.append(required(path.child("opaque")))
        return
    opaque_path = path.child("opaque")
    validate_driver_name(get_str(opaque, "driver", opaque_path, out), opaque_path.child("driver"), out)
    parameters = opaque.get("parameters")
    params_path = opaque_path.child("parameters")
    if parameters is None:
        out.append(required(params_path))
    else:
        validate_raw_object(parameters, params_path, MAX_OPAQUE_PARAMETERS_LENGTH, out, stored=stored)


def raw_size(data: Any) -> int:
    """The bytes of ``data`` as a client sends it: compact JSON in UTF-8. The server counts the raw bytes it
    received (the sandbox only sees the decoded value, so a pretty-printed body may pass here only)."""
    return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())


def validate_raw_object(data: Any, path: Path, max_length: int, out: Errors, *, stored: bool = False) -> None:
    """A RawExtension that must hold a JSON object of at most ``max_length`` bytes."""
    if not stored and raw_size(data) > max_length:
        out.append(too_long(path, max_length))
    elif not isinstance(data, dict):
        out.append(invalid(path, "<value omitted>", "must be a valid JSON object"))
