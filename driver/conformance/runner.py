"""Runs the probes against a cluster and turns their results into checklist entries.

One namespace per run (``accel-dra-conformance-<id>``), every object labelled with the run id; each probe
runs under its own timeout and cleans up after itself; the namespace is deleted at the end, also when the run
is interrupted. :func:`requirement_fills` (pure) decides what the checklist says.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from driver import __version__
from driver.conformance.checklist import Checklist
from driver.conformance.context import ProbeContext, run_labels
from driver.conformance.e2elog import E2ELog, Record
from driver.conformance.model import CheckResult, Probe, ProbeResult, summarize
from driver.conformance.platform import platform_info
from driver.conformance.probes import PROBES
from driver.conformance.progress import Progress
from driver.conformance.vendor import Vendor
from driver.kube.client import DEVICE_CLASSES, NAMESPACES, NODES, RESOURCE_SLICES, ApiError, KubeClient

RESULTS_DIR = "results"
#: The whole run as it happened (every probe, advisory ones too), written while the run goes.
RUN_LOG = f"{RESULTS_DIR}/run.log"
JUNIT = f"{RESULTS_DIR}/junit.xml"
RESULTS_JSON = f"{RESULTS_DIR}/results.json"
E2E_LOG = f"{RESULTS_DIR}/e2e.log"
SUMMARY = f"{RESULTS_DIR}/summary.json"
REPORT = "report.html"
PRODUCT = "PRODUCT.yaml"
NAMESPACE_PREFIX = "accel-dra-conformance-"


@dataclass
class RunOptions:
    checklist: Checklist
    vendor: Vendor
    out_dir: Path
    run_filter: str | None = None
    #: Seconds per probe; ``None``: each probe's default.
    timeout: float | None = None
    progress: TextIO | None = None
    keep_namespace: bool = False
    #: The cluster is the accel-dra sandbox (said in the notes: such a run is not platform evidence).
    sandbox: bool = False
    #: The command line that started the run (the report's steps to reproduce).
    command: Sequence[str] = ()


@dataclass
class SuiteResult:
    run_id: str
    namespace: str
    started: str
    duration: float
    cluster: dict[str, Any]
    vendor: Vendor
    checklist: Checklist
    probes: list[ProbeResult]
    interrupted: bool = False
    sandbox: bool = False
    #: The run log's records (every line, with its test): the evidence files are rendered from them.
    records: list[Record] = field(default_factory=list)
    #: Seconds since the epoch when the run started.
    started_at: float = 0.0
    command: Sequence[str] = ()


def select(probes: Sequence[Probe], pattern: str | None) -> list[Probe]:
    """Probes whose name or test name matches ``pattern`` (``re.search``, like ``go test -run``)."""
    if not pattern:
        return list(probes)
    regex = re.compile(pattern)
    return [p for p in probes if regex.search(p.name) or regex.search(p.test)]


def not_applicable(probe: Probe, vendor: Vendor) -> str | None:
    """The vendor's reason when every requirement of the probe is declared N/A."""
    reasons = [vendor.not_applicable[r] for r in probe.requirements if r in vendor.not_applicable]
    if probe.requirements and len(reasons) == len(probe.requirements):
        return "; ".join(dict.fromkeys(reasons))
    return None


def mode_mismatch(probe: Probe, vendor: Vendor) -> str | None:
    """Why a probe does not run in the vendor's allocation mode (DRA-only probes in device-plugin mode)."""
    if vendor.allocation in probe.modes:
        return None
    return (
        f"allocation mode {vendor.allocation}: this probe needs DRA (its claims select devices through "
        f"DeviceClass {vendor.device_class})"
    )


class _Runner:
    def __init__(self, kube: KubeClient, options: RunOptions, log: E2ELog) -> None:
        self.kube = kube
        self.options = options
        self.log = log
        self.run_id = secrets.token_hex(3)
        self.namespace = NAMESPACE_PREFIX + self.run_id

    async def create_namespace(self) -> None:
        await self.kube.create(
            NAMESPACES, {"metadata": {"name": self.namespace, "labels": run_labels(self.run_id)}}
        )

    async def delete_namespace(self, timeout: float = 60.0) -> None:
        with contextlib.suppress(ApiError):
            await self.kube.delete(NAMESPACES, self.namespace)
        deadline = time.monotonic() + timeout
        delay = 0.05
        while time.monotonic() < deadline:
            try:
                await self.kube.get(NAMESPACES, self.namespace)
            except ApiError as err:
                if err.not_found:
                    return
                raise
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 1.5)

    async def run_probe(self, probe: Probe, index: int, progress: Progress) -> tuple[ProbeResult, bool]:
        """Run one probe; the flag says the run was interrupted (Ctrl-C) during it."""
        vendor = self.options.vendor
        timeout = self.options.timeout or probe.timeout
        first = self.log.lines
        wall = time.time()
        self.log.run(probe.test)
        what = ", ".join(probe.requirements) or ("advisory" if probe.advisory else "no checklist requirement")
        self.log.note(f"{probe.title} [{what}]", test=probe.test)
        progress.start(index, probe.test, timeout)
        ctx = ProbeContext(
            kube=self.kube,
            vendor=vendor,
            namespace=self.namespace,
            run_id=self.run_id,
            probe=probe,
            log=self.log,
            on_step=progress.step,
            on_wait=progress.waiting,
        )
        started = time.monotonic()
        interrupted = False
        reason = not_applicable(probe, vendor)
        mismatch = mode_mismatch(probe, vendor)
        if reason is not None or mismatch is not None:
            why = f"declared N/A by the vendor: {reason}" if reason is not None else str(mismatch)
            ctx.checks.append(CheckResult("NotApplicable", "skipped", why))
            ctx.log.note(f"SKIP: {why}", test=probe.test)
        else:
            try:
                async with asyncio.timeout(timeout):
                    await probe.run(ctx)
            except TimeoutError:
                self._stopped(ctx, f"timed out after {timeout:g}s")
            except asyncio.CancelledError:
                interrupted = True
                self._stopped(ctx, "interrupted (Ctrl-C)")
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
            finally:
                with contextlib.suppress(ApiError, OSError, TimeoutError):
                    async with asyncio.timeout(180):
                        await ctx.cleanup()
        outcome, message = summarize(ctx.checks)
        duration = time.monotonic() - started
        self.log.result(probe.test, outcome, duration)
        ctx.data["manifests"] = ctx.manifests
        ctx.data["outputs"] = [{"pod": p, "container": c, "text": t} for p, c, t in ctx.outputs]
        result = ProbeResult(
            probe=probe.name,
            test=probe.test,
            title=probe.title,
            requirements=probe.requirements,
            outcome=outcome,
            message=message,
            checks=ctx.checks,
            duration=duration,
            timeout=timeout,
            records=(first, self.log.lines),
            started=wall,
            data=ctx.data,
            interrupted=interrupted,
            required=probe.required,
            required_any=probe.required_any,
            advisory=probe.advisory,
        )
        await progress.end(result)
        return result, interrupted

    @staticmethod
    def _stopped(ctx: ProbeContext, why: str) -> None:
        """Mark the check that was running (or a new one) as stopped by a timeout or Ctrl-C."""
        running = [
            c for c in ctx.checks if c.outcome == "failed" and c.message.startswith("interrupted while")
        ]
        if running:
            running[-1].message = f"{why} while {running[-1].message.removeprefix('interrupted while ')}"
        else:
            ctx.checks.append(CheckResult("Stopped", "failed", f"{why} while {ctx.step_text or 'starting'}"))
        ctx.log.note(f"{why} while {ctx.step_text}", test=ctx.probe.test)


async def resolve_allocation(kube: KubeClient, vendor: Vendor) -> tuple[Vendor, str]:
    """The vendor with ``auto`` allocation decided, and a line saying how: DRA when the DeviceClass exists and
    the driver publishes devices, else the device plugin when a node offers the extended resource."""
    if vendor.allocation != "auto":
        return vendor, ""
    with contextlib.suppress(ApiError, OSError, TimeoutError):
        await kube.get(DEVICE_CLASSES, vendor.device_class)
        slices = await kube.list(RESOURCE_SLICES, field_selector=f"spec.driver={vendor.driver_name}")
        if any((s.get("spec") or {}).get("devices") for s in slices.get("items") or []):
            why = f"DeviceClass {vendor.device_class} exists and {vendor.driver_name} publishes devices"
            return dataclasses.replace(vendor, allocation="dra"), why
    resource = vendor.extended_resource or ""
    with contextlib.suppress(ApiError, OSError, TimeoutError):
        nodes = (await kube.list(NODES)).get("items") or []
        if any(((n.get("status") or {}).get("allocatable") or {}).get(resource, "0") != "0" for n in nodes):
            why = f"no usable DeviceClass {vendor.device_class} with devices; nodes offer {resource}"
            return dataclasses.replace(vendor, allocation="device-plugin"), why
    return dataclasses.replace(
        vendor, allocation="dra"
    ), f"neither DRA devices nor {resource} found: trying DRA"


async def dra_backed(kube: KubeClient, vendor: Vendor) -> str | None:
    """The DeviceClass that serves the extended resource through DRA (1.37's extended resources via DRA):
    device-plugin mode then tests DRA's claims behind it, and the report says so."""
    if vendor.allocation != "device-plugin":
        return None
    with contextlib.suppress(ApiError, OSError, TimeoutError):
        for item in (await kube.list(DEVICE_CLASSES)).get("items") or []:
            if (item.get("spec") or {}).get("extendedResourceName") == vendor.extended_resource:
                return str(item["metadata"]["name"])
    return None


async def run_suite(kube: KubeClient, options: RunOptions) -> SuiteResult:
    """Run the selected probes; the e2e log goes to ``<out>/results/e2e.log`` as the run goes."""
    probes = select(PROBES, options.run_filter)
    vendor, how = await resolve_allocation(kube, options.vendor)
    options = dataclasses.replace(options, vendor=vendor)
    log = E2ELog(options.out_dir / RUN_LOG)
    runner = _Runner(kube, options, log)
    progress = Progress(options.progress, len(probes))
    wall = time.time()
    started_at = datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    started = time.monotonic()
    cluster = await platform_info(kube, vendor)
    log.write(f"accel-dra conformance {__version__}: run {runner.run_id} started {started_at}")
    log.write(f"Kubernetes {cluster.get('version') or 'version unknown'}")
    log.write(f"checklist {options.checklist.source} (Kubernetes {options.checklist.kubernetes_version})")
    log.write(
        f"vendor {vendor.name}: driver {vendor.driver_name}, class {vendor.device_class}, "
        f"allocation {vendor.allocation}"
        + (f" ({vendor.extended_resource})" if vendor.allocation == "device-plugin" else "")
    )
    if how:
        log.write(f"allocation auto: {vendor.allocation} ({how})")
    backed = await dra_backed(kube, vendor)
    if backed:
        cluster["extendedResourceDeviceClass"] = backed
        log.write(
            f"{vendor.extended_resource} is served by DRA through DeviceClass {backed} (extendedResourceName)"
        )
    log.write(f"namespace {runner.namespace}; probes: {', '.join(p.test for p in probes) or 'none'}")
    results: list[ProbeResult] = []
    interrupted = False
    try:
        await runner.create_namespace()
        for index, probe in enumerate(probes, 1):
            result, interrupted = await runner.run_probe(probe, index, progress)
            results.append(result)
            if interrupted:
                break
    except asyncio.CancelledError:  # Ctrl-C between probes
        interrupted = True
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    finally:
        if not options.keep_namespace:
            progress.message(f"cleaning up namespace {runner.namespace}")
            with contextlib.suppress(ApiError, OSError, TimeoutError):
                await runner.delete_namespace()
    if interrupted:
        log.write("run interrupted (Ctrl-C): remaining probes not run; objects cleaned up")
    log.write(f"run {runner.run_id} finished in {time.monotonic() - started:.1f}s")
    log.close()
    return SuiteResult(
        run_id=runner.run_id,
        namespace=runner.namespace,
        started=started_at,
        duration=time.monotonic() - started,
        cluster=cluster,
        vendor=vendor,
        checklist=options.checklist,
        probes=results,
        interrupted=interrupted,
        sandbox=options.sandbox,
        records=log.records,
        started_at=wall,
        command=options.command,
    )
