"""The ``accel-dra`` command line.

Each subcommand is declared with a loader: a function that imports the subcommand's modules and returns
the function that declares its flags and the one that runs it. The imports are real -- type-checked, and
followed by any tool -- yet only the chosen subcommand's modules are loaded, so the CLI starts fast and a
missing optional dependency of one subcommand (the sandbox's, installed with the ``sandbox`` extra)
cannot break the others.

This module is the composition root: the only module outside :mod:`driver.sim` that names the sandbox,
and only inside the loaders of the commands that run it (tests/unit/project/test_layering.py).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from driver import __version__

if TYPE_CHECKING:
    from driver.conformance.cli import SandboxTarget

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
Loader = Callable[[], tuple[AddArguments, Run]]

SANDBOX_EXTRA_HINT = "pip install 'accel-dra[sandbox]'"


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    load: Loader
    #: Needs the sandbox extra: configured only when chosen, so a missing extra breaks nothing else.
    sandbox: bool = False


class MissingExtraError(Exception):
    """A subcommand's optional dependencies are not installed."""


# -- loaders ---------------------------------------------------------------------------------------


def _plugin() -> tuple[AddArguments, Run]:
    from driver import config
    from driver.plugin import app

    return config.add_plugin_arguments, app.run


def _plugin_probe() -> tuple[AddArguments, Run]:
    from driver.plugin import probe

    return probe.add_probe_arguments, probe.run_probe


def _exporter() -> tuple[AddArguments, Run]:
    from driver.exporter import options, server

    return options.add_exporter_arguments, server.run


def _discover() -> tuple[AddArguments, Run]:
    from driver.resources import cli

    return cli.add_discover_arguments, cli.run_discover


def _validate() -> tuple[AddArguments, Run]:
    from driver.resources import cli

    return cli.add_validate_arguments, cli.run_validate


def _deviceclasses() -> tuple[AddArguments, Run]:
    from driver.resources import cli

    return cli.add_deviceclasses_arguments, cli.run_deviceclasses


def _explain() -> tuple[AddArguments, Run]:
    from driver.allocation import cli

    return cli.add_explain_arguments, cli.run


def _health_clear() -> tuple[AddArguments, Run]:
    from driver.health import cli

    return cli.add_clear_arguments, cli.run_clear


def _health_status() -> tuple[AddArguments, Run]:
    from driver.health import cli

    return cli.add_status_arguments, cli.run_status


def _inject() -> tuple[AddArguments, Run]:
    from driver.health import cli

    return cli.add_inject_arguments, cli.run_inject


def _conformance_run() -> tuple[AddArguments, Run]:
    from driver.conformance import cli

    def run(args: argparse.Namespace) -> int:
        return cli.run_command(args, load_sandbox=_sandbox_target)

    return cli.add_run_arguments, run


def _conformance_check() -> tuple[AddArguments, Run]:
    from driver.conformance import cli

    return cli.add_check_arguments, cli.check_command


def _sandbox_target() -> SandboxTarget | None:
    try:
        _require_sandbox("conformance run --sandbox")
    except MissingExtraError:
        return None
    from driver.sim import conformance

    return conformance


def _demo() -> tuple[AddArguments, Run]:
    _require_sandbox("demo")
    from driver.sim import demo

    return demo.add_demo_arguments, demo.run_demo


def _sim_apiserver() -> tuple[AddArguments, Run]:
    _require_sandbox("sim apiserver")
    from driver.sim import apiserver

    return apiserver.add_sim_apiserver_arguments, apiserver.run_sim_apiserver


def _gpu_load() -> tuple[AddArguments, Run]:
    _require_sandbox("sim gpu-load")
    from driver.sim import workload

    return workload.add_gpu_load_arguments, workload.run_gpu_load


#: What the ``sandbox`` extra installs (pyproject.toml), imported before a sandbox command is set up.
SANDBOX_MODULES = ("jsonpatch",)


def _require_sandbox(command: str) -> None:
    for module in SANDBOX_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise MissingExtraError(
                f"accel-dra {command} needs the sandbox's dependencies ({err}): {SANDBOX_EXTRA_HINT}"
            ) from err


# -- the table -------------------------------------------------------------------------------------

COMMANDS: tuple[Command, ...] = (
    Command("plugin", "run the kubelet DRA plugin", _plugin),
    Command("plugin-probe", "check that this node's plugin sockets answer (DaemonSet probes)", _plugin_probe),
    Command("exporter", "run the accelerator-metrics exporter", _exporter),
    Command("discover", "print the ResourceSlices this machine's GPUs would be published as", _discover),
    Command(
        "validate",
        "check ResourceSlice dumps (any driver) against the API rules and the standard attribute profile",
        _validate,
    ),
    Command(
        "deviceclasses",
        "print the DeviceClasses (chart values) for the MIG profiles the driver's GPUs publish",
        _deviceclasses,
    ),
    Command(
        "demo",
        "run the examples in a sandbox with simulated GPUs and control plane, and explain what happened",
        _demo,
        sandbox=True,
    ),
    Command("explain", "explain why ResourceClaims can or cannot be allocated on a node", _explain),
)

GROUPS: dict[str, tuple[str, tuple[Command, ...]]] = {
    "sim": (
        "sandbox tools: simulated control plane and workloads",
        (
            Command(
                "apiserver", "run the in-memory sandbox Kubernetes API server", _sim_apiserver, sandbox=True
            ),
            Command(
                "gpu-load", "simulate load on this container's GPUs (fake backend)", _gpu_load, sandbox=True
            ),
            Command("inject", "inject an XID or a lost GPU into a simulated GPU (fake backend)", _inject),
        ),
    ),
    "health": (
        "device health: clear taints, list tainted devices",
        (
            Command("clear", "clear the XID and lost-GPU taints of devices after a repair", _health_clear),
            Command("status", "list devices whose ResourceSlices carry health taints", _health_status),
        ),
    ),
    "conformance": (
        "Kubernetes AI-conformance probes and evidence for a DRA driver",
        (
            Command(
                "run",
                "run the probes against a cluster (or --sandbox) and fill the upstream checklist",
                _conformance_run,
            ),
            Command(
                "check",
                "apply the CNCF submission validator's rules to a filled checklist and the artifacts it cites",
                _conformance_check,
            ),
        ),
    ),
}
"""Nested command groups, e.g. ``accel-dra sim apiserver``: group name -> (help, commands)."""


def _first_word(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _add_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    commands: Sequence[Command],
    chosen: str | None,
) -> None:
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        if chosen == command.name or (chosen is None and not command.sandbox):
            add_arguments, _ = command.load()
            add_arguments(sub)
        sub.set_defaults(_command=command)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the subcommand it names gets its flags (and imports) set up.

    Raises :class:`MissingExtraError` when that subcommand's optional dependencies are missing."""
    parser = argparse.ArgumentParser(
        prog="accel-dra",
        description="Reference accelerator driver for Kubernetes Dynamic Resource Allocation.",
    )
    parser.add_argument("--version", action="version", version=f"accel-dra {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # None configures every subcommand but the sandbox's; "" configures none (another one was chosen).
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
    try:
        parser = build_parser(args_list)
        args = parser.parse_args(args_list)
        command: Command | None = getattr(args, "_command", None)
        if command is None:
            parser.print_help(sys.stderr)
            return 2
        _, run = command.load()
    except MissingExtraError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
