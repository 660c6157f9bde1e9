"""The container image recipe (Dockerfile, .dockerignore), checked without a container engine.

The Dockerfile is parsed with BuildKit's own parser (the ``dockerfile`` package, part of the ``chart``
extra; skipped with the reason when missing). The builder stage's command is run for real: it must produce
an installable wheel with the console script and the package data.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.chart import ROOT

try:
    import dockerfile
except ImportError as err:  # pragma: no cover - depends on the environment
    dockerfile = None
    MISSING = f"the dockerfile parser is not installed (pip install -e '.[chart]'): {err}"
else:
    MISSING = ""

DEV_TOOLS = (
    "pytest",
    "ruff",
    "mypy",
    "grpcio-tools",
    "hypothesis",
    "kubernetes-validate",
    "[dev]",
    "[chart]",
)


@pytest.fixture(scope="module")
def stages() -> list[list[Any]]:
    if dockerfile is None:
        pytest.skip(MISSING)
    out: list[list[Any]] = []
    for command in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if command.cmd == "FROM":
            out.append([])
        if out:
            out[-1].append(command)
    return out


def instructions(stage: list[Any], cmd: str) -> list[Any]:
    return [c for c in stage if c.cmd == cmd]


def stage_name(stage: list[Any]) -> str:
    value = stage[0].value
    return str(value[2]) if len(value) == 3 and value[1].upper() == "AS" else ""


def test_two_stages_on_a_slim_python_base(stages: list[list[Any]]) -> None:
    assert [stage_name(s) for s in stages] == ["builder", "runtime"]
    args = {
        c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1]
        for c in dockerfile.parse_file(str(ROOT / "Dockerfile"))
        if c.cmd == "ARG"
    }
    for stage in stages:
        base = stage[0].value[0]
        resolved = args.get(base.strip("${}"), base)
        assert resolved in ("python:3.11-slim", "python:3.12-slim"), resolved


def test_builder_builds_a_wheel_of_the_project(stages: list[list[Any]]) -> None:
    builder = stages[0]
    copied = [c.value[0] for c in instructions(builder, "COPY")] + [
        v for c in instructions(builder, "COPY") for v in c.value[1:-1]
    ]
    assert {"pyproject.toml", "README.md", "driver/"} <= set(copied)
    runs = " ".join(c.value[0] for c in instructions(builder, "RUN"))
    assert "pip wheel" in runs and "--wheel-dir /wheels" in runs


def test_runtime_installs_only_the_built_wheels(stages: list[list[Any]]) -> None:
    runtime = stages[-1]
    assert not instructions(runtime, "COPY") and not instructions(runtime, "ADD"), (
        "no source tree in the image"
    )
    (install,) = instructions(runtime, "RUN")
    assert any(f.startswith("--mount=type=bind,from=builder") for f in install.flags), (
        "wheels must not stay in a layer"
    )
    command = install.value[0]
    assert "--no-index" in command and command.split()[-1] == "accel-dra"
    text = " ".join(" ".join(c.value) for c in runtime)
    assert not [tool for tool in DEV_TOOLS if tool in text]


def test_runtime_runs_accel_dra_as_a_non_root_user(stages: list[list[Any]]) -> None:
    runtime = stages[-1]
    (user,) = instructions(runtime, "USER")
    uid = user.value[0].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric uid lets Kubernetes enforce runAsNonRoot"
    (entrypoint,) = instructions(runtime, "ENTRYPOINT")
    assert entrypoint.json and list(entrypoint.value) == ["accel-dra"]
    assert not [c for s in stages for c in instructions(s, "HEALTHCHECK")], (
        "Kubernetes probes, not HEALTHCHECK"
    )
    assert not [c for c in instructions(runtime, "CMD") if not c.json]


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(c, body) or fnmatch.fnmatch(c, body.replace("**/", "")) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in ("pyproject.toml", "README.md", "driver/cli.py", "driver/devices/profiles/dgx-h100.yaml"):
        assert not _ignored(patterns, path), path
    for path in (
        ".venv/bin/python",
        ".git/config",
        "tests/unit/deploy/test_chart.py",
        "charts/accel-dra/values.yaml",
        "driver/__pycache__/cli.cpython-311.pyc",
    ):
        assert _ignored(patterns, path), path


def test_the_builder_command_produces_an_installable_wheel(tmp_path: Path) -> None:
    """``pip wheel .`` (the builder's step, without dependencies) on what the builder copies yields the CLI
    and the package data."""
    context = tmp_path / "src"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(
        ROOT / "driver", context / "driver", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            ".",
        ],
        check=False,
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"cannot build wheels here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    (wheel,) = wheels.glob("accel_dra-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "accel-dra = driver.cli:main" in zf.read(entry_points).decode()
    for data in (
        "driver/devices/profiles/dgx-h100.yaml",
        "driver/devices/profile.schema.json",
        "driver/_proto/dra/v1/api_pb2.py",
        "driver/py.typed",
    ):
        assert data in names, f"{data} missing from the wheel"
    assert not [n for n in names if n.startswith("tests/")]
