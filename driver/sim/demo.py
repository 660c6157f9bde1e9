"""``accel-dra demo``: run the examples from deploy/examples/ in the sandbox and explain what happened.

Everything runs in a temporary directory (removed at the end) with a simulated node of the chosen fake
profile: the sim API server, scheduler, ResourceClaim controller and kubelet in this process, the real
``accel-dra plugin`` and ``accel-dra exporter`` as child processes over real sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from driver.kube.client import PODS, RESOURCE_CLAIMS, RESOURCE_SLICES
from driver.log import setup

JSON = dict[str, Any]
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "examples"
DEFAULT_EXAMPLES = ("gpu-test1", "gpu-test2", "gpu-test3", "gpu-test4", "gpu-test5", "gpu-test-impossible")
MIG_EXAMPLES = ("gpu-test6",)
LOAD_NAMESPACE = "demo-load"


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", default="dgx-h100", help="fake machine profile (see docs/fake-devices.md)"
    )
    parser.add_argument(
        "--examples",
        default="",
        help="comma-separated example directories under deploy/examples (default: the standard tour)",
    )
    parser.add_argument("--examples-dir", default=str(EXAMPLES_DIR), help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the sandbox directory for inspection")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each pod")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


@dataclass
class ExampleRun:
    name: str
    objects: list[JSON]
    pods: list[JSON] = field(default_factory=list)
    pending_reason: dict[str, str] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return next(
            (o["metadata"].get("namespace") for o in self.objects if o["metadata"].get("namespace")),
            "default",
        )

    def pod_names(self) -> list[str]:
        return [o["metadata"]["name"] for o in self.objects if o["kind"] == "Pod"]


def load_example(directory: Path) -> list[JSON]:
    objects: list[JSON] = []
    for path in sorted(directory.glob("*.yaml")):
        objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    if not objects:
        raise FileNotFoundError(f"no manifests in {directory}")
    return objects


def _device_facts(slices: Sequence[Mapping[str, Any]], driver: str) -> dict[str, str]:
    """device name -> "productName, memory, nvlinkDomain" from the published slices."""
    facts: dict[str, str] = {}
    for s in slices:
        for device in s["spec"].get("devices") or []:
            attrs = device.get("attributes") or {}
            parts = [
                str(attrs.get("productName", {}).get("string", "?")),
                str((device.get("capacity") or {}).get("memory", {}).get("value", "?")),
            ]
            domain = attrs.get("nvlinkDomain", {}).get("string")
            if domain:
                parts.append(f"NVLink {domain}")
            facts[device["name"]] = ", ".join(parts)
    return facts


def _claims_of(pod: Mapping[str, Any], claims: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    names = {e.get("resourceClaimName") for e in pod["spec"].get("resourceClaims") or []}
    names |= {
        s.get("resourceClaimName") for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []
    }
    return [c for c in claims if c["metadata"]["name"] in names]


async def poll_until(
    check: Callable[[], bool | Awaitable[bool]], timeout: float, interval: float = 0.1
) -> bool:
    """Re-check something that has no change notification (a log file, an HTTP endpoint), bounded."""
    for _ in range(max(1, int(timeout / interval))):
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return True
        await asyncio.sleep(interval)
    return False


def _indent(text: str, prefix: str = "      ") -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(prefix + line for line in lines[:12]) or prefix + "(no output yet)"


class Demo:
    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.out = out

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def examples(self) -> list[str]:
        if self.args.examples:
            return [e.strip() for e in self.args.examples.split(",") if e.strip()]
        return list(DEFAULT_EXAMPLES) + (list(MIG_EXAMPLES) if self.args.profile.startswith("mig") else [])

    async def run(self) -> int:
        from driver.sim.sandbox import Sandbox, SandboxConfig

        examples_dir = Path(self.args.examples_dir)
        runs = [ExampleRun(name, load_example(examples_dir / name)) for name in self.examples()]
        self.say(f"accel-dra demo: starting a sandbox node with the '{self.args.profile}' fake profile ...")
        config = SandboxConfig(profile=self.args.profile, keep=self.args.keep, log_level=self.args.log_level)
        async with Sandbox(config) as sandbox:
            self.say(f"  sandbox: {sandbox.root}")
            await self.show_node(sandbox)
            # The load pod goes first so it gets a GPU even on small profiles.
            load_pod = await self.start_load(sandbox)
            for run in runs:
                await sandbox.apply(run.objects, run.namespace)
            for run in runs:
                await self.settle(sandbox, run)
            await self.report(sandbox, runs)
            await self.show_metrics(sandbox, load_pod)
            await self.cleanup(sandbox, runs)
            if self.args.keep:
                self.say(f"\nkept the sandbox directory: {sandbox.root}")
        return 0

    async def show_node(self, sandbox: Any) -> None:
        slices = [s for s in sandbox.apiserver.objects(RESOURCE_SLICES)]
        devices = [d for s in slices for d in s["spec"].get("devices") or []]
        self.say(
            f"  node {sandbox.config.node_name}: plugin registered, {len(devices)} GPUs published in {len(slices)} ResourceSlice(s)"
        )

    async def start_load(self, sandbox: Any) -> str:
        """A pod of our own that runs simulated load, to show attributed utilization."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "load", "namespace": LOAD_NAMESPACE},
            "spec": {
                "restartPolicy": "Never",
                "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}],
                "containers": [
                    {
                        "name": "load",
                        "image": "sandbox",
                        "command": [
                            sys.executable,
                            "-m",
                            "driver",
                            "sim",
                            "gpu-load",
                            "--utilization",
                            "0.85",
                            "--memory",
                            "12Gi",
                        ],
                        "resources": {"claims": [{"name": "gpu"}]},
                    }
                ],
            },
        }
        template = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaimTemplate",
            "metadata": {"name": "one-gpu", "namespace": LOAD_NAMESPACE},
            "spec": {
                "spec": {
                    "devices": {
                        "requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.accel-dra.dev"}}]
                    }
                }
            },
        }
        await sandbox.apply([template, pod], LOAD_NAMESPACE)
        return "load"

    async def settle(self, sandbox: Any, run: ExampleRun) -> None:
        """Wait until each pod runs (or, for a claim that cannot be satisfied, is reported unschedulable)."""

        def settled(store: Any) -> bool:
            for name in run.pod_names():
                pod = sandbox.apiserver.get_object(PODS, name, run.namespace)
                if pod is None:
                    return False
                status = pod.get("status") or {}
                unschedulable = any(
                    c.get("type") == "PodScheduled" and c.get("status") == "False"
                    for c in status.get("conditions") or []
                )
                if status.get("phase") not in ("Running", "Succeeded", "Failed") and not unschedulable:
                    return False
            return True

        try:
            await sandbox.apiserver.wait_for(settled, timeout=self.args.timeout)
        except TimeoutError:
            self.say(f"  ! {run.name}: pods did not settle within {self.args.timeout:g}s")
        await self.wait_for_output(sandbox, run)

    async def wait_for_output(self, sandbox: Any, run: ExampleRun) -> None:
        """Give running containers the moment they need to print what they saw (bounded: logs are files)."""
        for name in run.pod_names():
            pod = sandbox.apiserver.get_object(PODS, name, run.namespace) or {}
            if (pod.get("status") or {}).get("phase") != "Running":
                continue
            for container in pod["spec"]["containers"]:

                def printed(pod_name: str = name, container_name: str = container["name"]) -> bool:
                    return bool(sandbox.pod_log(run.namespace, pod_name, container_name).strip())

                await poll_until(printed, 10)

    async def report(self, sandbox: Any, runs: Sequence[ExampleRun]) -> None:
        driver = sandbox.config.driver_name
        facts = _device_facts(sandbox.apiserver.objects(RESOURCE_SLICES), driver)
        for run in runs:
            self.say(f"\n=== {run.name} ({run.namespace}) ===")
            readme = Path(self.args.examples_dir) / run.name / "README.md"
            if readme.exists():
                title = readme.read_text().splitlines()[0].lstrip("# ").strip()
                self.say(f"  {title}")
            claims = sandbox.apiserver.objects(RESOURCE_CLAIMS, run.namespace)
            for name in run.pod_names():
                pod = sandbox.apiserver.get_object(PODS, name, run.namespace)
                if pod is None:
                    continue
                status = pod.get("status") or {}
                self.say(f"  pod {name}: {status.get('phase', 'Pending')}")
                for claim in _claims_of(pod, claims):
                    self.describe_claim(claim, facts)
                reason = next(
                    (
                        c.get("message", "")
                        for c in status.get("conditions") or []
                        if c.get("type") == "PodScheduled" and c.get("status") == "False"
                    ),
                    "",
                )
                if reason:
                    self.say(f"    why Pending: {reason}")
                    await self.explain(sandbox, run, pod)
                    continue
                for container in pod["spec"]["containers"]:
                    log_text = sandbox.pod_log(run.namespace, name, container["name"])
                    self.say(f"    container {container['name']} saw:")
                    self.say(_indent(log_text))

    def describe_claim(self, claim: Mapping[str, Any], facts: Mapping[str, str]) -> None:
        allocation = (claim.get("status") or {}).get("allocation")
        if not allocation:
            self.say(f"    claim {claim['metadata']['name']}: not allocated")
            return
        results = allocation["devices"]["results"]
        users = len((claim.get("status") or {}).get("reservedFor") or [])
        self.say(f"    claim {claim['metadata']['name']} (used by {users} pod(s)):")
        for r in results:
            self.say(f"      {r['request']:<10} -> {r['device']}  [{facts.get(r['device'], '?')}]")

    async def explain(self, sandbox: Any, run: ExampleRun, pod: Mapping[str, Any]) -> None:
        """What ``accel-dra explain`` says about the pod's unsatisfiable claim (first lines)."""
        import subprocess

        template_name = next(
            (
                e.get("resourceClaimTemplateName")
                for e in pod["spec"].get("resourceClaims") or []
                if e.get("resourceClaimTemplateName")
            ),
            None,
        )
        template = next(
            (
                o
                for o in run.objects
                if o["kind"] == "ResourceClaimTemplate" and o["metadata"]["name"] == template_name
            ),
            None,
        )
        if template is None:
            return
        path = sandbox.root / f"{run.name}-claim.yaml"
        path.write_text(yaml.safe_dump(template))
        result = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "driver",
                "explain",
                str(path),
                "--kubeconfig",
                str(sandbox.kubeconfig),
                "--node",
                sandbox.config.node_name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        self.say(f"    accel-dra explain (exit {result.returncode}):")
        self.say(_indent(result.stdout, "      | "))

    async def show_metrics(self, sandbox: Any, load_pod: str) -> None:
        if not sandbox.exporter_url:
            return
        await sandbox.wait_pod(LOAD_NAMESPACE, load_pod, ["Running"], timeout=self.args.timeout)
        self.say("\n=== metrics (exporter, scraped through the API server's service proxy) ===")
        loaded = re.compile(
            rf'accel_dra_container_gpu_utilization_ratio\{{[^}}]*pod="{load_pod}"[^}}]*\}} 0\.[1-9]'
        )
        scraped = [""]

        async def load_visible() -> bool:
            scraped[0] = await sandbox.scrape()
            return bool(loaded.search(scraped[0]))

        await poll_until(load_visible, 15, interval=0.3)
        lines = scraped[0].splitlines()
        allocations = [line for line in lines if line.startswith("accel_dra_gpu_allocation_info")]
        load = [
            line
            for line in lines
            if line.startswith("accel_dra_container_gpu_utilization_ratio") and f'pod="{load_pod}"' in line
        ]
        self.say(
            f"  {len(allocations)} GPU allocations attributed to containers; simulated load in pod {LOAD_NAMESPACE}/{load_pod}:"
        )
        for line in load + allocations[:6]:
            self.say("    " + line)

    async def cleanup(self, sandbox: Any, runs: Sequence[ExampleRun]) -> None:
        """Delete every pod; the kubelet stops them and unprepares their claims (CDI specs go away)."""
        assert sandbox.kube is not None
        pods = [(run.namespace, name) for run in runs for name in run.pod_names()] + [
            (LOAD_NAMESPACE, "load")
        ]
        for namespace, name in pods:
            try:
                await sandbox.kube.delete(PODS, name, namespace)
            except Exception:
                continue

        def all_gone(store: Any) -> bool:
            return not any(sandbox.apiserver.get_object(PODS, n, ns) for ns, n in pods) and not list(
                (sandbox.root / "cdi").glob("*.json")
            )

        try:
            await sandbox.apiserver.wait_for(all_gone, timeout=30)
            self.say("\ncleanup: all pods deleted, every claim unprepared (no CDI specs left)")
        except TimeoutError:
            self.say("\ncleanup: some pods or CDI specs were still there after 30s")


def run_demo(args: argparse.Namespace) -> int:
    from driver.sim.sandbox import SandboxError

    setup(args.log_level)
    try:
        return asyncio.run(Demo(args, sys.stdout).run())
    except FileNotFoundError as err:
        print(f"accel-dra demo: {err}", file=sys.stderr)
        return 2
    except SandboxError as err:
        print(f"accel-dra demo: the sandbox failed: {err}", file=sys.stderr)
        return 1
