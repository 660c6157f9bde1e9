"""DeviceClass validation."""

from __future__ import annotations

from driver.kube.api.deviceconfig import validate_opaque_config, validate_selectors
from driver.kube.api.fields import (
    JSON,
    Errors,
    Path,
    check_size,
    get_list,
    get_obj,
    get_str,
    invalid,
    items_of,
    typed,
)
from driver.kube.api.limits import MAX_CONFIGS
from driver.kube.api.metadata import validate_object_meta
from driver.kube.api.names import is_extended_resource_name


def validate_device_class(device_class: JSON, old: JSON | None = None) -> Errors:
    """Selectors (≤32, CEL), config (≤32, opaque driver parameters), extendedResourceName. Selectors and
    configs an update leaves as they were count as stored: they are not checked against newer rules."""
    out: Errors = []
    validate_object_meta(
        typed(device_class.get("metadata"), dict, Path("metadata"), out), out, namespaced=False
    )
    spec = get_obj(device_class, "spec", Path(""), out) or {}
    path = Path("spec")
    old_spec = (old or {}).get("spec") or {}
    selectors = get_list(spec, "selectors", path, out)
    validate_selectors(
        selectors,
        path.child("selectors"),
        out,
        stored=old is not None and selectors == old_spec.get("selectors"),
    )
    configs = get_list(spec, "config", path, out)
    if check_size(configs, MAX_CONFIGS, path.child("config"), out):
        for config_path, config in items_of(configs, path.child("config"), out):
            stored = old is not None and configs == old_spec.get("config")
            validate_opaque_config(config, config_path, out, stored=stored)
    extended = get_str(spec, "extendedResourceName", path, out)
    if extended is not None and not is_extended_resource_name(extended):
        out.append(
            invalid(path.child("extendedResourceName"), extended, "must be a valid extended resource name")
        )
    return out
