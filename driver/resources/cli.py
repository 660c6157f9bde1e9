"""``accel-dra discover``, ``accel-dra validate`` and ``accel-dra deviceclasses``.

``discover`` prints the ResourceSlices the plugin would publish for this machine. ``validate`` checks
slice dumps from any vendor's driver against the API server's rules and the standard attribute profile.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from driver.resources.publishing import PublishOptions

from driver import DEFAULT_DRIVER_NAME

JSON = dict[str, Any]


# -- discover -------------------------------------------------------------------------------------


def add_discover_arguments(parser: argparse.ArgumentParser) -> None:
    from driver.config import add_publish_arguments
    from driver.flags import add_backend_arguments

    add_backend_arguments(parser)
    add_publish_arguments(parser)
    parser.add_argument(
        "--driver-name", default=os.environ.get("DRIVER_NAME", DEFAULT_DRIVER_NAME), help="DRA driver name"
    )
    parser.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME") or socket.gethostname(),
        help="node (and pool) name; default $NODE_NAME or the host name",
    )
    parser.add_argument(
        "--mig-mode",
        default=os.environ.get("MIG_MODE", "static"),
        help="MIG mode per GPU, as the plugin's flag (docs/mig.md), e.g. 'static,0000:3b:00.0=dynamic'",
    )
    parser.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


def discovered_slices(  # noqa: PLR0917 -- the plugin's own inputs, in its order
    backend_spec: str,
    driver: str,
    node: str,
    driver_root: str = "/",
    state_dir: str | None = None,
    options: PublishOptions | None = None,
    *,
    mig_mode: str = "static",
) -> list[JSON]:
    """The slices the plugin would publish, as a server would store them (names left to generateName);
    ``options``: the alpha fields asked for, as if the server keeps them.

    ``mig_mode``: the plugin's ``--mig-mode``; a malformed one raises ``ValueError``."""
    from driver.devices.backend import backend_options, open_backend
    from driver.devices.migmode import apply_mig_modes, parse_mig_modes
    from driver.resources.counters import counter_sets
    from driver.resources.publishing import PublishOptions, publish_entries
    from driver.resources.slices import slice_spec, split_pool

    modes = parse_mig_modes(mig_mode)
    backend = open_backend(
        backend_spec,
        **backend_options(backend_spec, node_name=node, driver_root=driver_root, state_dir=state_dir),
    )
    try:
        inventory = apply_mig_modes(backend.discover(), modes)
    finally:
        backend.close()
    chunks = split_pool(
        publish_entries(inventory.devices, inventory, driver, options or PublishOptions()),
        counter_sets(inventory),
    )
    return [
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"generateName": f"{node}-{driver}-"},
            "spec": slice_spec(driver, node, 1, len(chunks), chunk),
        }
        for chunk in chunks
    ]


def _dump(obj: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(obj, indent=2) + "\n"
    return str(yaml.safe_dump(obj, sort_keys=False))


def run_discover(args: argparse.Namespace) -> int:
    from driver.devices.backend import BackendError
    from driver.flags import ConfigError, check_driver_name
    from driver.log import setup
    from driver.resources.publishing import PublishOptions, SharedGpus

    setup(args.log_level)
    try:
        check_driver_name(args.driver_name)
        options = PublishOptions(
            list_attributes=args.list_attributes == "on",
            host_memory_per_pod=args.host_memory_per_pod,
            shared=SharedGpus(args.shared_gpus, args.share_memory_step) if args.shared_gpus else None,
        )
        slices = discovered_slices(
            args.backend,
            args.driver_name,
            args.node_name,
            args.driver_root,
            args.fake_state_dir,
            options,
            mig_mode=args.mig_mode,
        )
    except (BackendError, ConfigError, ValueError) as err:
        print(f"accel-dra discover: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(_dump({"apiVersion": "v1", "kind": "List", "items": slices}, args.output))
    return 0


# -- validate -------------------------------------------------------------------------------------


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="ResourceSlice YAML/JSON (object, List, '-')"
    )
    parser.add_argument(
        "--skip-profile",
        action="store_true",
        help="only check the API server's rules, not the attribute profile",
    )


class InputError(Exception):
    pass


def _documents(path: str) -> Iterator[Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"{path}: {err.strerror}") from err
    try:
        yield from (d for d in yaml.safe_load_all(text) if d is not None)
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML/JSON: {err}") from err


def resource_slices(doc: Any) -> Iterator[Mapping[str, Any]]:
    """ResourceSlices in a document: the object itself or the items of a list -- kubectl's ``List`` or a
    ``ResourceSliceList`` straight from the API, whose items carry no kind."""
    from driver.kube.lists import objects

    return (obj for obj in objects(doc) if obj.get("kind") == "ResourceSlice")


def as_v1(slice_obj: Mapping[str, Any]) -> JSON:
    """v1beta1 slices nest device fields under ``basic``; the API rules are checked on the v1 shape."""
    out: JSON = json.loads(json.dumps(slice_obj))
    if str(out.get("apiVersion", "")).endswith("/v1beta1"):
        for device in out.get("spec", {}).get("devices") or []:
            device.update(device.pop("basic", None) or {})
    return out


def slice_problems(slice_obj: Mapping[str, Any], profile: bool = True) -> list[str]:
    from driver.kube.api.resourceslice import validate_resource_slice
    from driver.resources.attributes import check_slice

    problems = [str(error) for error in validate_resource_slice(as_v1(slice_obj))]
    if profile:
        problems += [f"device {f.device}: {f.attribute}: {f.problem}" for f in check_slice(slice_obj)]
    return problems


def run_validate(args: argparse.Namespace) -> int:
    checked = devices = failures = 0
    try:
        for path in args.files:
            for doc in _documents(path):
                for slice_obj in resource_slices(doc):
                    checked += 1
                    devices += len(slice_obj.get("spec", {}).get("devices") or [])
                    name = slice_obj.get("metadata", {}).get("name") or "<unnamed>"
                    driver = slice_obj.get("spec", {}).get("driver", "?")
                    for problem in slice_problems(slice_obj, profile=not args.skip_profile):
                        failures += 1
                        print(f"{path}: ResourceSlice {name} (driver {driver}): {problem}")
    except InputError as err:
        print(f"accel-dra validate: {err}", file=sys.stderr)
        return 2
    if not checked:
        print("accel-dra validate: no ResourceSlice found in the input", file=sys.stderr)
        return 2
    verdict = "OK" if not failures else f"{failures} problem(s)"
    print(f"{checked} ResourceSlice(s), {devices} device(s) checked: {verdict}")
    return 1 if failures else 0


# -- deviceclasses --------------------------------------------------------------------------------


def add_deviceclasses_arguments(parser: argparse.ArgumentParser) -> None:
    from driver.flags import add_kube_arguments

    parser.add_argument(
        "files", nargs="*", metavar="FILE", help="ResourceSlice dumps to read instead of the API server"
    )
    add_kube_arguments(parser)
    parser.add_argument(
        "--driver-name", default=os.environ.get("DRIVER_NAME", DEFAULT_DRIVER_NAME), help="DRA driver name"
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=["values", "yaml"],
        default="values",
        help="values: the chart values that create them; yaml: the DeviceClass objects",
    )


async def _cluster_slices(kubeconfig: str | None) -> list[JSON]:
    from driver.kube.client import RESOURCE_SLICES, KubeClient

    async with await KubeClient.connect(kubeconfig) as kube:
        return list((await kube.list(RESOURCE_SLICES)).get("items") or [])


def run_deviceclasses(args: argparse.Namespace) -> int:
    """The MIG profiles the driver's devices publish, as chart values (or DeviceClasses) giving each its
    class and extended resource: "one class per MIG profile in use"."""
    import asyncio

    from driver.kube.client import ApiError
    from driver.kube.connection import KubeConfigError
    from driver.resources.deviceclasses import device_classes, mig_profiles_in_use

    slices: list[Mapping[str, Any]] = []
    try:
        if args.files:
            slices += [s for path in args.files for doc in _documents(path) for s in resource_slices(doc)]
        else:
            slices += asyncio.run(_cluster_slices(args.kubeconfig))
    except (InputError, ApiError, KubeConfigError, OSError) as err:
        print(f"accel-dra deviceclasses: {err}", file=sys.stderr)
        return 2
    profiles = mig_profiles_in_use(slices, args.driver_name)
    if not profiles:
        print(
            f"accel-dra deviceclasses: no MIG device of driver {args.driver_name} is published",
            file=sys.stderr,
        )
    if args.output == "values":
        values = {"deviceClasses": {"migProfiles": {"enabled": True, "profiles": profiles}}}
        sys.stdout.write(_dump(values, "yaml"))
        return 0
    classes = device_classes(args.driver_name, mig_profiles=profiles)
    sys.stdout.write(_dump({"apiVersion": "v1", "kind": "List", "items": classes}, "yaml"))
    return 0
