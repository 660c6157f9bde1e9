"""Opaque device configuration (``GpuConfig``): which configs apply to which allocated device.

Sources, in precedence order (later wins): the DeviceClass configs, then the claim's own configs. The
scheduler copies both into ``status.allocation.devices.config`` (with ``source: FromClass | FromClaim``) at
allocation time, so that snapshot is used; a claim without it falls back to ``spec.devices.config``.

Only entries whose ``opaque.driver`` is this driver are considered; other drivers' entries are ignored. Each of
ours must be a valid ``GpuConfig`` (``gpuconfig.schema.json`` beside this module) or the claim fails with an
error naming the claim, the entry and the field. An entry applies to the requests it names (``gpu`` also
covers its subrequests ``gpu/a``), or to every request of the claim when it names none.

``apiVersion`` is ``gpu.accel-dra.dev/v1`` whatever the driver is named: it versions the format, which
belongs to this software, while ``opaque.driver`` already says which driver instance the entry is for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from driver.state.api import AllocationResult, Claim, claim_ref

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

API_VERSION = "gpu.accel-dra.dev/v1"
KIND = "GpuConfig"
TIME_SLICING = "TimeSlicing"
INTERVALS = ("Default", "Short", "Medium", "Long")


class ConfigError(ValueError):
    """An opaque config entry for this driver is invalid; the message names claim, entry and field."""


class ParameterError(ValueError):
    """Problems with one ``parameters`` object: ``(field path, message)`` pairs, field "" for the object."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__(self.describe("parameters"))

    def describe(self, prefix: str) -> str:
        return "; ".join(f"{prefix}{'.' + f if f else ''}: {m}" for f, m in self.problems)


@dataclass(frozen=True)
class GpuConfig:
    """The effective configuration of one device."""

    #: ``None``: no sharing setting; otherwise the time-slice interval.
    time_slicing: str | None = None

    @property
    def sharing(self) -> str | None:
        """``TimeSlicing:<Interval>``, the form used in env and the checkpoint."""
        return None if self.time_slicing is None else f"{TIME_SLICING}:{self.time_slicing}"

    def to_json(self) -> dict[str, Any]:
        if self.time_slicing is None:
            return {}
        return {"sharing": {"strategy": TIME_SLICING, "timeSlicing": {"interval": self.time_slicing}}}


@dataclass(frozen=True)
class ConfigEntry:
    where: str  # "status.allocation.devices.config[1]" -- for error messages and logs
    requests: tuple[str, ...]
    config: GpuConfig

    def applies_to(self, result: AllocationResult) -> bool:
        return not self.requests or result.request in self.requests or result.base_request in self.requests


@cache
def schema() -> dict[str, Any]:
    text = resources.files("driver.state").joinpath("gpuconfig.schema.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator() -> Draft202012Validator:
    # Imported on first use: most claims carry no opaque config, and jsonschema costs ~0.1 s and ~5 MB.
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


def _field(error: ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    schema: Any = error.schema
    expected: Any = error.validator_value
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(schema.get("properties", {}))
        parts += [k for k in error.instance if k not in known][:1]
    elif error.validator == "required" and isinstance(error.instance, dict):
        parts += [k for k in expected if k not in error.instance][:1]
    return ".".join(parts)


def parse_gpu_config(parameters: Any) -> GpuConfig:
    """Validate one ``opaque.parameters`` object. Raises :class:`ParameterError` naming the fields."""
    if not isinstance(parameters, dict):
        raise ParameterError([("", f"must be an object, got {type(parameters).__name__}")])
    api_version = parameters.get("apiVersion")
    if api_version != API_VERSION:
        raise ParameterError(
            [("apiVersion", f"{api_version!r} is not supported by this driver (expected {API_VERSION!r})")]
        )
    if parameters.get("kind") != KIND:
        raise ParameterError([("kind", f"{parameters.get('kind')!r} is not supported (expected {KIND!r})")])
    errors = sorted(_validator().iter_errors(parameters), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise ParameterError([(_field(e), e.message) for e in errors[:5]])
    sharing = parameters.get("sharing")
    if sharing is None:
        return GpuConfig()
    interval = (sharing.get("timeSlicing") or {}).get("interval", "Default")
    return GpuConfig(time_slicing=interval)


def _raw_entries(claim: Claim) -> list[tuple[str, int, Mapping[str, Any]]]:
    """(source, index-in-its-list, entry) with class configs first, each list in its order."""
    allocation = (claim.get("status") or {}).get("allocation") or {}
    allocated = (allocation.get("devices") or {}).get("config")
    if allocated is not None:
        path = "status.allocation.devices.config"
        entries = [(path, i, e) for i, e in enumerate(allocated) if isinstance(e, Mapping)]
        rank = {"FromClass": 0, "FromClaim": 1}
        return sorted(entries, key=lambda t: rank.get(t[2].get("source", "FromClaim"), 1))
    spec_configs = ((claim.get("spec") or {}).get("devices") or {}).get("config") or []
    return [("spec.devices.config", i, e) for i, e in enumerate(spec_configs) if isinstance(e, Mapping)]


def _ours(entry: Mapping[str, Any], driver: str) -> Mapping[str, Any] | None:
    opaque = entry.get("opaque")
    return opaque if isinstance(opaque, Mapping) and opaque.get("driver") == driver else None


def carries_config(claim: Claim, driver: str) -> bool:
    """Whether ``claim`` has an opaque config entry for ``driver`` (nothing parsed or validated)."""
    return any(_ours(entry, driver) is not None for _, _, entry in _raw_entries(claim))


def resolve_configs(claim: Claim, driver: str) -> list[ConfigEntry]:
    """This driver's config entries of ``claim``, in precedence order, validated."""
    ref = claim_ref(claim)
    out: list[ConfigEntry] = []
    for path, index, entry in _raw_entries(claim):
        opaque = _ours(entry, driver)
        if opaque is None:
            continue
        where = f"{path}[{index}]"
        try:
            config = parse_gpu_config(opaque.get("parameters"))
        except ParameterError as err:
            problems = err.describe(f"{where}.opaque.parameters")
            raise ConfigError(f"claim {ref}: invalid opaque config: {problems}") from None
        requests = entry.get("requests") or []
        out.append(ConfigEntry(where, tuple(str(r) for r in requests), config))
    return out


def config_for(result: AllocationResult, entries: Sequence[ConfigEntry]) -> GpuConfig | None:
    """The last entry that applies wins: a claim's config overrides its class's."""
    chosen = None
    for entry in entries:
        if entry.applies_to(result):
            chosen = entry.config
    return chosen
