"""DeviceClass validation."""

from __future__ import annotations

from driver.kube.api.deviceconfig import validate_opaque_config, validate_selectors
from driver.kube.api.fields import JSON, Errors, Path, check_size, get_list, get_obj, items_of, typed
from driver.kube.api.limits import MAX_CONFIGS
from driver.kube.api.metadata import validate_object_meta

# -- DeviceClass -----------------------------------------------------------------------------------


def validate_device_class(device_class: JSON, old: JSON | None = None) -> Errors:
    """Selectors (≤32, CEL syntax), config (≤32, opaque driver parameters)."""
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
            validate_opaque_config(config, config_path, out)
    return out
