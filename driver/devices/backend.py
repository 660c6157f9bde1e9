"""The device backend interface and the ``--devices`` spec parser.

A backend answers "what hardware is there" (:meth:`DeviceBackend.discover`). Specs:

- ``nvml``: the real GPUs through NVML (``driver.devices.nvml``);
- ``fake:PROFILE``: a named simulated machine shipped with the package (``driver.devices.fake``);
- ``file:PATH``: a simulated machine described by a YAML file of the same schema.

What a backend can do beyond discovery is a set of separate, optional Protocols, so this minimal interface
stays stable: telemetry (:class:`~driver.devices.telemetry.TelemetrySource`), health events
(:class:`HealthCapable`), MIG instance control (:class:`~driver.devices.mig.MigControl`), extra CDI
containerEdits for every prepared claim (:class:`ContainerEditsSource`) and simulated GPUs
(:class:`SimulatedGpus`: no device nodes or driver tools on the host). They are read once, when the backend
is opened (:func:`capabilities`), into a typed :class:`Capabilities` that the processes pass on -- nobody asks a backend by name or probes it for methods later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from driver.devices.model import Inventory
from driver.devices.telemetry import TelemetrySource

if TYPE_CHECKING:
    from driver.devices.events import HealthSource
    from driver.devices.mig import MigControl


class BackendError(Exception):
    """The backend cannot be opened or used (unknown spec, NVML missing, invalid profile file)."""


@runtime_checkable
class DeviceBackend(Protocol):
    """Where device facts come from."""

    def discover(self) -> Inventory:
        """Enumerate the node's GPUs. Raises :class:`BackendError` when the hardware cannot be queried."""
        ...

    def close(self) -> None:
        """Release the backend (idempotent)."""
        ...


@runtime_checkable
class ContainerEditsSource(Protocol):
    """A backend that contributes CDI containerEdits to every prepared claim (the fake backend's state dir)."""

    def container_edits(self) -> dict[str, Any]:
        """CDI ``containerEdits`` JSON, ``{}`` when there is nothing to add."""
        ...


@runtime_checkable
class HealthCapable(Protocol):
    """A backend that reports device health: hardware error events and probes of its GPUs."""

    def health_source(self, inventory: Inventory, *, read_only: bool = False) -> HealthSource:
        """A new, not yet started :class:`~driver.devices.events.HealthSource` for these GPUs.

        ``read_only``: the source only watches (the exporter's XID counter) and writes nothing."""
        ...


@runtime_checkable
class SimulatedGpus(Protocol):
    """A backend whose GPUs exist only in software (the fake profiles): containers get no device nodes, and
    no driver tool (``nvidia-smi``) is run for them."""

    def simulated(self) -> bool:
        """True: the GPUs are simulated."""
        ...


@dataclass(frozen=True)
class Capabilities:
    """What an opened backend can do beyond discovery; None where it cannot."""

    simulated: bool = False
    telemetry: TelemetrySource | None = None
    health: HealthCapable | None = None
    #: Creates and destroys MIG instances (dynamic MIG, docs/mig.md).
    mig: MigControl | None = None
    #: CDI containerEdits every prepared claim gets ({} for none).
    container_edits: dict[str, Any] = field(default_factory=dict)


def capabilities(backend: DeviceBackend) -> Capabilities:
    """The backend's capabilities, read once (right after :func:`open_backend`)."""
    from driver.devices.mig import MigControl  # it imports this module (BackendError)

    return Capabilities(
        simulated=isinstance(backend, SimulatedGpus) and backend.simulated(),
        telemetry=backend if isinstance(backend, TelemetrySource) else None,
        health=backend if isinstance(backend, HealthCapable) else None,
        mig=backend if isinstance(backend, MigControl) else None,
        container_edits=dict(backend.container_edits()) if isinstance(backend, ContainerEditsSource) else {},
    )


def open_backend(spec: str, **options: Any) -> DeviceBackend:
    """Open the backend named by ``spec``.

    Options by kind: ``nvml``: ``sysfs_root`` (default ``/sys``), ``driver_root`` (where to find
    ``libnvidia-ml.so.1`` when it is not on the library path), ``nvml`` (a pynvml-compatible module, for
    tests); ``fake:``/``file:``: ``node_name`` (mixed into generated UUIDs so several simulated nodes with the
    same profile get distinct GPUs) and ``state_dir`` (the simulated load, see ``driver.devices.fake``;
    ``None`` or absent: the GPUs idle).
    """
    kind, _, arg = spec.partition(":")
    if kind == "nvml" and not arg:
        from driver.devices.nvml import NvmlBackend

        _check_options(spec, options, {"sysfs_root", "nvml", "driver_root"})
        return NvmlBackend(**options)
    if kind in ("fake", "file") and arg:
        from driver.devices.fake import FakeBackend, load_named_profile, load_profile_file

        _check_options(spec, options, {"node_name", "state_dir"})
        node_name = options.get("node_name")
        profile = (
            load_named_profile(arg, node_name=node_name)
            if kind == "fake"
            else load_profile_file(arg, node_name=node_name)
        )
        return FakeBackend(profile, state_dir=options.get("state_dir"))
    raise BackendError(f"unknown device backend {spec!r}: expected 'nvml', 'fake:PROFILE' or 'file:PATH'")


def backend_options(
    spec: str, *, node_name: str | None = None, state_dir: str | None = None, driver_root: str | None = None
) -> dict[str, Any]:
    """The :func:`open_backend` options that matter for ``spec``.

    Simulated GPUs get UUIDs seeded with the node name (several simulated nodes never share a GPU, and the
    plugin and exporter of one node agree) and the simulated-load directory; NVML gets the driver root to
    load ``libnvidia-ml`` from.
    """
    if spec.startswith(("fake:", "file:")):
        return {"node_name": node_name or None, "state_dir": state_dir}
    return {"driver_root": driver_root} if spec == "nvml" and driver_root else {}


def _check_options(spec: str, options: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise BackendError(f"device backend {spec!r} does not take option(s): {', '.join(unknown)}")
