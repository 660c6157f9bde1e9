"""Which NVML calls this machine's driver and GPUs answer: ``python -m tests.gpu.nvml_report [--out FILE]``.

Runs the NVML backend the way the plugin and the exporter do (discovery, then telemetry samples of every
GPU) with debug logging, and reports as JSON what the backend logged:

- ``unsupported``: calls NVML answered with "not supported" and the like (logged at debug level; the
  backend degrades the fact to unknown), one entry per call with the GPUs and errors seen;
- ``failed``: calls that failed unexpectedly (logged as warnings) -- on a healthy machine there are none;
- ``unknown_telemetry``: per GPU, the telemetry fields left empty, and ``telemetry_errors`` those that
  failed in a sample.

Exit status 0 when the report could be made (whatever it says), 1 when NVML cannot be opened.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
from collections.abc import Iterable
from typing import Any

from driver.devices.backend import BackendError, open_backend
from driver.devices.telemetry import GpuTelemetry, TelemetryError, TelemetrySource
from driver.log import setup

UNSUPPORTED_EVENTS = ("nvml call unsupported", "nvml telemetry unsupported", "nvml gpm unsupported")
#: Telemetry fields that are readings (``errors`` and ``uuid`` are not).
_READINGS = tuple(f.name for f in dataclasses.fields(GpuTelemetry) if f.name not in ("uuid", "errors"))
#: Logged when NVML answers "not supported" for some NVLink indices (beyond the GPU's links, or no NVLink).
_LINKS_NOT_REPORTED = "nvlink links not reported"


def _records(log_text: str) -> Iterable[dict[str, Any]]:
    for line in log_text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def summarize(log_text: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(unsupported calls, failed calls) from the backend's JSON log lines."""
    unsupported: dict[str, dict[str, Any]] = {}
    failed = []
    for line in _records(log_text):
        if line.get("logger") != "driver.devices.nvml":
            continue
        record = line
        if line.get("event") == _LINKS_NOT_REPORTED:
            record = {
                **line,
                "call": "nvmlDeviceGetNvLinkState",
                "error": f"not supported for {line.get('links')} link indices",
            }
        if record.get("event") in (*UNSUPPORTED_EVENTS, _LINKS_NOT_REPORTED):
            entry = unsupported.setdefault(
                str(record.get("call")), {"call": record.get("call"), "devices": [], "errors": []}
            )
            for key, value in (("devices", record.get("device")), ("errors", record.get("error"))):
                if value and value not in entry[key]:
                    entry[key].append(value)
        elif record.get("level") in ("warning", "error"):
            failed.append({k: v for k, v in record.items() if k not in ("ts", "logger")})
    return sorted(unsupported.values(), key=lambda e: str(e["call"])), failed


def collect(samples: int = 2) -> dict[str, Any]:
    """Discover and sample every GPU ``samples`` times; the report as a JSON-able dict."""
    buffer = io.StringIO()
    setup("debug", "json", stream=buffer)
    backend = open_backend("nvml")
    try:
        inventory = backend.discover()
        telemetry: dict[str, GpuTelemetry | str] = {}
        if isinstance(backend, TelemetrySource):
            for _ in range(samples):
                for gpu in inventory.gpus:
                    try:
                        telemetry[gpu.uuid] = backend.sample(gpu.uuid)
                    except TelemetryError as err:
                        telemetry[gpu.uuid] = str(err)
    finally:
        backend.close()
    unsupported, failed = summarize(buffer.getvalue())
    return {
        "driver_version": inventory.driver_version,
        "cuda_driver_version": inventory.cuda_driver_version,
        "gpus": [
            {
                "uuid": g.uuid,
                "name": g.name,
                "product": g.product_name,
                "architecture": g.architecture,
                "mig_enabled": g.mig_enabled,
            }
            for g in inventory.gpus
        ],
        "unsupported": unsupported,
        "failed": failed,
        "unknown_telemetry": {
            uuid: (t if isinstance(t, str) else [f for f in _READINGS if getattr(t, f) is None])
            for uuid, t in telemetry.items()
        },
        # GPM readings of the last sample (there is none in the first: GPM needs two samples).
        "activity": {
            uuid: {
                "gpu": sorted(t.activity),
                "throughput": sorted("/".join(k) for k in t.io_throughput),
                "mig": {m.uuid: sorted(m.activity) for m in t.mig},
            }
            for uuid, t in telemetry.items()
            if not isinstance(t, str)
        },
        "telemetry_errors": {
            uuid: dict(t.errors) for uuid, t in telemetry.items() if not isinstance(t, str) and t.errors
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.gpu.nvml_report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", help="write the JSON report here as well as to stdout")
    parser.add_argument("--samples", type=int, default=2, help="telemetry samples per GPU (default 2)")
    args = parser.parse_args(argv)
    try:
        report = collect(args.samples)
    except BackendError as err:
        print(f"nvml report: {err}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            out.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
