"""DeviceTaintRule validation (resource.k8s.io/v1 since 1.37)."""

from __future__ import annotations

from driver.kube.api.fields import JSON, Errors, Path, get_obj, get_str, required, typed
from driver.kube.api.metadata import validate_object_meta
from driver.kube.api.names import validate_dns_label, validate_driver_name, validate_pool_name
from driver.kube.api.resourceslice import validate_device_taint


def validate_device_taint_rule(rule: JSON, old: JSON | None = None) -> Errors:
    """A DeviceTaintRule (``resource.k8s.io/v1`` since 1.37): an optional device selector by driver, pool
    and device name, and one device taint (required)."""
    out: Errors = []
    validate_object_meta(typed(rule.get("metadata"), dict, Path("metadata"), out), out, namespaced=False)
    spec = get_obj(rule, "spec", Path(""), out) or {}
    path = Path("spec")
    selector = get_obj(spec, "deviceSelector", path, out)
    if selector is not None:
        where = path.child("deviceSelector")
        if selector.get("driver") is not None:
            validate_driver_name(get_str(selector, "driver", where, out), where.child("driver"), out)
        if selector.get("pool") is not None:
            validate_pool_name(get_str(selector, "pool", where, out), where.child("pool"), out)
        if selector.get("device") is not None:
            validate_dns_label(get_str(selector, "device", where, out), where.child("device"), out)
    taint = get_obj(spec, "taint", path, out)
    if taint is None:
        out.append(required(path.child("taint")))
    else:
        validate_device_taint(taint, path.child("taint"), out)
    return out
