"""Check CDI specs the way tests need: the project's own rules, plus the upstream schema when it is around.

The upstream CDI JSON schema lives beside the repository in the development workspace
(``../shared/reference/cdi/schema.json``); a CI checkout of the repository alone does not have it, and then
only the project's own schema (``driver/state/cdi_spec.schema.json``) is checked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from driver.state.cdi import spec_problems

UPSTREAM_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "cdi"


@cache
def upstream_validator() -> Draft7Validator | None:
    schema_path = UPSTREAM_DIR / "schema.json"
    if not schema_path.exists():
        return None
    schema = json.loads(schema_path.read_text())
    defs = json.loads((UPSTREAM_DIR / "defs.json").read_text())
    registry: Registry[Any] = Registry().with_resource("defs.json", Resource.from_contents(defs, DRAFT7))
    return Draft7Validator(schema, registry=registry)


def cdi_problems(spec: Mapping[str, Any]) -> list[str]:
    problems = spec_problems(spec)
    upstream = upstream_validator()
    if upstream is not None:
        problems += [f"upstream schema: {e.message}" for e in upstream.iter_errors(spec)]
    return problems


def assert_valid_cdi(spec: Mapping[str, Any]) -> None:
    problems = cdi_problems(spec)
    assert not problems, f"CDI spec breaks the rules: {problems}\n{json.dumps(spec, indent=1)}"
