"""The ``accel-dra`` command line.

Each subcommand names, as ``module:function`` strings, the function that declares its flags and the one that
runs it. Only the chosen subcommand's modules are imported, so the CLI starts fast and a broken optional
dependency of one subcommand cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from driver import __version__


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: str  # "module:function" adding the flags to an ArgumentParser
    target: str  # "module:function" taking the parsed args and returning an exit code


COMMANDS: tuple[Command, ...] = (
    Command(
        "plugin", "run the kubelet DRA plugin", "driver.config:add_plugin_arguments", "driver.plugin.app:run"
    ),
    Command(
        "plugin-probe",
        "check that this node's plugin sockets answer (DaemonSet probes)",
        "driver.plugin.probe:add_probe_arguments",
        "driver.plugin.probe:run_probe",
    ),
    Command(
        "exporter",
        "run the accelerator-metrics exporter",
        "driver.exporter.options:add_exporter_arguments",
        "driver.exporter.server:run",
    ),
    Command(
        "discover",
        "print the ResourceSlices this machine's GPUs would be published as",
        "driver.resources.cli:add_discover_arguments",
        "driver.resources.cli:run_discover",
    ),
    Command(
        "validate",
        "check ResourceSlice dumps (any driver) against the API rules and the standard attribute profile",
        "driver.resources.cli:add_validate_arguments",
        "driver.resources.cli:run_validate",
    ),
    Command(
        "deviceclasses",
        "print the DeviceClasses (chart values) for the MIG profiles the driver's GPUs publish",
        "driver.resources.cli:add_deviceclasses_arguments",
        "driver.resources.cli:run_deviceclasses",
    ),
    Command(
        "demo",
        "run the examples in a sandbox with simulated GPUs and control plane, and explain what happened",
        "driver.sim.demo:add_demo_arguments",
        "driver.sim.demo:run_demo",
    ),
    Command(
        "explain",
        "explain why ResourceClaims can or cannot be allocated on a node",
        "driver.allocation.cli:add_explain_arguments",
        "driver.allocation.cli:run",
    ),
)

GROUPS: dict[str, tuple[str, tuple[Command, ...]]] = {
    "sim": (
        "sandbox tools: simulated control plane and workloads",
        (
            Command(
                "apiserver",
                "run the in-memory sandbox Kubernetes API server",
                "driver.sim.apiserver:add_sim_apiserver_arguments",
                "driver.sim.apiserver:run_sim_apiserver",
            ),
            Command(
                "gpu-load",
                "simulate load on this container's GPUs (fake backend)",
                "driver.sim.workload:add_gpu_load_arguments",
                "driver.sim.workload:run_gpu_load",
            ),
            Command(
                "inject",
                "inject an XID or a lost GPU into a simulated GPU (fake backend)",
                "driver.health.cli:add_inject_arguments",
                "driver.health.cli:run_inject",
            ),
        ),
    ),
    "health": (
        "device health: clear taints, list tainted devices",
        (
            Command(
                "clear",
                "clear the XID and lost-GPU taints of devices after a repair",
                "driver.health.cli:add_clear_arguments",
                "driver.health.cli:run_clear",
            ),
            Command(
                "status",
                "list devices whose ResourceSlices carry health taints",
                "driver.health.cli:add_status_arguments",
                "driver.health.cli:run_status",
            ),
        ),
    ),
    "conformance": (
        "Kubernetes AI-conformance probes and evidence for a DRA driver",
        (
            Command(
                "run",
                "run the probes against a cluster (or --sandbox) and fill the upstream checklist",
                "driver.conformance.cli:add_run_arguments",
                "driver.conformance.cli:run_command",
            ),
            Command(
                "check",
                "apply the CNCF submission validator's rules to a filled checklist and the artifacts it cites",
                "driver.conformance.cli:add_check_arguments",
                "driver.conformance.cli:check_command",
            ),
        ),
    ),
}
"""Nested command groups, e.g. ``accel-dra sim apiserver``: group name -> (help, commands)."""


def _load(ref: str) -> Callable[..., Any]:
    module_name, _, function = ref.partition(":")
    func: Callable[..., Any] = getattr(importlib.import_module(module_name), function)
    return func


def _first_word(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _add_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    commands: Sequence[Command],
    chosen: str | None,
) -> None:
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        if chosen is None or command.name == chosen:
            _load(command.arguments)(sub)
        sub.set_defaults(_target=command.target)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the subcommand it names gets its flags (and imports) set up."""
    parser = argparse.ArgumentParser(
        prog="accel-dra",
        description="Reference accelerator driver for Kubernetes Dynamic Resource Allocation.",
    )
    parser.add_argument("--version", action="version", version=f"accel-dra {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # None configures every subcommand; "" configures none (another one was chosen).
    first = None if argv is None else (_first_word(argv) or "")
    _add_commands(subparsers, COMMANDS, first)
    for group, (help_text, commands) in GROUPS.items():
        group_parser = subparsers.add_parser(group, help=help_text, description=help_text)
        nested = group_parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
        chosen = first
        if argv is not None:
            chosen = (_first_word(argv[argv.index(group) + 1 :]) or "") if first == group else ""
        _add_commands(nested, commands, chosen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    target = getattr(args, "_target", None)
    if target is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = _load(target)(args)
    except KeyboardInterrupt:
        return 130
    return code
