"""``accel-dra conformance run`` and ``check``: the AI-conformance probes against a cluster (or the sandbox),
with evidence; the CNCF validator's rules applied to a filled checklist.

``run`` exits 0 only when every MUST requirement of the filled checklist is Implemented (verified, imported or
self-declared) and the output breaks none of the validator's rules; 1 otherwise (a MUST failed, was not
verified, or is left for the platform); 2 for bad input (checklist, vendor file, metadata, imports); 130 when
interrupted (the run's objects are still cleaned up). ``check`` exits 0 when the file passes, 1 when it does
not, 2 when it cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from driver.kube.client import KubeClient

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
        "--sandbox-profile",
        default=None,
        help="fake machine profile of the sandbox node (default: the shape's)",
    )
    target.add_argument(
        "--sandbox-shape",
        default="accel-dra",
        choices=["accel-dra", "amd", "intel"],
        help="whose DRA driver the sandbox runs: this one, or a stand-in shaped like AMD's or Intel's",
    )
    target.add_argument(
        "--sandbox-shared-gpus",
        default=None,
        metavar="LIST",
        help="GPUs this driver's sandbox plugin shares by memory (its --shared-gpus; default: one GPU of the "
        "default profile, none of another; '' for none)",
    )
    target.add_argument(
        "--sandbox-device-plugin",
        action="store_true",
        help="also run a simulated device plugin offering the shape's extended resource (nvidia.com/gpu, ...)",
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
        help="vendor settings: a YAML file or a preset (accel-dra, nvidia, amd, intel, sandbox, sandbox-amd, "
        "sandbox-intel); default accel-dra, or the sandbox shape's preset with --sandbox",
    )
    run.add_argument(
        "--import-junit",
        action="append",
        default=[],
        metavar="FILE",
        help="another suite's junit.xml (e.g. upstream's Go tests) as evidence for the requirements its tests "
        "cover; repeatable",
    )
    run.add_argument(
        "--import-map",
        action="append",
        default=[],
        metavar="TEST=REQUIREMENT",
        help="map an imported test to a requirement id (upstream's test names are mapped already)",
    )
    run.add_argument(
        "--uncovered",
        choices=["open", "not-implemented"],
        default="open",
        help="a MUST nothing verified: leave it blank for the platform with a note (open), or write Not "
        "Implemented",
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
    for flag, key, text in METADATA_FLAGS:
        meta.add_argument(flag, dest=f"m_{key}", default=None, metavar="VALUE", help=text)
    vendor = parser.add_argument_group("vendor overrides (on top of --vendor)")
    vendor.add_argument(
        "--device-glob",
        dest="v_device_globs",
        action="append",
        default=None,
        help="device nodes that stand for accelerators (repeatable; the first glob's matches are counted), "
        "e.g. /dev/dri/renderD* then /dev/kfd",
    )
    for flag, dest, kind, text in _VENDOR_FLAGS:
        vendor.add_argument(flag, dest=dest, type=kind, default=None, help=text)


#: (flag, metadata key, help): the checklist metadata the CNCF validator requires (repoUrl is optional).
METADATA_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--platform-name", "platformName", "metadata platformName"),
    ("--platform-version", "platformVersion", "metadata platformVersion"),
    (
        "--vendor-name",
        "vendorName",
        "metadata vendorName: the organisation's name exactly as the CNCF landscape lists it",
    ),
    ("--website-url", "websiteUrl", "metadata websiteUrl"),
    ("--repo-url", "repoUrl", "metadata repoUrl (optional)"),
    ("--documentation-url", "documentationUrl", "metadata documentationUrl"),
    ("--product-logo-url", "productLogoUrl", "metadata productLogoUrl (an .svg, .eps or .ai file)"),
    ("--description", "description", "metadata description"),
    ("--contact-email", "contactEmailAddress", "metadata contactEmailAddress"),
    (
        "--k8s-conformance-url",
        "k8sConformanceUrl",
        "metadata k8sConformanceUrl: https://github.com/cncf/k8s-conformance/tree/main/v1.NN/<product>",
    ),
)

_VENDOR_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--driver-name", "v_driver_name", str, "DRA driver name (ResourceSlice spec.driver)"),
    ("--device-class", "v_device_class", str, "DeviceClass the probe claims use"),
    (
        "--allocation",
        "v_allocation",
        str,
        "dra (claims), device-plugin (extended-resource limits) or auto (DRA when its DeviceClass and devices exist)",
    ),
    ("--extended-resource", "v_extended_resource", str, "the device plugin's resource, e.g. nvidia.com/gpu"),
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
    for _flag, key, _text in METADATA_FLAGS:
        value = getattr(args, f"m_{key}", None)
        if value is not None:
            values[key] = value
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


SANDBOX_PRESETS = {"accel-dra": "sandbox", "amd": "sandbox-amd", "intel": "sandbox-intel"}


class SandboxTarget(Protocol):
    """The sandbox as a cluster to run against (``--sandbox``); :mod:`driver.sim.conformance` is one.

    The command line hands it in (:mod:`driver.cli`), so this package never imports the sandbox."""

    def unavailable(self) -> str | None:
        """Why the sandbox cannot run on this machine, or None."""
        ...

    def cluster(
        self, args: argparse.Namespace, progress: TextIO | None
    ) -> AbstractAsyncContextManager[KubeClient]:
        """Start the sandbox the ``--sandbox-*`` flags describe; a client of its API server."""
        ...


#: Loads the sandbox target (None: the sandbox is not installed -- the ``sandbox`` extra).
SandboxLoader = Callable[[], SandboxTarget | None]


def _no_sandbox() -> SandboxTarget | None:
    return None


async def _run(args: argparse.Namespace, options: Any, sandbox: SandboxTarget | None) -> Any:
    from driver.conformance.runner import run_suite
    from driver.kube.client import KubeClient

    if sandbox is None:
        kube = await KubeClient.connect(args.kubeconfig, args.context)
        async with kube:
            return await run_suite(kube, options)
    async with sandbox.cluster(args, options.progress) as kube:
        return await run_suite(kube, options)


async def _main(args: argparse.Namespace, options: Any, sandbox: SandboxTarget | None) -> Any:
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
    return await _run(args, options, sandbox)


def _import_map(items: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in items:
        test, sep, requirement = item.partition("=")
        if not sep or not test.strip() or not requirement.strip():
            raise UsageError(f"--import-map {item!r}: expected TEST=REQUIREMENT")
        mapping[test.strip()] = requirement.strip()
    return mapping


def _imports(args: argparse.Namespace, checklist: Any, out_dir: Path) -> list[Any]:
    """Read each --import-junit file, map its tests to requirements and copy it into the results."""
    from driver.conformance.evidence import UPSTREAM_TESTS, Imported
    from driver.conformance.gotest import ArtifactError, parse_junit

    extra = _import_map(args.import_map)
    known = {r.id for r in checklist.requirements}
    unknown = sorted(set(extra.values()) - known)
    if unknown:
        raise UsageError(f"--import-map names requirement(s) not in the checklist: {', '.join(unknown)}")
    mapping = {test: req for req, test in UPSTREAM_TESTS.items() if req in known} | extra
    imports = []
    for index, origin in enumerate(args.import_junit, 1):
        try:
            text = Path(origin).read_text(encoding="utf-8")
            report = parse_junit(text)
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"--import-junit {origin}: {err}") from None
        except ArtifactError as err:
            raise UsageError(f"--import-junit {origin}: {err}") from None
        stored = f"results/imported/{index}/junit.xml"
        (out_dir / stored).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / stored).write_text(text, encoding="utf-8")
        covered = {t: r for t, r in mapping.items() if report.outcome(t) is not None}
        if not covered:
            raise UsageError(
                f"--import-junit {origin}: none of its tests maps to a requirement (add --import-map TEST=REQUIREMENT)"
            )
        imports.append(Imported(origin, stored, report, covered))
    return imports


def _command_line() -> list[str]:
    """The command as the user typed it (for the report's steps to reproduce); empty when called otherwise."""
    argv = sys.argv[1:]
    return ["accel-dra", *argv] if argv[:2] == ["conformance", "run"] else []


def _sandbox(load: SandboxLoader) -> SandboxTarget:
    target = load()
    if target is None:
        raise UsageError(
            "--sandbox needs the sandbox, which is not installed: pip install 'accel-dra[sandbox]'"
        )
    why = target.unavailable()
    if why is not None:
        raise UsageError(f"--sandbox: {why}")
    return target


def run_command(args: argparse.Namespace, load_sandbox: SandboxLoader = _no_sandbox) -> int:
    from driver.conformance.checklist import ChecklistError, load_checklist
    from driver.conformance.report import write_outputs
    from driver.conformance.runner import RunOptions
    from driver.conformance.vendor import VendorError, load_vendor, with_overrides
    from driver.log import setup

    setup(args.log_level)
    out_dir = Path(args.out)
    try:
        sandbox = _sandbox(load_sandbox) if args.sandbox else None  # before anything is read
        checklist = load_checklist(args.checklist)
        metadata = _metadata(args)
        default = SANDBOX_PRESETS[args.sandbox_shape] if args.sandbox else "accel-dra"
        vendor = with_overrides(load_vendor(args.vendor or default), _overrides(args))
        if args.sandbox and args.kubeconfig:
            raise UsageError("--sandbox and --kubeconfig exclude each other")
        if args.sandbox_shared_gpus is not None and not (args.sandbox and args.sandbox_shape == "accel-dra"):
            raise UsageError(
                "--sandbox-shared-gpus sets the GPUs this driver's sandbox plugin shares: it needs --sandbox "
                f"with --sandbox-shape accel-dra{'' if args.sandbox else ' (no --sandbox given)'}"
                f"{f' (not {args.sandbox_shape})' if args.sandbox and args.sandbox_shape != 'accel-dra' else ''}"
            )
        if args.run:
            _check_regex(args.run)
        _import_map(args.import_map)
        for origin in args.import_junit:
            if not Path(origin).is_file():
                raise UsageError(f"--import-junit {origin}: no such file")
    except (ChecklistError, VendorError, UsageError, TypeError, ValueError) as err:
        print(f"accel-dra conformance: {err}", file=sys.stderr)
        return EXIT_USAGE
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        imports = _imports(args, checklist, out_dir)
    except UsageError as err:
        print(f"accel-dra conformance: {err}", file=sys.stderr)
        return EXIT_USAGE
    options = RunOptions(
        checklist=checklist,
        vendor=vendor,
        out_dir=out_dir,
        run_filter=args.run,
        timeout=args.timeout,
        progress=None if args.quiet else sys.stderr,
        keep_namespace=args.keep_namespace,
        sandbox=args.sandbox,
        command=_command_line(),
    )
    try:
        suite = asyncio.run(_main(args, options, sandbox))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("accel-dra conformance: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # the cluster or the sandbox could not be used at all
        print(f"accel-dra conformance: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_MUST_FAILED
    outputs = write_outputs(suite, out_dir, metadata, imports=imports, uncovered=args.uncovered)
    _summary(suite, outputs)
    if suite.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_MUST_FAILED if outputs.must_failures or outputs.problems else EXIT_OK


def _summary(suite: Any, outputs: Any) -> None:
    counts = {k: sum(p.outcome == k for p in suite.probes) for k in ("passed", "failed", "skipped")}
    print(
        f"accel-dra conformance: {len(suite.probes)} probe(s): {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped ({suite.duration:.1f}s)"
    )
    shown = [p for p in outputs.files if p.name in ("PRODUCT.yaml", "report.html", "summary.json")]
    for path in shown:
        relative = os.path.relpath(path)
        print(f"  wrote {path if relative.startswith('..') else relative}")
    print(f"  wrote {len(outputs.files) - len(shown)} artifact file(s) under results/")
    for warning in outputs.warnings:
        print(f"  warning: {warning}")
    for problem in outputs.problems:
        print(f"  problem: {problem}")
    for todo in outputs.todos:
        print(f"  to do: {todo}")
    if outputs.must_failures:
        print("  MUST requirements not Implemented (the CNCF validator rejects each):")
        for failure in outputs.must_failures:
            print(f"    - {failure}")


# -- check -----------------------------------------------------------------------------------------------


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", metavar="FILE", help="a filled PRODUCT.yaml (evidence paths relative to its directory)"
    )
    parser.add_argument(
        "--template", default=None, metavar="PATH|URL", help="the upstream checklist it was filled from"
    )
    parser.add_argument(
        "--landscape",
        default=None,
        metavar="FILE",
        help="a copy of the CNCF landscape.yml, to check vendorName against the CNCF members offline",
    )
    parser.add_argument(
        "--draft",
        action="store_true",
        help="list what only the platform can add (placeholder metadata, MUSTs left blank) as to-dos, not errors",
    )


def check_command(args: argparse.Namespace) -> int:
    from driver.conformance.checklist import ChecklistError, load_checklist
    from driver.conformance.submission import check_submission, landscape_members

    path = Path(args.file)
    try:
        template = load_checklist(args.template) if args.template else None
        members = (
            landscape_members(Path(args.landscape).read_text(encoding="utf-8")) if args.landscape else None
        )
    except (ChecklistError, OSError, ValueError) as err:
        print(f"accel-dra conformance check: {err}", file=sys.stderr)
        return EXIT_USAGE
    if not path.is_file():
        print(f"accel-dra conformance check: {path}: no such file", file=sys.stderr)
        return EXIT_USAGE
    result = check_submission(path, template, members=members, draft=args.draft)
    for label, items in (("error", result.errors), ("to do", result.todos), ("note", result.notes)):
        for item in items:
            print(f"{label}: {item}")
    verdict = "fails" if result.errors else "passes"
    extra = f", {len(result.todos)} to-do(s) for the platform" if result.todos else ""
    print(f"{path}: {verdict} the CNCF validator's rules ({len(result.errors)} error(s){extra})")
    return EXIT_MUST_FAILED if result.errors else EXIT_OK
