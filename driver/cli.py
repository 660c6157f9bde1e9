"""The ``accel-dra`` command line.

Each subcommand names the light function that declares its flags and the module function that runs it;
the running module is imported only when that subcommand is chosen, so the CLI starts fast and a broken
optional dependency of one subcommand cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from driver import __version__, config


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    target: str  # "module:function" taking the parsed args and returning an exit code


def _plugin_args(parser: argparse.ArgumentParser) -> None:
    config.add_plugin_arguments(parser)


def _discover_args(parser: argparse.ArgumentParser) -> None:
    from driver.resources.cli import add_discover_arguments

    add_discover_arguments(parser)


def _validate_args(parser: argparse.ArgumentParser) -> None:
    from driver.resources.cli import add_validate_arguments

    add_validate_arguments(parser)


COMMANDS: tuple[Command, ...] = (
    Command("plugin", "run the kubelet DRA plugin", _plugin_args, "driver.plugin.app:run"),
    Command(
        "discover",
        "print the ResourceSlices this machine's GPUs would be published as",
        _discover_args,
        "driver.resources.cli:run_discover",
    ),
    Command(
        "validate",
        "check ResourceSlice dumps (any driver) against the API rules and the standard attribute profile",
        _validate_args,
        "driver.resources.cli:run_validate",
    ),
)

GROUPS: dict[str, tuple[str, tuple[Command, ...]]] = {}
"""Nested command groups, e.g. ``accel-dra sim apiserver``: group name -> (help, commands)."""


def _add_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], commands: Sequence[Command]
) -> None:
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.configure(sub)
        sub.set_defaults(_target=command.target)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accel-dra",
        description="Reference accelerator driver for Kubernetes Dynamic Resource Allocation.",
    )
    parser.add_argument("--version", action="version", version=f"accel-dra {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_commands(subparsers, COMMANDS)
    for group, (help_text, commands) in GROUPS.items():
        group_parser = subparsers.add_parser(group, help=help_text, description=help_text)
        _add_commands(
            group_parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True), commands
        )
    return parser


def _resolve(target: str) -> Callable[[argparse.Namespace], int]:
    module_name, _, function = target.partition(":")
    func: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module_name), function)
    return func


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    target = getattr(args, "_target", None)
    if target is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return _resolve(target)(args)
    except KeyboardInterrupt:
        return 130
