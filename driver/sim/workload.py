"""``accel-dra sim gpu-load``: a simulated GPU job for sandbox containers.

It finds "its" GPUs the way a sandbox workload must (SANDBOX contract): every environment variable named
``ACCEL_DRA_DEVICE_<NAME>`` (upper-case letters, digits, ``_``) that does not end in ``_CLAIM``,
``_CLAIM_UID``, ``_ADMIN_ACCESS`` or ``_SHARING`` holds the UUID of a GPU or MIG device it was given.

For each GPU it writes ``$ACCEL_DRA_FAKE_STATE/gpus/<uuid>/procs/<pid>.json`` (``pid``, ``utilization``,
``memory_bytes`` and optionally ``encoder``/``decoder``), which the fake device backend turns into
telemetry, keeps it while running and removes it when it ends: after ``--seconds``, or on SIGTERM/SIGINT
(then it exits 0, a graceful shutdown). A SIGKILL leaves the files behind; readers ignore files whose pid
is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

GPU_ENV_RE = re.compile(r"^ACCEL_DRA_DEVICE_[A-Z0-9_]+$")
NON_UUID_SUFFIXES = ("_CLAIM", "_CLAIM_UID", "_ADMIN_ACCESS", "_SHARING")
STATE_ENV = "ACCEL_DRA_FAKE_STATE"
DEFAULT_MEMORY = 2 * 1024**3  # 2Gi, without importing the quantity parser for the default


def gpus_from_env(env: Mapping[str, str]) -> list[str]:
    """The device UUIDs handed to this container, ordered by variable name, without duplicates."""
    uuids: list[str] = []
    for name in sorted(env):
        if GPU_ENV_RE.match(name) and not name.endswith(NON_UUID_SUFFIXES):
            value = env[name].strip()
            if value and value not in uuids:
                uuids.append(value)
    return uuids


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _quantity(text: str) -> int:
    from driver.quantity import parse_quantity

    try:
        value = parse_quantity(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a quantity (e.g. 2Gi, 512Mi)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return int(value)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def add_gpu_load_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=_seconds, default=None, help="how long to run (default: until SIGTERM or SIGINT)"
    )
    parser.add_argument(
        "--utilization", type=_ratio, default=1.0, help="GPU utilization to report per GPU, 0..1 (default 1)"
    )
    parser.add_argument(
        "--memory",
        type=_quantity,
        default=None,
        help="GPU memory to report per GPU, a quantity (default 2Gi)",
    )
    parser.add_argument("--encoder", type=_ratio, default=None, help="encoder utilization to report, 0..1")
    parser.add_argument("--decoder", type=_ratio, default=None, help="decoder utilization to report, 0..1")
    parser.add_argument(
        "--state-dir",
        default=None,
        help=f"the fake backend's state directory (default: ${STATE_ENV}, as the sandbox's CDI edits set it)",
    )


def procs_file(state_dir: Path, uuid: str, pid: int) -> Path:
    return state_dir / "gpus" / uuid / "procs" / f"{pid}.json"


def _write_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # readers skip dot files
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)


def _payload(args: argparse.Namespace, pid: int) -> dict[str, Any]:
    payload: dict[str, Any] = {"pid": pid, "utilization": args.utilization, "memory_bytes": args.memory}
    for key in ("encoder", "decoder"):
        if getattr(args, key) is not None:
            payload[key] = getattr(args, key)
    return payload


STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def _wait(seconds: float | None) -> str:
    """Wait (stop signals blocked by the caller) until ``seconds`` pass or one arrives; which happened."""
    if seconds is None:
        return signal.Signals(signal.sigwait(STOP_SIGNALS)).name
    info = signal.sigtimedwait(STOP_SIGNALS, seconds)
    return "done" if info is None else signal.Signals(info.si_signo).name


def run_gpu_load(args: argparse.Namespace) -> int:
    uuids = gpus_from_env(os.environ)
    if not uuids:
        print("gpu-load: no GPUs in the environment (no ACCEL_DRA_DEVICE_* variables)", file=sys.stderr)
        return 1
    memory = DEFAULT_MEMORY if args.memory is None else args.memory
    args.memory = memory
    state = args.state_dir or os.environ.get(STATE_ENV)
    if not state:
        print(
            f"gpu-load: ${STATE_ENV} is not set: the load is not reported to the fake backend",
            file=sys.stderr,
        )
    pid = os.getpid()
    written: list[Path] = []
    # Block the stop signals before the first file exists, so none can slip in before cleanup is armed.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for uuid in uuids:
            if state:
                path = procs_file(Path(state), uuid, pid)
                _write_atomic(path, _payload(args, pid))
                written.append(path)
            print(
                f"gpu-load: loading {uuid}: utilization {args.utilization:.2f}, memory {memory} bytes"
                + (f", for {args.seconds:g}s" if args.seconds is not None else ""),
                flush=True,
            )
        reason = _wait(args.seconds)
        print(f"gpu-load: stopping ({reason})", flush=True)
    finally:
        for path in written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m driver.sim.workload``: the same as ``accel-dra sim gpu-load``."""
    parser = argparse.ArgumentParser(prog="gpu-load", description="simulated GPU load for sandbox containers")
    add_gpu_load_arguments(parser)
    return run_gpu_load(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
