"""``accel-dra conformance run``: flags load without heavy imports, bad input is refused before any cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from driver.cli import main
from tests.support import paths

FIXTURES = paths.FIXTURES / "conformance"


def test_the_flags_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, driver.conformance.cli\n"
        "heavy = [m for m in ('kubernetes', 'aiohttp', 'yaml', 'driver.sim', 'driver.conformance.runner') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_help_lists_the_run_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["conformance", "run", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--checklist",
        "--out",
        "--run",
        "--vendor",
        "--sandbox",
        "--kubeconfig",
        "--metrics-service",
        "--import-junit",
        "--uncovered",
        "--k8s-conformance-url",
        "--vendor-name",
        "--allocation",
        "--sandbox-shape",
    ):
        assert flag in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--checklist", "/nonexistent/checklist.yaml"], "cannot read checklist"),
        (
            ["--checklist", str(FIXTURES / "checklist-1.36.yaml"), "--metadata", "vendorName=[Vendor]"],
            "is a [placeholder]",
        ),
        (
            ["--checklist", str(FIXTURES / "checklist-1.36.yaml"), "--metadata", "vendorName"],
            "expected KEY=VALUE",
        ),
        (["--checklist", str(FIXTURES / "checklist-1.36.yaml"), "--vendor", "rocm"], "not a preset"),
        (
            ["--checklist", str(FIXTURES / "checklist-1.36.yaml"), "--device-glob", "nvidia*"],
            "absolute path glob",
        ),
        (
            ["--checklist", str(FIXTURES / "checklist-1.36.yaml"), "--run", "Secure("],
            "not a regular expression",
        ),
        (
            ["--checklist", str(FIXTURES / "checklist-1.36.yaml"), "--sandbox-shared-gpus", "0000:5d:00.0"],
            "--sandbox-shared-gpus sets the GPUs this driver's sandbox plugin shares: it needs --sandbox with "
            "--sandbox-shape accel-dra (no --sandbox given)",
        ),
    ],
)
def test_bad_input_is_refused_before_any_cluster_is_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    # The kubeconfig does not exist: input is checked before anything connects.
    argv = [
        "conformance",
        "run",
        "--kubeconfig",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shared_gpus_are_refused_for_a_sandbox_shaped_like_another_driver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The AMD- and Intel-shaped stand-ins have no --shared-gpus: the flag would be ignored."""
    argv = [
        "conformance",
        "run",
        "--sandbox",
        "--sandbox-shape",
        "amd",
        "--sandbox-shared-gpus",
        "0000:5d:00.0",
    ]
    argv += ["--checklist", str(FIXTURES / "checklist-1.36.yaml"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "it needs --sandbox with --sandbox-shape accel-dra (not amd)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
