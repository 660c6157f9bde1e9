"""Simulated GPU nodes: the ``fake:PROFILE`` and ``file:PATH`` device backends.

A profile is a YAML file (schema: ``profile.schema.json`` beside this module, documented in
docs/fake-devices.md). Named profiles ship in ``profiles/``. Loading validates the schema and the facts the
schema cannot express (duplicates, NVLink peers that do not exist); every error names the file and field.

The backend owns its :class:`FakeProfile`, a plain data object, so that later features (telemetry, XID
and fault injection) can extend it without changing how profiles are loaded.

Simulated load (``state_dir``): simulated workloads write ``<state>/gpus/<uuid>/procs/<pid>.json``
(``{"pid", "utilization", "memory_bytes", "encoder"?, "decoder"?}``) while they run. :meth:`FakeBackend.sample`
derives every telemetry reading from those files, deterministically: utilization is the sum of the live
processes' shares (at most 1), memory the driver's reserve plus their memory, power moves linearly between
idle and the product's board power with utilization, temperature and SM clock follow power, and the
cumulative counters (energy, PCIe and NVLink bytes) integrate the current rates over the backend's clock.
GPM activity (Hopper and newer) follows utilization unless a procs file gives it (``"tensor"``, ``"dram"``,
...). Without a state directory the GPUs idle.

A MIG-enabled GPU reads as NVML reads one: no GPU-wide utilization and no per-process SM share; each MIG
device reports its memory (a reserve plus its processes') and, with GPM, its own activity; the parent's
memory is the sum and its power follows its instances' load.

MIG instances can be created and destroyed (``driver.devices.fakemig``, under the rules of the product's
profile table in ``driver.devices.migtables``); discovery and telemetry report the instances there are now.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

from driver.devices.backend import BackendError
from driver.devices.fake_events import LOST_REASON, gpu_lost
from driver.devices.fakemig import FakeMig, pid_alive
from driver.devices.mig import GpuInstance
from driver.devices.migtables import TABLES, table_for_product
from driver.devices.model import (
    FabricInfo,
    Gpu,
    Inventory,
    MigDevice,
    MigPlacement,
    MigProfile,
    NvLink,
)
from driver.devices.telemetry import ACTIVITIES, GpuTelemetry, MigTelemetry, ProcessSample, TelemetryError
from driver.log import get_logger
from driver.quantity import parse_quantity

if TYPE_CHECKING:
    from driver.devices.events import HealthSource

log = get_logger(__name__)

DEFAULT_DRIVER_VERSION = "580.65.06"
DEFAULT_CUDA_DRIVER_VERSION = "12.9"

# Namespace for generated UUIDs; any fixed value works, it only has to never change.
_UUID_NAMESPACE = uuidlib.UUID("5d1f6a3c-8f0b-4e43-9d8e-6a2b4c1e7f90")


class ProfileError(BackendError):
    """A fake device profile is missing or invalid; the message names the file and field."""


@dataclass
class FakeProfile:
    """A simulated node: what :class:`FakeBackend` reports. Plain, replaceable data."""

    name: str
    description: str
    source: str
    inventory: Inventory


class FakeBackend:
    """:class:`~driver.devices.backend.DeviceBackend` that reports a :class:`FakeProfile`.

    It is also a :class:`~driver.devices.telemetry.TelemetrySource`: ``state_dir`` holds the simulated
    load (see the module docstring); ``clock`` (seconds, monotonic) drives the cumulative counters. And a
    :class:`~driver.devices.mig.MigControl`: MIG instances of its MIG-enabled GPUs can be created and
    destroyed (kept under ``state_dir``, so every process of the node sees them).
    """

    def __init__(
        self,
        profile: FakeProfile,
        state_dir: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.closed = False
        self.state_dir = Path(state_dir).absolute() if state_dir else None
        self.mig = FakeMig(profile.inventory.gpus, self.state_dir)
        self._simulator = LoadSimulator(profile.inventory, self.state_dir, clock)

    def discover(self) -> Inventory:
        """The profile's GPUs, with the MIG instances they have now."""
        if self.closed:
            raise BackendError(f"fake backend {self.profile.name!r} is closed")
        inventory = self.profile.inventory
        gpus = tuple(
            dataclasses.replace(g, mig_devices=self.mig.devices(g.uuid)) if g.mig_enabled else g
            for g in inventory.gpus
        )
        if gpus == inventory.gpus:
            return inventory
        return Inventory(gpus, inventory.driver_version, inventory.cuda_driver_version)

    def close(self) -> None:
        self.closed = True

    def sample(self, uuid: str) -> GpuTelemetry:
        if self.closed:
            raise TelemetryError(f"fake backend {self.profile.name!r} is closed (GPU {uuid})")
        if self.state_dir is not None and gpu_lost(self.state_dir, uuid):
            raise TelemetryError(f"GPU {uuid} cannot be read: {LOST_REASON}")
        return self._simulator.sample(uuid, self.mig.devices(uuid))

    # -- MIG (MigControl) ------------------------------------------------------------------------------

    def gpu_instances(self, gpu_uuid: str) -> list[GpuInstance]:
        return self.mig.gpu_instances(gpu_uuid)

    def create_gpu_instance(self, gpu_uuid: str, profile: MigProfile, placement: MigPlacement) -> GpuInstance:
        return self.mig.create_gpu_instance(gpu_uuid, profile, placement)

    def create_compute_instance(self, gpu_uuid: str, gpu_instance: GpuInstance) -> MigDevice:
        return self.mig.create_compute_instance(gpu_uuid, gpu_instance)

    def destroy_compute_instance(self, gpu_uuid: str, gpu_instance: int, compute_instance: int) -> None:
        self.mig.destroy_compute_instance(gpu_uuid, gpu_instance, compute_instance)

    def destroy_gpu_instance(self, gpu_uuid: str, gpu_instance: int) -> None:
        self.mig.destroy_gpu_instance(gpu_uuid, gpu_instance)

    def health_source(self, inventory: Inventory, *, read_only: bool = False) -> HealthSource:
        """Faults injected under the state dir (``driver.devices.fake_events``); none without a state dir."""
        from driver.devices.events import QuietSource
        from driver.devices.fake_events import FakeHealthSource

        if self.state_dir is None:
            return QuietSource()
        return FakeHealthSource(self.state_dir, inventory, write_index=not read_only)

    def simulated(self) -> bool:
        """The GPUs exist only in software (:class:`~driver.devices.backend.SimulatedGpus`)."""
        return True

    def container_edits(self) -> dict[str, Any]:
        """CDI containerEdits that let workloads in containers report load: the state dir, read-write."""
        if self.state_dir is None:
            return {}
        state = str(self.state_dir)
        return {
            "env": [f"{STATE_ENV}={state}"],
            "mounts": [
                {"hostPath": state, "containerPath": state, "options": ["rw", "nosuid", "nodev", "bind"]}
            ],
        }


# -- simulated load -----------------------------------------------------------------------------------

#: Environment variable naming the fake state directory (``--fake-state-dir`` defaults to it).
STATE_ENV = "ACCEL_DRA_FAKE_STATE"
_IDLE_SM_MHZ = 345.0
_GPU_IDLE = 0x1  # the clocks event reason of an idle GPU


@dataclass(frozen=True)
class BoardModel:
    """Electrical and clock figures of a product, from its data sheet (rounded)."""

    board_power_watts: float
    max_sm_mhz: float
    memory_mhz: float
    #: GDDR boards do not report a memory temperature.
    memory_sensor: bool = True
    pcie_bytes_per_second: float = 25e9
    nvlink_bytes_per_second: float = 0.0

    @property
    def idle_watts(self) -> float:
        return round(self.board_power_watts * 0.12, 1)


# First match on the product name wins.
_BOARDS: tuple[tuple[str, BoardModel], ...] = (
    ("GB200", BoardModel(1200.0, 2062.0, 3996.0, pcie_bytes_per_second=50e9, nvlink_bytes_per_second=900e9)),
    ("H100", BoardModel(700.0, 1980.0, 2619.0, pcie_bytes_per_second=50e9, nvlink_bytes_per_second=450e9)),
    ("A100-SXM", BoardModel(400.0, 1410.0, 1215.0, nvlink_bytes_per_second=300e9)),
    ("A100", BoardModel(300.0, 1410.0, 1512.0, nvlink_bytes_per_second=300e9)),
    ("L4", BoardModel(72.0, 2040.0, 6251.0, memory_sensor=False)),
)
_DEFAULT_BOARD = BoardModel(300.0, 1500.0, 1500.0)
# Share of the link bandwidth a fully busy GPU moves, and the idle trickle (bytes/s).
_IO_SHARE = 0.1
_IDLE_IO = 1e5


def board_model(gpu: Gpu) -> BoardModel:
    name = gpu.product_name or ""
    return next((board for key, board in _BOARDS if key in name), _DEFAULT_BOARD)


@dataclass(frozen=True)
class SimulatedProcess:
    """One procs file: a workload process's share of one GPU (or MIG device)."""

    pid: int
    utilization: float
    memory_bytes: int
    encoder: float = 0.0
    decoder: float = 0.0
    #: Overrides of the GPM activity derived from ``utilization`` (keys from ACTIVITIES).
    activity: Mapping[str, float] = field(default_factory=dict)

    def activity_of(self, name: str) -> float:
        return self.activity.get(name, self.utilization * _ACTIVITY_SHARE[name])


# GPM activity a process shows per unit of utilization, unless its procs file says otherwise.
_ACTIVITY_SHARE = {
    "graphics": 1.0,
    "sm": 1.0,
    "sm_occupancy": 0.5,
    "tensor": 0.5,
    "dram": 0.3,
    "fp64": 0.0,
    "fp32": 0.2,
    "fp16": 0.1,
}
# GPUs with GPU Performance Monitoring (NVML GPM): Hopper and newer.
_GPM_ARCHITECTURES = frozenset({"Hopper", "Blackwell", "Rubin"})


@dataclass
class _Counters:
    at: float
    energy_joules: float = 0.0
    pcie_rx: float = 0.0
    pcie_tx: float = 0.0
    nvlink_rx: float = 0.0
    nvlink_tx: float = 0.0


def _share(raw: Any, default: float = 0.0) -> float:
    return min(1.0, max(0.0, float(raw))) if isinstance(raw, int | float) else default


def read_procs_file(path: Path) -> SimulatedProcess | None:
    """Parse one procs file; ``None`` (logged) when it is unreadable or malformed, e.g. half written."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        pid = int(data["pid"])
        memory = int(data.get("memory_bytes", 0))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.debug("fake procs file ignored", path=str(path), error=str(exc))
        return None
    return SimulatedProcess(
        pid=pid,
        utilization=_share(data.get("utilization")),
        memory_bytes=max(0, memory),
        encoder=_share(data.get("encoder")),
        decoder=_share(data.get("decoder")),
        activity={k: _share(data[k]) for k in ACTIVITIES if k != "graphics" and k in data},
    )


def _sum(values: Iterable[float]) -> float:
    return min(1.0, sum(values))


def _activity(procs: Sequence[SimulatedProcess]) -> dict[str, float]:
    return {name: _sum(p.activity_of(name) for p in procs) for name in ACTIVITIES}


def _listed(procs: Sequence[SimulatedProcess], sm_share: bool) -> tuple[ProcessSample, ...]:
    return tuple(
        ProcessSample(
            pid=p.pid, memory_bytes=p.memory_bytes, sm_utilization=p.utilization if sm_share else None
        )
        for p in procs
    )


class LoadSimulator:
    """Telemetry of fake GPUs, derived from the procs files under the state directory.

    Like NVML: a MIG-enabled GPU reports no GPU-wide utilization (nor encoder, decoder or memory-copy
    utilization) and no per-process SM share; each MIG device reports its memory and, on GPUs with GPM
    (Hopper and newer), its activity. GDDR boards have no row remapper and no memory temperature.
    """

    def __init__(self, inventory: Inventory, state_dir: Path | None, clock: Callable[[], float]) -> None:
        self._gpus = {gpu.uuid: gpu for gpu in inventory.gpus}
        self._state_dir = state_dir
        self._clock = clock
        self._lock = threading.Lock()
        self._counters: dict[str, _Counters] = {}
        if state_dir is not None:
            for gpu in inventory.gpus:
                for uuid in (gpu.uuid, *(m.uuid for m in gpu.mig_devices)):
                    # A reader (the exporter) may have the directory read-only: the plugin made them.
                    with contextlib.suppress(OSError):
                        (state_dir / "gpus" / uuid / "procs").mkdir(parents=True, exist_ok=True)

    def _device_processes(self, uuid: str) -> list[SimulatedProcess]:
        if self._state_dir is None:
            return []
        found: list[SimulatedProcess] = []
        for path in sorted((self._state_dir / "gpus" / uuid / "procs").glob("*.json")):
            proc = read_procs_file(path)
            if proc is None:
                continue
            if not pid_alive(proc.pid):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found.append(proc)
        return found

    def processes(self, gpu: Gpu) -> list[SimulatedProcess]:
        """Live processes on the GPU and its MIG devices; files of processes that ended are removed."""
        return [
            p for uuid in (gpu.uuid, *(m.uuid for m in gpu.mig_devices)) for p in self._device_processes(uuid)
        ]

    def sample(self, uuid: str, migs: tuple[MigDevice, ...] | None = None) -> GpuTelemetry:
        """One reading; ``migs``: the MIG devices the GPU has now (default: the profile's)."""
        gpu = self._gpus.get(uuid)
        if gpu is None:
            raise TelemetryError(f"no fake GPU with UUID {uuid}")
        if gpu.mig_enabled:
            if migs is not None:
                gpu = dataclasses.replace(gpu, mig_devices=migs)
            return self._sample_mig_gpu(gpu)
        procs = self.processes(gpu)
        util = _sum(p.utilization for p in procs)
        total = gpu.memory_bytes or 0
        used = min(total, total // 200 + sum(p.memory_bytes for p in procs))
        gpm = gpu.architecture in _GPM_ARCHITECTURES
        activity = _activity(procs)
        return self._board(
            gpu,
            util,
            utilization=util,
            encoder_utilization=_sum(p.encoder for p in procs),
            decoder_utilization=_sum(p.decoder for p in procs),
            memory_copy_utilization=activity["dram"],
            memory_used_bytes=used,
            processes=_listed(procs, sm_share=True),
            activity=MappingProxyType(activity) if gpm else MappingProxyType({}),
            gpm=gpm,
        )

    def _sample_mig_gpu(self, gpu: Gpu) -> GpuTelemetry:
        gpm = gpu.architecture in _GPM_ARCHITECTURES
        total = gpu.memory_bytes or 0
        migs: list[MigTelemetry] = []
        every: list[SimulatedProcess] = []
        load = 0.0
        for mig in gpu.mig_devices:
            procs = self._device_processes(mig.uuid)
            every += procs
            size = mig.memory_bytes or 0
            activity = _activity(procs)
            # The GPU's busy share: each instance's activity weighted by its share of the GPU.
            load += activity["graphics"] * (size / total if total else 0.0)
            migs.append(
                MigTelemetry(
                    uuid=mig.uuid,
                    memory_used_bytes=min(size, size // 200 + sum(p.memory_bytes for p in procs)),
                    memory_total_bytes=size,
                    activity=MappingProxyType(activity) if gpm else MappingProxyType({}),
                    processes=_listed(procs, sm_share=False),
                )
            )
        used = min(total, total // 200 + sum(m.memory_used_bytes or 0 for m in migs))
        return self._board(
            gpu,
            min(1.0, load),
            memory_used_bytes=used,
            processes=_listed(every, sm_share=False),
            mig=tuple(migs),
            mig_devices=gpu.mig_devices,
            gpm=gpm,
        )

    def _board(self, gpu: Gpu, load: float, *, gpm: bool, **readings: Any) -> GpuTelemetry:
        """The readings that follow the GPU's load: power, heat, clocks, counters, health registers."""
        board = board_model(gpu)
        power = board.idle_watts + load * (board.board_power_watts - board.idle_watts)
        heat = (power - board.idle_watts) / (board.board_power_watts - board.idle_watts)
        temperature = round(30.0 + 55.0 * heat, 1)
        pcie_rate = _IDLE_IO + load * _IO_SHARE * board.pcie_bytes_per_second
        linked = (gpu.active_links or 0) > 0
        nvlink_rate = (_IDLE_IO + load * _IO_SHARE * board.nvlink_bytes_per_second) if linked else 0.0
        counters = self._advance(gpu.uuid, power, pcie_rate, nvlink_rate)
        throughput: dict[tuple[str, str], float] = {}
        if gpm and not gpu.mig_enabled:
            throughput = {("pcie", "receive"): pcie_rate, ("pcie", "transmit"): pcie_rate / 2}
            if linked:
                throughput |= {("nvlink", "receive"): nvlink_rate, ("nvlink", "transmit"): nvlink_rate}
        hbm = board.memory_sensor
        return GpuTelemetry(
            uuid=gpu.uuid,
            memory_total_bytes=gpu.memory_bytes or 0,
            power_watts=round(power, 3),
            energy_joules=counters.energy_joules,
            temperature_celsius=temperature,
            memory_temperature_celsius=temperature + 4.0 if hbm else None,
            sm_clock_hertz=(_IDLE_SM_MHZ + load * (board.max_sm_mhz - _IDLE_SM_MHZ)) * 1e6,
            memory_clock_hertz=board.memory_mhz * 1e6,
            pcie_rx_bytes=int(counters.pcie_rx),
            pcie_tx_bytes=int(counters.pcie_tx),
            nvlink_rx_bytes=int(counters.nvlink_rx) if linked else None,
            nvlink_tx_bytes=int(counters.nvlink_tx) if linked else None,
            ecc_corrected=0,
            ecc_uncorrected=0,
            remapped_rows_correctable=0 if hbm else None,
            remapped_rows_uncorrectable=0 if hbm else None,
            row_remap_pending=False if hbm else None,
            row_remap_failure=False if hbm else None,
            pcie_replays=0,
            clock_event_reasons=_GPU_IDLE if load == 0 else 0,
            io_throughput=MappingProxyType(throughput),
            **readings,
        )

    def _advance(self, uuid: str, power: float, pcie_rate: float, nvlink_rate: float) -> _Counters:
        """Integrate the current rates since the previous sample of this GPU; return a copy."""
        with self._lock:
            now = self._clock()
            state = self._counters.setdefault(uuid, _Counters(at=now))
            elapsed = max(0.0, now - state.at)
            state.at = now
            state.energy_joules += power * elapsed
            state.pcie_rx += pcie_rate * elapsed
            state.pcie_tx += pcie_rate / 2 * elapsed
            state.nvlink_rx += nvlink_rate * elapsed
            state.nvlink_tx += nvlink_rate * elapsed
            return _Counters(**vars(state))


# -- loading ------------------------------------------------------------------------------------------


def _profiles_dir() -> Any:
    return resources.files("driver.devices").joinpath("profiles")


def named_profiles() -> list[str]:
    """Names accepted by ``fake:PROFILE``."""
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in _profiles_dir().iterdir()
        if entry.name.endswith(".yaml")
    )


def load_named_profile(name: str, node_name: str | None = None) -> FakeProfile:
    available = named_profiles()
    if name not in available:
        raise ProfileError(f"unknown fake device profile {name!r}; available: {', '.join(available)}")
    entry = _profiles_dir().joinpath(f"{name}.yaml")
    # The bundled profiles are schema-checked by the test suite; skipping it here keeps jsonschema out of
    # every sandbox plugin and exporter process.
    return parse_profile(
        entry.read_text(encoding="utf-8"), source=f"fake:{name}", node_name=node_name, check_schema=False
    )


def load_profile_file(path: str | Path, node_name: str | None = None) -> FakeProfile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read device profile: {exc.strerror or exc}") from exc
    return parse_profile(text, source=str(path), node_name=node_name)


@cache
def profile_schema() -> dict[str, Any]:
    """The JSON schema of profile files (for docs and tooling)."""
    schema: dict[str, Any] = json.loads(
        resources.files("driver.devices").joinpath("profile.schema.json").read_text(encoding="utf-8")
    )
    return schema


@cache
def _validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(profile_schema())


def parse_profile(
    text: str, source: str, node_name: str | None = None, *, check_schema: bool = True
) -> FakeProfile:
    """Parse and validate one profile document. ``node_name`` seeds generated UUIDs."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{source}: not valid YAML: {exc}") from exc
    if check_schema:
        errors = sorted(_validator().iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
        if errors:
            details = "\n".join(f"  {_field(e)}: {e.message}" for e in errors[:20])
            raise ProfileError(f"{source}: invalid device profile:\n{details}")
    name = data.get("name") or Path(source.removeprefix("fake:")).stem.lower()
    seed = f"{node_name}/{name}" if node_name else name
    _check_references(data, source)
    gpus = tuple(_gpu(raw, index, seed, source) for index, raw in enumerate(data["gpus"]))
    try:
        inventory = Inventory(
            gpus=gpus,
            driver_version=data.get("driverVersion", DEFAULT_DRIVER_VERSION),
            cuda_driver_version=data.get("cudaDriverVersion", DEFAULT_CUDA_DRIVER_VERSION),
        )
    except ValueError as exc:
        raise ProfileError(f"{source}: gpus: {exc}") from exc
    return FakeProfile(
        name=name, description=data.get("description", "").strip(), source=source, inventory=inventory
    )


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(document)"


def _field(error: ValidationError) -> str:
    """The offending field's path, including the name of a missing or unexpected key."""
    parts = list(error.absolute_path)
    schema: Any = error.schema
    expected: Any = error.validator_value
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in expected if k not in error.instance]
        parts += missing[:1]
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(schema.get("properties", {}))
        extra = [k for k in error.instance if k not in known and not str(k).startswith("x-")]
        parts += extra[:1]
    return _path(parts)


def _check_references(data: dict[str, Any], source: str) -> None:
    """Uniqueness and NVLink peers: facts a JSON schema cannot state."""
    first_seen: dict[tuple[str, Any], str] = {}
    gpus: list[dict[str, Any]] = data["gpus"]
    for index, gpu in enumerate(gpus):
        minor = gpu.get("minor", index)
        for key, value in (("pciBusID", gpu["pciBusID"]), ("uuid", gpu.get("uuid")), ("minor", minor)):
            here = f"gpus[{index}].{key}"
            if value is not None and (key, value) in first_seen:
                raise ProfileError(f"{source}: {here}: {value!r} is already used by {first_seen[key, value]}")
            first_seen.setdefault((key, value), here)
        near = gpu.get("numaNodes")
        if near and near[0] != gpu.get("numaNode"):
            raise ProfileError(
                f"{source}: gpus[{index}].numaNodes: must start with the GPU's numaNode {gpu.get('numaNode')}"
            )
        mig = gpu.get("mig") or {}
        if mig.get("devices") and not mig.get("enabled"):
            raise ProfileError(
                f"{source}: gpus[{index}].mig.devices: MIG devices listed but mig.enabled is false"
            )
        table = mig.get("profiles") or table_for_product(gpu.get("productName"))
        names = {p.name for p in TABLES.get(table or "", ())}
        for i, device in enumerate(mig.get("devices") or []):
            name = re.sub(r"^\d+c\.", "", str(device.get("profile", "")))
            if names and name not in names:
                raise ProfileError(
                    f"{source}: gpus[{index}].mig.devices[{i}].profile: {name!r} is not a MIG profile of "
                    f"{table} ({', '.join(sorted(names))})"
                )
    buses = {gpu["pciBusID"] for gpu in gpus}
    for index, gpu in enumerate(gpus):
        for link_index, link in enumerate(gpu.get("nvlinks") or []):
            remote = link.get("remotePciBusID")
            if link.get("remoteType") == "gpu" and remote not in buses:
                raise ProfileError(
                    f"{source}: gpus[{index}].nvlinks[{link_index}].remotePciBusID: "
                    f"no GPU in this profile has PCI address {remote}"
                )


def _bytes(value: int | str, source: str, where: str) -> int:
    try:
        quantity = parse_quantity(value)
    except ValueError as exc:
        raise ProfileError(f"{source}: {where}: not a quantity: {value!r}") from exc
    if quantity != quantity.to_integral_value():
        raise ProfileError(f"{source}: {where}: not a whole number of bytes: {value!r}")
    return int(Decimal(quantity))


def _derived_uuid(prefix: str, *parts: str) -> str:
    return f"{prefix}-{uuidlib.uuid5(_UUID_NAMESPACE, '/'.join(parts))}"


def _gpu(raw: dict[str, Any], index: int, seed: str, source: str) -> Gpu:
    where = f"gpus[{index}]"
    gpu_uuid = raw.get("uuid") or _derived_uuid("GPU", seed, raw["pciBusID"])
    mig = raw.get("mig")
    fabric = raw.get("fabric")
    return Gpu(
        uuid=gpu_uuid,
        product_name=raw["productName"],
        brand=raw.get("brand"),
        architecture=raw.get("architecture"),
        compute_capability=raw.get("computeCapability"),
        memory_bytes=_bytes(raw["memory"], source, f"{where}.memory"),
        pci_bus_id=raw["pciBusID"],
        pcie_root=raw.get("pcieRoot"),
        numa_node=raw.get("numaNode"),
        numa_nodes=tuple(raw["numaNodes"]) if len(raw.get("numaNodes") or ()) > 1 else (),
        minor=raw.get("minor", index),
        mig_enabled=None if mig is None else bool(mig["enabled"]),
        mig_devices=tuple(
            _mig(m, gpu_uuid, source, f"{where}.mig.devices[{i}]", i)
            for i, m in enumerate((mig or {}).get("devices", []))
        ),
        mig_profiles=_mig_profiles(raw),
        nvlinks=None if raw.get("nvlinks", []) is None else _links(raw.get("nvlinks", [])),
        fabric=None
        if fabric is None
        else FabricInfo(cluster_uuid=fabric["clusterUUID"], clique_id=fabric["cliqueID"]),
    )


def _mig_profiles(raw: dict[str, Any]) -> tuple[MigProfile, ...]:
    """The MIG profiles NVML lists for the GPU: its product's table, while MIG is enabled (as NVML)."""
    mig = raw.get("mig") or {}
    if not mig.get("enabled"):
        return ()
    table = mig.get("profiles") or table_for_product(raw.get("productName"))
    return TABLES.get(table or "", ())


def _links(groups: list[dict[str, Any]]) -> tuple[NvLink, ...]:
    links: list[NvLink] = []
    for group in groups:
        for _ in range(group.get("count", 1)):
            links.append(
                NvLink(
                    index=len(links),
                    state=group.get("state", "active"),
                    remote_pci_bus_id=group.get("remotePciBusID"),
                    remote_type=group.get("remoteType", "unknown"),
                )
            )
    return tuple(links)


def _mig(raw: dict[str, Any], parent_uuid: str, source: str, where: str, slot: int) -> MigDevice:
    gi, ci = raw["gpuInstance"], raw["computeInstance"]
    return MigDevice(
        uuid=raw.get("uuid") or _derived_uuid("MIG", parent_uuid, str(gi), str(ci)),
        profile=raw["profile"],
        memory_bytes=_bytes(raw["memory"], source, f"{where}.memory"),
        gpu_instance_id=gi,
        compute_instance_id=ci,
        placement=MigPlacement(start=raw["placement"]["start"], size=raw["placement"]["size"]),
        slot=slot,
    )
