"""``accel-dra explain`` at cluster scale: a generated dump of N nodes x 8 GPUs, explained for every node and
for one, as a person runs it (a fresh ``accel-dra explain`` process: interpreter start, imports, loading the
files, allocating, printing).

The dump is what ``kubectl get resourceslices -o yaml`` (and ``-o json``) gives for N nodes running our driver
with the fake 8-GPU backend: node i has H100s, or L4s on every fifth node; every seventh node has its first
four GPUs held by another claim (``kubectl get resourceclaims -A``) and every eleventh a tainted GPU. The claim
asks for two GPUs with at least 40 GiB on one NVLink domain; a second DeviceClass selector pins the driver.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[3]
DRIVER = "gpu.accel-dra.dev"
GPUS_PER_NODE = 8


def _devices(profile: str) -> list[JSON]:
    sys.path.insert(0, str(REPO))
    from driver.devices.backend import open_backend
    from driver.resources.attributes import device_entry

    inventory = open_backend(f"fake:{profile}", node_name="template").discover()
    devices = [device_entry(gpu, inventory, DRIVER) for gpu in inventory.gpus]
    while len(devices) < GPUS_PER_NODE:  # a 4-GPU profile twice (a second, identical board)
        devices += [
            {**d, "name": f"{d['name']}-{len(devices) // len(inventory.gpus)}"}
            for d in devices[: len(inventory.gpus)]
        ]
    return devices[:GPUS_PER_NODE]


def _node_devices(template: list[JSON], node: int) -> list[JSON]:
    """The template's devices with what differs per node (UUIDs, NVLink domains)."""
    devices = json.loads(json.dumps(template))
    for index, device in enumerate(devices):
        attributes = device["attributes"]
        attributes["uuid"] = {"string": f"GPU-{node:08x}-0000-4000-8000-{index:012x}"}
        if "nvlinkDomain" in attributes:
            attributes["nvlinkDomain"] = {"string": f"nvlink-{node:08x}{index // 4:08x}"}
    return devices


def dump(nodes: int) -> tuple[JSON, JSON, JSON, JSON]:
    """(slices, classes, other claims, the claim) as kubectl lists."""
    h100, l4 = _devices("dgx-h100"), _devices("pcie-l4x4")
    slices, holders = [], []
    for node in range(nodes):
        name = f"node-{node:05d}"
        devices = _node_devices(l4 if node % 5 == 4 else h100, node)
        if node % 11 == 10:
            devices[0]["taints"] = [
                {"key": "accel-dra.dev/unhealthy", "value": "xid-79", "effect": "NoSchedule"}
            ]
        slices.append(
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceSlice",
                "metadata": {"name": f"{name}-{DRIVER}-x7k2p"},
                "spec": {
                    "driver": DRIVER,
                    "nodeName": name,
                    "pool": {"name": name, "generation": 1, "resourceSliceCount": 1},
                    "devices": devices,
                },
            }
        )
        if node % 7 == 6:
            results = [
                {"request": "gpus", "driver": DRIVER, "pool": name, "device": d["name"]} for d in devices[:4]
            ]
            holders.append(
                {
                    "apiVersion": "resource.k8s.io/v1",
                    "kind": "ResourceClaim",
                    "metadata": {"name": f"training-{node}", "namespace": "team-a", "uid": f"uid-{node}"},
                    "spec": {
                        "devices": {"requests": [{"name": "gpus", "exactly": {"deviceClassName": DRIVER}}]}
                    },
                    "status": {"allocation": {"devices": {"results": results}}},
                }
            )
    gpu_class = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": DRIVER},
        "spec": {
            "selectors": [
                {"cel": {"expression": f'device.driver == "{DRIVER}"'}},
                {"cel": {"expression": f'device.attributes["{DRIVER}"].type == "gpu"'}},
            ]
        },
    }
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "two-big-gpus", "namespace": "default"},
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "gpus",
                        "exactly": {
                            "deviceClassName": DRIVER,
                            "count": 2,
                            "selectors": [
                                {
                                    "cel": {
                                        "expression": f'device.capacity["{DRIVER}"].memory.compareTo(quantity("40Gi")) >= 0'
                                    }
                                }
                            ],
                        },
                    }
                ],
                "constraints": [{"matchAttribute": f"{DRIVER}/nvlinkDomain"}],
            }
        },
    }

    def listed(items: list[JSON]) -> JSON:
        return {"apiVersion": "v1", "kind": "List", "items": items}

    return listed(slices), listed([gpu_class]), listed(holders), claim


def write_dump(directory: Path, nodes: int) -> dict[str, Path]:
    slices, classes, holders, claim = dump(nodes)
    paths = {
        "slices.yaml": directory / "slices.yaml",
        "slices.json": directory / "slices.json",
        "classes.yaml": directory / "classes.yaml",
        "claims.yaml": directory / "claims.yaml",
        "claims.json": directory / "claims.json",
        "claim.yaml": directory / "claim.yaml",
    }
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    paths["slices.yaml"].write_text(yaml.dump(slices, Dumper=dumper, sort_keys=False))
    paths["slices.json"].write_text(json.dumps(slices, indent=4))
    paths["classes.yaml"].write_text(yaml.safe_dump(classes, sort_keys=False))
    paths["claims.yaml"].write_text(yaml.dump(holders, Dumper=dumper, sort_keys=False))
    paths["claims.json"].write_text(json.dumps(holders, indent=4))
    paths["claim.yaml"].write_text(yaml.safe_dump(claim, sort_keys=False))
    return paths


def _explain(
    paths: dict[str, Path], form: str, *extra: str
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """One ``accel-dra explain`` run on the dump in ``form`` (yaml or json); (seconds, the process)."""
    command = [
        sys.executable,
        "-m",
        "driver",
        "explain",
        str(paths["claim.yaml"]),
        "--slices",
        str(paths[f"slices.{form}"]),
        "--class",
        str(paths["classes.yaml"]),
        "--claims",
        str(paths[f"claims.{form}"]),
        *extra,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, timeout=600)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"accel-dra explain failed ({done.returncode}): {done.stderr}")
    return elapsed, cpu, done


def cel_domain_lookup(evaluations: int = 20_000) -> JSON:
    """Microseconds per evaluation of a selector without and with ``device.attributes[D]`` lookups (each
    lookup is one call into Python, which gets the device's attribute map converted)."""
    sys.path.insert(0, str(REPO))
    from driver.cel.selectors import compile_expression, device_activation

    attributes = {name: {"string": "x"} for name in ("a", "b", "c", "d")}
    attributes.update({f"other{i}": {"int": i} for i in range(9)})  # a GPU publishes about 13 attributes
    device = device_activation("drv", {"name": "g", "attributes": attributes})
    lookup = 'device.attributes["drv"].{} == "x"'
    expressions = {
        "no_lookup": 'device.driver == "drv"',
        "one_lookup": lookup.format("a"),
        "four_lookups": " && ".join(lookup.format(n) for n in "abcd"),
        "four_reads_one_lookup": 'cel.bind(d, device.attributes["drv"], d.a == "x" && d.b == "x" && d.c == "x" && '
        'd.d == "x")',
    }
    out: JSON = {}
    for name, expression in expressions.items():
        compiled = compile_expression(expression)
        compiled.evaluate(device)
        started = time.perf_counter()
        for _ in range(evaluations):
            compiled.evaluate(device)
        out[name] = round((time.perf_counter() - started) / evaluations * 1e6, 2)
    return out


def explain_scale(directory: Path, nodes: int, runs: int) -> JSON:
    """Seconds (best of ``runs``) for the whole cluster and for one node, from YAML and from JSON."""
    paths = write_dump(directory, nodes)
    timings: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    outputs: dict[str, str] = {}
    one = f"node-{nodes // 2:05d}"
    cases = {
        "all_nodes_json": ("json",),
        "one_node_json": ("json", "--node", one),
        "all_nodes_verbose_json": ("json", "-v"),
        "all_nodes_json_output": ("json", "-o", "json"),
        "all_nodes_yaml": ("yaml",),
        "one_node_yaml": ("yaml", "--node", one),
    }
    for _ in range(runs):
        for name, (source, *extra) in cases.items():
            elapsed, used, done = _explain(paths, source, *extra)
            timings.setdefault(name, []).append(round(elapsed, 3))
            cpu.setdefault(name, []).append(round(used, 3))
            outputs[name] = done.stdout
    summary = outputs["all_nodes_json"].splitlines()
    return {
        "nodes": nodes,
        "gpus": nodes * GPUS_PER_NODE,
        "dump_mb": {
            "yaml": round(paths["slices.yaml"].stat().st_size / 2**20, 1),
            "json": round(paths["slices.json"].stat().st_size / 2**20, 1),
        },
        "seconds": {name: min(values) for name, values in timings.items()},
        "cpu_seconds": {name: min(values) for name, values in cpu.items()},
        "all_runs": timings,
        "summary_lines": len(summary),
        "summary": summary[:16],
        "verbose_lines": outputs["all_nodes_verbose_json"].count("\n"),
        "json_output_mb": round(len(outputs["all_nodes_json_output"]) / 2**20, 1),
    }
