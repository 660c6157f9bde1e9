"""The sandbox as the cluster of ``accel-dra conformance run --sandbox``.

A :class:`driver.conformance.cli.SandboxTarget`, handed to the conformance command by the command line
(:mod:`driver.cli`): the conformance suite itself never imports the sandbox.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import TextIO

from driver.kube.client import KubeClient
from driver.sim.runtime import isolation_available
from driver.sim.sandbox import Sandbox, SandboxConfig
from driver.sim.shapes import SHAPES

#: The GPU the accel-dra shape's default profile (``dgx-h100-mig``: MIG on GPUs 6 and 7) shares by memory,
#: so that the sandbox offers every sharing strategy the suite checks (time slicing is a claim's setting).
SHARED_GPU = "0000:5d:00.0"


def _plugin_args(args: argparse.Namespace, profile: str) -> tuple[str, ...]:
    """``--shared-gpus`` for this driver's plugin: as asked, else the default profile's shared GPU."""
    if args.sandbox_shape != "accel-dra":
        return ()
    shared = args.sandbox_shared_gpus
    if shared is None:
        shared = SHARED_GPU if profile == SHAPES["accel-dra"].profile else ""
    return (f"--shared-gpus={shared}",) if shared else ()


def sandbox_config(args: argparse.Namespace) -> SandboxConfig:
    shape = SHAPES[args.sandbox_shape]
    profile = args.sandbox_profile or shape.profile
    return SandboxConfig(
        profile=profile,
        shape=args.sandbox_shape,
        extra_plugin_args=_plugin_args(args, profile),
        device_plugin=args.sandbox_device_plugin,
        faults=frozenset(args.sandbox_fault),
        log_level=args.log_level,
    )


def unavailable() -> str | None:
    if not isolation_available():
        return (
            "needs containers in their own mount namespace (root, or unprivileged user namespaces); "
            "without it every container would see the host's /dev and the probes would say nothing"
        )
    return None


@contextlib.asynccontextmanager
async def cluster(args: argparse.Namespace, progress: TextIO | None) -> AsyncIterator[KubeClient]:
    config = sandbox_config(args)
    if progress is not None:
        shape = "" if config.shape == "accel-dra" else f", shaped like {config.shape}'s driver"
        print(f"starting the sandbox ({config.profile}{shape}) ...", file=progress, flush=True)
    async with Sandbox(config) as box, await KubeClient.connect(str(box.kubeconfig)) as kube:
        yield kube
