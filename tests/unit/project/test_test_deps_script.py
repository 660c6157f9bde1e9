"""hack/test-deps.sh, which `make test` runs: installs Prometheus and promtool when they are missing and it
can (root, or sudo without a password), is a no-op when they are there, and otherwise lets those tests skip
-- unless TEST_DEPS_REQUIRED=1 (CI), where a failed install fails. apt-get, sudo and id are stubs on PATH."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support import paths

SCRIPT = paths.REPO / "hack" / "test-deps.sh"


def _stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    log = tmp_path / "calls.log"
    # apt-get "installs" prometheus by creating the two commands.
    _stub(
        directory,
        "apt-get",
        f'echo "apt-get $*" >> {log}\n'
        f'if [ "$1" = install ]; then for c in promtool prometheus; do '
        f'printf "#!/bin/bash\\n" > {directory}/$c; /bin/chmod +x {directory}/$c; done; fi',
    )
    return directory


def _run(bin_dir: Path, uid: int, sudo: bool | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    _stub(bin_dir, "id", f"echo {uid}")
    if sudo is not None:
        _stub(bin_dir, "sudo", f'if [ "$2" = true ]; then exit {0 if sudo else 1}; fi; shift; exec "$@"')
    return subprocess.run(
        ["/bin/bash", str(SCRIPT)],
        env={"PATH": str(bin_dir), **env, "HOME": os.environ.get("HOME", "/")},
        capture_output=True,
        text=True,
        check=False,
    )


def _calls(bin_dir: Path) -> list[str]:
    log = bin_dir.parent / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_installs_prometheus_as_root_then_does_nothing(bin_dir: Path) -> None:
    first = _run(bin_dir, uid=0)
    assert first.returncode == 0, first.stderr
    assert _calls(bin_dir) == [
        "apt-get update -qq",
        "apt-get install -y -qq --no-install-recommends prometheus",
    ]
    assert (bin_dir / "promtool").exists() and (bin_dir / "prometheus").exists()
    again = _run(bin_dir, uid=0)
    assert again.returncode == 0 and len(_calls(bin_dir)) == 2, "installed: nothing to do"


def test_uses_passwordless_sudo_when_not_root(bin_dir: Path) -> None:
    result = _run(bin_dir, uid=1000, sudo=True)
    assert result.returncode == 0, result.stderr
    assert (bin_dir / "promtool").exists()


def test_without_root_or_sudo_the_tests_skip_and_ci_fails(bin_dir: Path) -> None:
    result = _run(bin_dir, uid=1000, sudo=False)
    assert result.returncode == 0
    assert "Prometheus and promtool tests will be skipped" in result.stderr
    assert _calls(bin_dir) == []
    required = _run(bin_dir, uid=1000, sudo=False, TEST_DEPS_REQUIRED="1")
    assert required.returncode == 1


def test_a_failed_install_is_an_error_only_when_required(bin_dir: Path) -> None:
    _stub(bin_dir, "apt-get", "exit 100")
    assert _run(bin_dir, uid=0).returncode == 0
    failed = _run(bin_dir, uid=0, TEST_DEPS_REQUIRED="1")
    assert failed.returncode == 1 and "apt-get update failed" in failed.stderr
