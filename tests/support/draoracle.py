"""hack/draoracle: Kubernetes' own DRA code as a test oracle, built once per source version.

The binary lands in ``build/draoracle/<hash>/`` where the hash covers the Go sources, go.mod, go.sum and the
Go toolchain version, so a warm build is a file check and any change rebuilds. ``make test`` builds it
first (``python -m tests.support.draoracle``); the tests build it themselves when run alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.paths import REPO

ROOT = REPO
SOURCE = ROOT / "hack" / "draoracle"
BUILD = ROOT / "build" / "draoracle"


class OracleUnavailableError(Exception):
    """Go is not installed: the differential tests cannot run."""


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise OracleUnavailableError(
            "Go is not installed (hack/draoracle needs the go tool and its module proxy)"
        )
    return go


def _source_hash(go: str) -> str:
    digest = hashlib.sha256()
    version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout
    digest.update(version.encode())
    for path in sorted(SOURCE.iterdir()):
        if path.suffix == ".go" or path.name in ("go.mod", "go.sum"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def binary() -> Path:
    """The oracle binary, built if this version is not built yet; :class:`OracleUnavailableError` without Go."""
    go = _go()
    target = BUILD / _source_hash(go) / "draoracle"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    result = subprocess.run(
        [go, "build", "-trimpath", "-o", str(partial), "."],
        check=False,
        cwd=SOURCE,
        capture_output=True,
        text=True,
        env={**os.environ, "CGO_ENABLED": "0"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"building hack/draoracle failed:\n{result.stdout}{result.stderr}")
    partial.replace(target)
    for old in BUILD.iterdir():  # earlier versions
        if old != target.parent:
            shutil.rmtree(old, ignore_errors=True)
    return target


def run(subcommand: str, payload: Any, timeout: float = 600) -> Any:
    """Feed ``payload`` (JSON) to ``draoracle SUBCOMMAND`` and return its decoded answer."""
    result = subprocess.run(
        [str(binary()), subcommand],
        check=False,
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"draoracle {subcommand} failed: {result.stderr}")
    return json.loads(result.stdout)


if __name__ == "__main__":
    try:
        print(f"draoracle: {binary().relative_to(ROOT)}")
    except OracleUnavailableError as exc:
        print(f"draoracle: not built: {exc}; the differential tests will be skipped", file=sys.stderr)
