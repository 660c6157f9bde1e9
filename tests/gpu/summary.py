"""Write ``summary.md`` of a GPU validation run: ``python tests/gpu/summary.py OUT_DIR WHEEL_TAG STEPS_FILE``.

Called by hack/gpu-validate.sh at the end. Standard library only, run as a plain script: it must work even
when the carried wheels did not install. It reads the step statuses (``NAME|STATUS`` lines in STEPS_FILE) and
what the run left in OUT_DIR (the junit files, ``nvml-report.json``), and asks nvidia-smi for the device list;
it reports, it does not judge.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

JUNIT_FILES = ("junit.xml", "junit-cuda-load.xml")


def smi(*args: str) -> str:
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"(nvidia-smi {' '.join(args)}: {err})"
    return done.stdout.strip() or done.stderr.strip()


def machine(tag: str) -> list[str]:
    rows = smi(
        "--query-gpu=index,name,memory.total,pci.bus_id,driver_version,compute_cap", "--format=csv,noheader"
    )
    cuda = next(
        (
            line.split(":", 1)[1].strip()
            for line in smi("-q").splitlines()
            if line.strip().startswith("CUDA Version")
        ),
        "?",
    )
    return [
        f"- run at: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"- Python: {sys.version.split()[0]} (wheels {tag})",
        f"- CUDA version (nvidia-smi): {cuda}",
        "- GPUs (index, name, memory, PCI bus id, driver, compute capability):",
        *[f"  - {row}" for row in rows.splitlines()],
    ]


def steps(path: Path) -> list[str]:
    entries = path.read_text().splitlines() if path.exists() else []
    lines = []
    for entry in entries:
        name, _, status = entry.partition("|")
        shown = "ok" if status == "0" else f"exit {status}" if status.isdigit() else status
        lines.append(f"- {name}: {shown}")
    return lines or ["- (no steps recorded)"]


def outcomes(path: Path) -> list[str]:
    if not path.exists():
        return ["- (no junit file: the run did not finish or did not start)"]
    lines = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, detail = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = kind
                detail = (
                    (node.get("message") or "").strip().splitlines()[0][:240] if node.get("message") else ""
                )
        name = f"{case.get('classname')}.{case.get('name')}"
        lines.append(f"- {outcome}: {name}" + (f" -- {detail}" if detail else ""))
    return lines or ["- (no test cases)"]


def nvml(report: dict[str, Any]) -> list[str]:
    unsupported = [f"- {e['call']}: {'; '.join(e['errors']) or '?'}" for e in report.get("unsupported", [])]
    failed = [f"- {json.dumps(f, sort_keys=True)}" for f in report.get("failed", [])]
    # GPUs of one model usually lack the same fields: one line per distinct list.
    by_fields: dict[str, list[str]] = {}
    for uuid, fields in report.get("unknown_telemetry", {}).items():
        text = ", ".join(fields) if isinstance(fields, list) else str(fields)
        by_fields.setdefault(text or "(none)", []).append(uuid)
    unknown = [f"- {', '.join(uuids)}: {text}" for text, uuids in by_fields.items()]
    return [
        "## NVML calls unsupported (the backend degrades these facts to unknown)",
        "",
        *(unsupported or ["- (none)"]),
        "",
        "## NVML calls that failed (logged as warnings)",
        "",
        *(failed or ["- (none)"]),
        "",
        "## Telemetry fields unknown, per GPU",
        "",
        *(unknown or ["- (none)"]),
    ]


def summary(out: Path, tag: str, steps_file: Path) -> str:
    lines = ["# accel-dra GPU validation", "", *machine(tag), "", "## Steps", "", *steps(steps_file)]
    for name in JUNIT_FILES:
        lines += ["", f"## Tests ({name})", "", *outcomes(out / name)]
    report = out / "nvml-report.json"
    lines.append("")
    if report.exists():
        lines += nvml(json.loads(report.read_text()))
    else:
        lines.append("(no nvml-report.json: the report step failed, see Steps)")
    return "\n".join(lines) + "\n"


def main() -> int:
    out, tag, steps_file = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    text = summary(out, tag, steps_file)
    (out / "summary.md").write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
