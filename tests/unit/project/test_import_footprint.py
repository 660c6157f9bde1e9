"""What the long-running processes load at import: start time and memory are judged by hack/bench, but
these imports must not creep back (each costs a large part of the budget in docs/performance.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("kubernetes", "jsonschema", "cel_expr_python", "yaml")


def loaded(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


@pytest.mark.parametrize("module", ["driver.plugin.app", "driver.exporter.server"])
def test_plugin_and_exporter_modules_import_no_heavy_library(module: str) -> None:
    found = {name for name in loaded(module) if name.split(".")[0] in HEAVY}
    assert not found, f"{module} imports {sorted(found)}"


def test_the_fake_backend_needs_no_kubernetes_client() -> None:
    assert not {name for name in loaded("driver.devices.fake") if name.split(".")[0] == "kubernetes"}


def test_opening_a_bundled_fake_profile_loads_no_schema_validator() -> None:
    code = (
        "import json, sys\n"
        "from driver.devices.backend import open_backend\n"
        "open_backend('fake:dgx-h100', node_name='n').discover()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not {m for m in json.loads(out) if m.split(".")[0] in ("jsonschema", "kubernetes")}
