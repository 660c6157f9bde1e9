"""Runs the probes against a cluster and turns their results into checklist entries.

One namespace per run (``accel-dra-conformance-<id>``), every object labelled with the run id; each probe
runs under its own timeout and cleans up after itself; the namespace is deleted at the end, also when the run
is interrupted. :func:`requirement_fills` (pure) decides what the checklist says.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from driver import __version__
from driver.conformance.checklist import Checklist, Fill
from driver.conformance.context import ProbeContext, run_labels
from driver.conformance.e2elog import E2ELog
from driver.conformance.model import CheckResult, Probe, ProbeResult, summarize
from driver.conformance.probes import PROBES
from driver.conformance.progress import Progress
from driver.conformance.vendor import Vendor
from driver.kube.client import NAMESPACES, ApiError, KubeClient

RESULTS_DIR = "results"
JUNIT = f"{RESULTS_DIR}/junit.xml"
RESULTS_JSON = f"{RESULTS_DIR}/results.json"
E2E_LOG = f"{RESULTS_DIR}/e2e.log"
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


async def _cluster_info(kube: KubeClient) -> dict[str, Any]:
    info: dict[str, Any] = {"server": kube.host}
    with contextlib.suppress(ApiError, OSError, TimeoutError, ValueError):
        version = await kube.request("GET", "/version")
        info["version"] = version.get("gitVersion", "")
    return info


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
        first = self.log.lines + 1
        self.log.write(f"=== RUN   {probe.test}")
        self.log.note(f"{probe.title} [{', '.join(probe.requirements) or 'no checklist requirement'}]")
        progress.start(index, probe.test, timeout)
        ctx = ProbeContext(
            kube=self.kube,
            vendor=vendor,
            namespace=self.namespace,
            run_id=self.run_id,
            probe=probe,
            log=self.log,
            on_step=progress.step,
        )
        started = time.monotonic()
        interrupted = False
        reason = not_applicable(probe, vendor)
        if reason is not None:
            ctx.checks.append(
                CheckResult("NotApplicable", "skipped", f"declared N/A by the vendor: {reason}")
            )
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
        word = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[outcome]
        self.log.write(f"--- {word}: {probe.test} ({duration:.2f}s)")
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
            log_lines=(first, self.log.lines),
            data=ctx.data,
            interrupted=interrupted,
            required=probe.required,
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
        ctx.log.note(f"{why} while {ctx.step_text}")


async def run_suite(kube: KubeClient, options: RunOptions) -> SuiteResult:
    """Run the selected probes; the e2e log goes to ``<out>/results/e2e.log`` as the run goes."""
    probes = select(PROBES, options.run_filter)
    log = E2ELog(options.out_dir / E2E_LOG)
    runner = _Runner(kube, options, log)
    progress = Progress(options.progress, len(probes))
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    started = time.monotonic()
    cluster = await _cluster_info(kube)
    log.write(f"accel-dra conformance {__version__}: run {runner.run_id} started {started_at}")
    log.write(f"cluster {cluster.get('server')} ({cluster.get('version', 'version unknown')})")
    log.write(f"checklist {options.checklist.source} (Kubernetes {options.checklist.kubernetes_version})")
    log.write(
        f"vendor {options.vendor.name}: driver {options.vendor.driver_name}, class {options.vendor.device_class}"
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
        vendor=options.vendor,
        checklist=options.checklist,
        probes=results,
        interrupted=interrupted,
        sandbox=options.sandbox,
    )


# -- what the checklist says ---------------------------------------------------------------------------


def evidence(result: ProbeResult) -> tuple[str, ...]:
    first, last = result.log_lines
    return (
        f"file://{JUNIT}#{result.test}",
        f"file://{E2E_LOG}#L{first}-L{last}",
        f"file://{REPORT}#{result.probe}",
    )


def _notes(results: Sequence[ProbeResult], vendor: Vendor, run_id: str, sandbox: bool) -> str:
    parts = []
    for r in results:
        passed = sum(c.outcome == "passed" for c in r.checks)
        others = "".join(f"; {c.name} {c.outcome}: {c.message}" for c in r.checks if c.outcome != "passed")
        missing = [n for n in r.unverified() if n not in {c.name for c in r.checks}]
        if missing:
            others += f"; not run: {', '.join(missing)}"
        parts.append(f"{r.test} {r.outcome} ({passed}/{len(r.checks)} checks passed{others})")
    sandbox_note = " (SANDBOX: a simulated cluster, not evidence for a platform)" if sandbox else ""
    return (
        f"Checked by accel-dra conformance {__version__}, run {run_id}{sandbox_note}, DRA driver "
        f"{vendor.driver_name}: " + "; ".join(parts)
    )


def _status(results: Sequence[ProbeResult], ran: Sequence[CheckResult]) -> str:
    """Implemented only when every check that ran passed and every required check ran."""
    passed = sum(c.outcome == "passed" for c in ran)
    if not passed:
        return "Not Implemented"
    if passed == len(ran) and not any(r.unverified() for r in results):
        return "Implemented"
    return "Partially Implemented"


def _covered(requirement_id: str, results: Sequence[ProbeResult]) -> list[ProbeResult]:
    """The results that speak for a requirement (none when a probe for it was interrupted)."""
    mine = [r for r in results if requirement_id in r.requirements]
    return [] if any(r.interrupted for r in mine) else mine


def requirement_fills(
    checklist: Checklist,
    results: Sequence[ProbeResult],
    vendor: Vendor,
    run_id: str,
    *,
    sandbox: bool = False,
) -> dict[str, Fill]:
    """Status, evidence and notes for each requirement the run covered (others are left as they were).

    Implemented when every check that ran passed and every required check of its probes ran; Not
    Implemented when no check passed; Partially Implemented otherwise (a failure, or a required check that
    was skipped or never reached: the run did not show the requirement met). N/A (with the vendor's reason)
    when the vendor declared it and the suite covers it. A requirement whose checks were all skipped, or
    whose probe was interrupted, is left as it was.
    """
    fills: dict[str, Fill] = {}
    for requirement in checklist.requirements:
        mine = _covered(requirement.id, results)
        if not mine:
            continue
        if requirement.id in vendor.not_applicable:
            fills[requirement.id] = Fill("N/A", (), vendor.not_applicable[requirement.id])
            continue
        ran = [c for r in mine for c in r.checks if c.outcome != "skipped"]
        if not ran:
            continue
        proof = tuple(e for r in mine for e in evidence(r))
        fills[requirement.id] = Fill(_status(mine, ran), proof, _notes(mine, vendor, run_id, sandbox))
    return fills


def must_failures(
    checklist: Checklist, fills: Mapping[str, Fill], results: Sequence[ProbeResult] = ()
) -> list[str]:
    """MUST requirements the run covered that are not Implemented.

    The CNCF validator accepts nothing but Implemented for a MUST, so a MUST declared N/A is listed too, and
    so is one whose checks (given ``results``) were all skipped: the run did not show it met.
    """
    failures = []
    for r in checklist.requirements:
        if r.level != "MUST":
            continue
        fill = fills.get(r.id)
        if fill is None:
            if _covered(r.id, results):
                failures.append(f"{r.id} (not verified: every check was skipped)")
        elif fill.status == "N/A":
            failures.append(f"{r.id} (N/A, but a MUST must be Implemented)")
        elif fill.status != "Implemented":
            failures.append(f"{r.id} ({fill.status})")
    return failures
