"""``accel-dra conformance run``: the AI-conformance probes against a cluster (or the sandbox), with evidence.

Exit codes: 0 when no covered MUST requirement failed, 1 when one did, 2 for bad input (checklist, vendor
file, metadata), 130 when interrupted (the run's objects are still cleaned up).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_MUST_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``accel-dra conformance run`` (imports nothing heavy)."""
    target = parser.add_argument_group("cluster")
    target.add_argument(
        "--kubeconfig", default=None, help="kubeconfig of the cluster (default $KUBECONFIG, else in-cluster)"
    )
    target.add_argument("--context", default=None, help="kubeconfig context")
    target.add_argument(
        "--sandbox",
        action="store_true",
        help="start the accel-dra sandbox (simulated node and GPUs) and run against it",
    )
    target.add_argument(
        "--sandbox-profile", default="dgx-h100", help="fake machine profile of the sandbox node"
    )
    target.add_argument(
        "--sandbox-fault",
        action="append",
        default=[],
        metavar="NAME",
        help="inject a fault into the sandbox (the suite's self-tests): unlabelled-metrics, leaky-runtime, "
        "wrong-driver-version, incomplete-pool",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--checklist", required=True, metavar="PATH|URL", help="upstream KubernetesAIConformance-1.NN.yaml"
    )
    run.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (PRODUCT.yaml, report.html, results/)"
    )
    run.add_argument(
        "--run", default=None, metavar="REGEX", help="only probes whose name or test name matches"
    )
    run.add_argument(
        "--vendor",
        default=None,
        metavar="FILE|PRESET",
        help="vendor settings: a YAML file or a preset (accel-dra, nvidia, sandbox); default accel-dra, "
        "or sandbox with --sandbox",
    )
    run.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="per-probe timeout")
    run.add_argument(
        "--pod-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds a probe pod may take to start",
    )
    run.add_argument("--keep-namespace", action="store_true", help="leave the run's namespace for debugging")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    meta = parser.add_argument_group("checklist metadata")
    meta.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a metadata field (platformName=...)",
    )
    meta.add_argument("--metadata-file", default=None, metavar="FILE", help="YAML mapping of metadata fields")
    vendor = parser.add_argument_group("vendor overrides (on top of --vendor)")
    for flag, dest, kind, text in _VENDOR_FLAGS:
        vendor.add_argument(flag, dest=dest, type=kind, default=None, help=text)


_VENDOR_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--driver-name", "v_driver_name", str, "DRA driver name (ResourceSlice spec.driver)"),
    ("--device-class", "v_device_class", str, "DeviceClass the probe claims use"),
    ("--device-glob", "v_device_glob", str, "device nodes counted in containers, e.g. /dev/nvidia[0-9]*"),
    ("--probe-image", "v_probe_image", str, "image of the probe containers (needs sh)"),
    ("--metrics-namespace", "v_metrics.namespace", str, "namespace of the metrics Service"),
    ("--metrics-service", "v_metrics.service", str, "name of the metrics Service"),
    ("--metrics-port", "v_metrics.port", int, "port of the metrics Service"),
    ("--utilization-metric", "v_metrics.utilization", str, "utilization metric name (default: auto-detect)"),
    ("--memory-metric", "v_metrics.memory", str, "memory-usage metric name (default: auto-detect)"),
    ("--load-image", "v_load.image", str, "image of the workload that keeps an accelerator busy"),
    ("--load-command", "v_load.command", str, "sh command of that workload"),
)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {key.removeprefix("v_"): value for key, value in vars(args).items() if key.startswith("v_")}
    if args.pod_timeout is not None:
        values["pod_timeout"] = args.pod_timeout
    return values


class UsageError(Exception):
    pass


def _metadata(args: argparse.Namespace) -> dict[str, str]:
    import yaml

    from driver.conformance.checklist import check_metadata

    values: dict[str, str] = {}
    if args.metadata_file:
        try:
            data = yaml.safe_load(Path(args.metadata_file).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise UsageError(f"--metadata-file {args.metadata_file}: {err}") from err
        if not isinstance(data, dict):
            raise UsageError(f"--metadata-file {args.metadata_file}: expected a mapping of metadata fields")
        data = data.get("metadata", data)
        values.update({str(k): str(v) for k, v in data.items()})
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--metadata {item!r}: expected KEY=VALUE")
        values[key.strip()] = value
    problems = check_metadata(values)
    if problems:
        raise UsageError("; ".join(problems))
    return values


def _check_regex(pattern: str) -> None:
    import re

    try:
        re.compile(pattern)
    except re.error as err:
        raise UsageError(f"--run {pattern!r}: not a regular expression: {err}") from None


def _check_sandbox() -> None:
    from driver.sim.runtime import isolation_available

    if not isolation_available():
        raise UsageError(
            "--sandbox needs containers in their own mount namespace (root, or unprivileged user namespaces); "
            "without it every container would see the host's /dev and the probes would say nothing"
        )


async def _run(args: argparse.Namespace, options: Any) -> Any:
    from driver.conformance.runner import run_suite
    from driver.kube.client import KubeClient

    if not args.sandbox:
        kube = await KubeClient.connect(args.kubeconfig, args.context)
        async with kube:
            return await run_suite(kube, options)
    from driver.sim.sandbox import Sandbox, SandboxConfig  # only the --sandbox mode needs the simulator

    config = SandboxConfig(
        profile=args.sandbox_profile, faults=frozenset(args.sandbox_fault), log_level=args.log_level
    )
    if options.progress is not None:
        print(f"starting the sandbox ({args.sandbox_profile}) ...", file=options.progress, flush=True)
    async with Sandbox(config) as box, await KubeClient.connect(str(box.kubeconfig)) as kube:
        return await run_suite(kube, options)


async def _main(args: argparse.Namespace, options: Any) -> Any:
    """Run, turning the first Ctrl-C into a clean stop (a second one aborts)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def interrupt() -> None:
        if options.progress is not None:
            print("\ninterrupted: cleaning up (Ctrl-C again to abort)", file=options.progress, flush=True)
        loop.remove_signal_handler(signal.SIGINT)
        task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, interrupt)
    return await _run(args, options)


def run_command(args: argparse.Namespace) -> int:
    from driver.conformance.checklist import ChecklistError, load_checklist
    from driver.conformance.report import write_outputs
    from driver.conformance.runner import RunOptions
    from driver.conformance.vendor import VendorError, load_vendor, with_overrides
    from driver.log import setup

    setup(args.log_level)
    try:
        checklist = load_checklist(args.checklist)
        metadata = _metadata(args)
        vendor = with_overrides(
            load_vendor(args.vendor or ("sandbox" if args.sandbox else "accel-dra")), _overrides(args)
        )
        if args.sandbox and args.kubeconfig:
            raise UsageError("--sandbox and --kubeconfig exclude each other")
        if args.run:
            _check_regex(args.run)
        if args.sandbox:
            _check_sandbox()
    except (ChecklistError, VendorError, UsageError, TypeError, ValueError) as err:
        print(f"accel-dra conformance: {err}", file=sys.stderr)
        return EXIT_USAGE
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = RunOptions(
        checklist=checklist,
        vendor=vendor,
        out_dir=out_dir,
        run_filter=args.run,
        timeout=args.timeout,
        progress=None if args.quiet else sys.stderr,
        keep_namespace=args.keep_namespace,
        sandbox=args.sandbox,
    )
    try:
        suite = asyncio.run(_main(args, options))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("accel-dra conformance: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # the cluster or the sandbox could not be used at all
        print(f"accel-dra conformance: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_MUST_FAILED
    outputs = write_outputs(suite, out_dir, metadata, suite_log(out_dir))
    _summary(suite, outputs, out_dir)
    if suite.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_MUST_FAILED if outputs.must_failures or outputs.problems else EXIT_OK


def suite_log(out_dir: Path) -> list[str]:
    from driver.conformance.runner import E2E_LOG

    try:
        return (out_dir / E2E_LOG).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []


def _summary(suite: Any, outputs: Any, out_dir: Path) -> None:
    counts = {k: sum(p.outcome == k for p in suite.probes) for k in ("passed", "failed", "skipped")}
    print(
        f"accel-dra conformance: {len(suite.probes)} probe(s): {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped ({suite.duration:.1f}s)"
    )
    for path in outputs.files:
        shown = os.path.relpath(path)
        print(f"  wrote {path if shown.startswith('..') else shown}")
    for warning in outputs.warnings:
        print(f"  warning: {warning}")
    for problem in outputs.problems:
        print(f"  problem: {problem}")
    if outputs.must_failures:
        print(f"  MUST requirements not met: {', '.join(outputs.must_failures)}")
