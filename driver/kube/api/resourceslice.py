"""ResourceSlice validation (pkg/apis/resource/validation)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from driver.kube.api.fields import (
    JSON,
    Errors,
    Path,
    add_messages,
    check_size,
    check_unique,
    forbidden,
    get_bool,
    get_int,
    get_list,
    get_obj,
    get_str,
    invalid,
    items_of,
    not_found,
    not_supported,
    required,
    too_long,
    too_many,
    truncate_key,
    type_invalid,
    typed,
)
from driver.kube.api.limits import (
    MAX_ATTRIBUTE_VALUE_LENGTH,
    MAX_ATTRIBUTE_VALUES,
    MAX_ATTRIBUTES_AND_CAPACITIES,
    MAX_BINDING_CONDITIONS,
    MAX_CONSUMPTIONS_PER_DEVICE,
    MAX_COUNTER_SETS,
    MAX_COUNTERS_PER_CONSUMPTION,
    MAX_COUNTERS_PER_SET,
    MAX_DEVICES_PER_SLICE,
    MAX_DEVICES_WITH_TAINTS_OR_COUNTERS,
    MAX_DOMAIN_LENGTH,
    MAX_ID_LENGTH,
    MAX_REQUEST_POLICY_OPTIONS,
    MAX_TAINTS_PER_DEVICE,
    TAINT_EFFECTS,
)
from driver.kube.api.metadata import get_time, validate_immutable, validate_object_meta
from driver.kube.api.names import (
    dns1123_label_errors,
    validate_dns_label,
    validate_driver_name,
    validate_label_name,
    validate_label_value,
    validate_pool_name,
    validate_qualified_name,
)
from driver.kube.api.quantities import quantity_or_zero, quantity_value, validate_quantity
from driver.kube.api.selectors import validate_node_name, validate_node_selector
from driver.semver import is_semver

# -- ResourceSlice ---------------------------------------------------------------------------------


def validate_resource_slice(slice_: JSON, old: JSON | None = None) -> Errors:
    """All violations of a ResourceSlice (``old``: the stored object, for an update)."""
    out: Errors = []
    validate_object_meta(typed(slice_.get("metadata"), dict, Path("metadata"), out), out, namespaced=False)
    spec = get_obj(slice_, "spec", Path(""), out) or {}
    old_spec = None if old is None else (old.get("spec") if isinstance(old.get("spec"), dict) else {})
    _validate_slice_spec(spec, old_spec, out)
    return out


def _validate_slice_spec(spec: JSON, old_spec: JSON | None, out: Errors) -> None:
    path = Path("spec")
    driver = get_str(spec, "driver", path, out)
    validate_driver_name(driver, path.child("driver"), out)
    pool = get_obj(spec, "pool", path, out) or {}
    _validate_pool(pool, path.child("pool"), out)
    if old_spec is not None:
        old_pool = old_spec.get("pool") if isinstance(old_spec.get("pool"), dict) else {}
        validate_immutable(pool.get("name"), (old_pool or {}).get("name"), path.child("pool", "name"), out)
        validate_immutable(driver, old_spec.get("driver"), path.child("driver"), out)
        validate_immutable(spec.get("nodeName"), old_spec.get("nodeName"), path.child("nodeName"), out)
    per_device = _validate_node_selection(spec, path, out)
    if spec.get("sharedCounters") is not None and spec.get("devices") is not None:
        out.append(invalid(path, "", "only one of `sharedCounters` or `devices` is allowed"))
    _validate_devices(spec, path, out, per_device)
    _validate_counter_sets(get_list(spec, "sharedCounters", path, out), path.child("sharedCounters"), out)


def _validate_pool(pool: JSON, path: Path, out: Errors) -> None:
    validate_pool_name(get_str(pool, "name", path, out), path.child("name"), out)
    count = get_int(pool, "resourceSliceCount", path, out) or 0
    if count <= 0:
        out.append(invalid(path.child("resourceSliceCount"), count, "must be greater than zero"))
    generation = get_int(pool, "generation", path, out) or 0
    if generation < 0:
        out.append(invalid(path.child("generation"), generation, "must be greater than or equal to zero"))


def _validate_node_selection(spec: JSON, path: Path, out: Errors) -> bool:
    """Exactly one of nodeName / nodeSelector / allNodes / perDeviceNodeSelection; returns the latter."""
    chosen: list[str] = []
    node_name = get_str(spec, "nodeName", path, out)
    if node_name:
        chosen.append("`nodeName`")
        validate_node_name(node_name, path.child("nodeName"), out)
    elif node_name is not None:
        out.append(
            invalid(path.child("nodeName"), node_name, "must be either unset or set to a non-empty string")
        )
    selector = get_obj(spec, "nodeSelector", path, out)
    if selector is not None:
        chosen.append("`nodeSelector`")
        validate_node_selector(selector, path.child("nodeSelector"), out, exactly_one_term=True)
    for field in ("allNodes", "perDeviceNodeSelection"):
        flag = get_bool(spec, field, path, out)
        if flag:
            chosen.append(f"`{field}`")
        elif flag is not None:
            out.append(invalid(path.child(field), flag, "must be either unset or set to true"))
    names = "exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required"
    if not chosen:
        out.append(required(path, names))
    elif len(chosen) > 1:
        out.append(invalid(path, "{" + ", ".join(chosen) + "}", f"{names}, but multiple fields are set"))
    return "`perDeviceNodeSelection`" in chosen


def _validate_devices(spec: JSON, path: Path, out: Errors, per_device: bool) -> None:
    devices_path = path.child("devices")
    devices = get_list(spec, "devices", path, out)
    entries = items_of(devices, devices_path, out)
    advanced = any(entry.get("taints") or entry.get("consumesCounters") for _, entry in entries)
    limit = MAX_DEVICES_WITH_TAINTS_OR_COUNTERS if advanced else MAX_DEVICES_PER_SLICE
    if not check_size(devices, limit, devices_path, out):
        return
    for device_path, device in entries:
        _validate_device(device, device_path, out, per_device)
    check_unique([device.get("name") for _, device in entries], devices_path, out)


def _validate_device(device: JSON, path: Path, out: Errors, per_device: bool) -> None:
    validate_dns_label(get_str(device, "name", path, out), path.child("name"), out)
    attributes = get_obj(device, "attributes", path, out) or {}
    capacity = get_obj(device, "capacity", path, out) or {}
    total = len(attributes) + len(capacity)
    if total > MAX_ATTRIBUTES_AND_CAPACITIES:
        detail = (
            f"the total number of attributes and capacities must not exceed {MAX_ATTRIBUTES_AND_CAPACITIES}"
        )
        out.append(invalid(path, total, detail))
    values = attribute_value_count(attributes)
    if values > MAX_ATTRIBUTE_VALUES:
        detail = f"the total number of attribute values must not exceed {MAX_ATTRIBUTE_VALUES}"
        out.append(invalid(path, values, detail))
    for key, attribute in attributes.items():
        validate_qualified_name(key, path.child("attributes"), out)
        key_path = path.child("attributes").key(truncate_key(key, MAX_DOMAIN_LENGTH + 1 + MAX_ID_LENGTH))
        validate_device_attribute(attribute, key_path, out)
    multi = get_bool(device, "allowMultipleAllocations", path, out) is True
    for key, cap in capacity.items():
        validate_qualified_name(key, path.child("capacity"), out)
        key_path = path.child("capacity").key(truncate_key(key, MAX_DOMAIN_LENGTH + 1 + MAX_ID_LENGTH))
        _validate_capacity(cap, key_path, out, multi)
    _validate_taints(get_list(device, "taints", path, out), path.child("taints"), out)
    allocatable = get_obj(device, "nodeAllocatableResources", path, out)
    if allocatable:
        _validate_node_allocatable(allocatable, capacity, path.child("nodeAllocatableResources"), out)
    _validate_consumptions(
        get_list(device, "consumesCounters", path, out), path.child("consumesCounters"), out
    )
    _validate_device_node_selection(device, path, out, per_device)
    validate_binding_conditions(device, path, out)


ATTRIBUTE_VALUE_KEYS = ("bool", "int", "string", "version", "bools", "ints", "strings", "versions")
LIST_VALUE_TYPES: dict[str, type] = {"bools": bool, "ints": int, "strings": str, "versions": str}


def _check_string_value(value: str, path: Path, out: Errors) -> None:
    # The limit is in bytes of UTF-8, as Go's len(): "™" counts three.
    if len(value.encode()) > MAX_ATTRIBUTE_VALUE_LENGTH:
        out.append(too_long(path, MAX_ATTRIBUTE_VALUE_LENGTH))


def _check_version_value(value: str, path: Path, out: Errors) -> None:
    if not is_semver(value):
        out.append(invalid(path, value, "must be a string compatible with semver.org spec 2.0.0"))
    if len(value.encode()) > MAX_ATTRIBUTE_VALUE_LENGTH:
        out.append(too_long(path, MAX_ATTRIBUTE_VALUE_LENGTH))


def _check_list_value(attr: JSON, key: str, path: Path, out: Errors) -> None:
    """A list-type value (``DRAListTypeAttributes``, alpha): non-empty, items of the list's type."""
    values = get_list(attr, key, path, out)
    if values is None:
        return
    if not values:
        out.append(invalid(path.child(key), values, "must not be empty if specified"))
    for index, item in enumerate(values):
        item_path = path.child(key).index(index)
        if not isinstance(item, LIST_VALUE_TYPES[key]) or (key == "ints" and isinstance(item, bool)):
            out.append(type_invalid(item_path, item, f"must be of type {LIST_VALUE_TYPES[key].__name__}"))
        elif key == "strings":
            _check_string_value(str(item), item_path, out)
        elif key == "versions":
            _check_version_value(str(item), item_path, out)


def validate_device_attribute(attribute: Any, path: Path, out: Errors) -> None:
    """Exactly one of int / bool / string (≤64) / version (semver 2.0.0, ≤64), or -- list-type attributes
    (``DRAListTypeAttributes``, alpha in 1.36 and 1.37) -- one non-empty list of them."""
    attr = typed(attribute, dict, path, out)
    if attr is None:
        return
    present = [key for key in ATTRIBUTE_VALUE_KEYS if attr.get(key) is not None]
    get_bool(attr, "bool", path, out)
    get_int(attr, "int", path, out)
    string = get_str(attr, "string", path, out)
    if string is not None:
        _check_string_value(string, path.child("string"), out)
    version = get_str(attr, "version", path, out)
    if version is not None:
        _check_version_value(version, path.child("version"), out)
    for key in LIST_VALUE_TYPES:
        if attr.get(key) is not None:
            _check_list_value(attr, key, path, out)
    if len(present) != 1:
        out.append(invalid(path, attr if present else "", "exactly one value must be specified"))


def attribute_value_count(attributes: JSON) -> int:
    """Values of a device's attributes as the API server counts them: a list counts its items."""
    count = 0
    for attr in attributes.values():
        lists = [attr.get(k) for k in LIST_VALUE_TYPES] if isinstance(attr, dict) else []
        sizes = [len(v) for v in lists if isinstance(v, list)]
        count += sum(sizes) if any(sizes) else 1
    return count


def _validate_node_allocatable(resources: JSON, capacity: JSON, path: Path, out: Errors) -> None:
    """``Device.nodeAllocatableResources`` (``DRANodeAllocatableResources``, alpha, the 1.37 API): keys are
    cpu, memory or hugepages-*; each needs a mapping or an overhead."""
    for name, entry in resources.items():
        key_path = path.key(name)
        if name not in ("cpu", "memory") and not name.startswith("hugepages-"):
            out.append(invalid(key_path, name, "must be a node allocatable resource name"))
        item = typed(entry, dict, key_path, out)
        if item is None:
            continue
        mapping = get_obj(item, "mapping", key_path, out)
        overhead = get_obj(item, "overhead", key_path, out)
        if mapping is None and overhead is None:
            out.append(required(key_path, "at least one of mapping or overhead must be set"))
        if mapping is not None:
            _validate_allocatable_mapping(mapping, capacity, key_path.child("mapping"), out)
        if overhead is not None:
            _validate_allocatable_overhead(overhead, key_path.child("overhead"), out)


def _validate_allocatable_mapping(mapping: JSON, capacity: JSON, path: Path, out: Errors) -> None:
    key = get_str(mapping, "capacityKey", path, out)
    if key is not None:
        if not key:
            out.append(invalid(path.child("capacityKey"), "", "capacityKey must not be an empty string"))
        elif key not in capacity:
            out.append(not_found(path.child("capacityKey"), key))
        if mapping.get("capacityMultiplier") is None:
            out.append(
                required(
                    path.child("capacityMultiplier"), "capacityMultiplier is required when capacityKey is set"
                )
            )
    for field in ("capacityMultiplier", "deviceMultiplier"):
        value = mapping.get(field)
        if (
            value is not None
            and validate_quantity(value, path.child(field), out)
            and quantity_value(value) <= 0
        ):
            out.append(invalid(path.child(field), str(value), "must be positive"))
    if mapping.get("capacityMultiplier") is not None and key is None:
        out.append(
            required(path.child("capacityKey"), "capacityKey is required when capacityMultiplier is set")
        )


def _validate_allocatable_overhead(overhead: JSON, path: Path, out: Errors) -> None:
    if overhead.get("perPod") is None and overhead.get("perContainer") is None:
        out.append(invalid(path, "", "at least one of perPod or perContainer must be set"))
        return
    for field in ("perPod", "perContainer"):
        value = overhead.get(field)
        if (
            value is not None
            and validate_quantity(value, path.child(field), out)
            and quantity_value(value) < 0
        ):
            out.append(invalid(path.child(field), str(value), "must be non-negative"))


def _validate_capacity(capacity: Any, path: Path, out: Errors, multi_allocatable: bool) -> None:
    cap = typed(capacity, dict, path, out)
    if cap is None:
        return
    value = quantity_or_zero(cap.get("value"))
    value_ok = validate_quantity(value, path.child("value"), out)
    policy = get_obj(cap, "requestPolicy", path, out)
    if policy is None:
        return
    if not multi_allocatable:
        out.append(forbidden(path.child("requestPolicy"), "allowMultipleAllocations must be true"))
    elif value_ok:
        _validate_request_policy(quantity_value(value), policy, path.child("requestPolicy"), out)


def _quantities(policy: JSON, key: str, path: Path, out: Errors) -> Decimal | None:
    raw = policy.get(key)
    if raw is None or not validate_quantity(raw, path.child(key), out):
        return None
    return quantity_value(raw)


def _validate_request_policy(maximum: Decimal, policy: JSON, path: Path, out: Errors) -> None:
    default = _quantities(policy, "default", path, out)
    values = get_list(policy, "validValues", path, out)
    value_range = get_obj(policy, "validRange", path, out)
    if values and value_range is not None:
        out.append(
            forbidden(
                path,
                'exactly one policy can be specified, cannot specify "validValues" and "validRange" at the same time',
            )
        )
        return
    if values:
        if default is None:
            out.append(required(path.child("default"), "required when validValues is defined"))
            return
        _validate_valid_values(default, maximum, values, path.child("validValues"), out)
    elif value_range is not None:
        if default is None:
            out.append(required(path.child("default"), "required when validRange is defined"))
            return
        _validate_valid_range(default, maximum, value_range, path.child("validRange"), out)


def _validate_valid_values(
    default: Decimal, maximum: Decimal, raw: list[Any], path: Path, out: Errors
) -> None:
    if not check_size(raw, MAX_REQUEST_POLICY_OPTIONS, path, out):
        return
    parsed = [
        quantity_value(v) if validate_quantity(v, path.index(i), out) else None for i, v in enumerate(raw)
    ]
    numbers = [v for v in parsed if v is not None]
    for i in range(1, len(parsed)):
        prev, cur = parsed[i - 1], parsed[i]
        if prev is not None and cur is not None and prev > cur:
            out.append(invalid(path.index(i), str(raw[i]), "values must be sorted in ascending order"))
    for i, v in enumerate(parsed):
        if v is not None and v > maximum:
            out.append(
                invalid(path.index(i), str(raw[i]), f"option is larger than capacity value: {maximum}")
            )
    check_unique(parsed, path, out)
    if default not in numbers:
        out.append(invalid(path, str(default), "default value is not valid according to the requestPolicy"))


def _validate_valid_range(
    default: Decimal, maximum: Decimal, value_range: JSON, path: Path, out: Errors
) -> None:
    low = _quantities(value_range, "min", path, out)
    if low is None:
        out.append(required(path.child("min"), "required when validRange is defined"))
        return
    if low > maximum:
        out.append(invalid(path.child("min"), str(low), f"min is larger than capacity value: {maximum}"))
    if default < low:
        out.append(invalid(path.child("default"), str(default), f"default is less than min: {low}"))
    high = _quantities(value_range, "max", path, out)
    if high is not None:
        if low > high:
            out.append(invalid(path.child("max"), str(low), f"min is larger than max: {high}"))
        if high > maximum:
            out.append(invalid(path.child("max"), str(high), f"max is larger than capacity value: {maximum}"))
        if default > high:
            out.append(invalid(path.child("default"), str(default), f"default is more than max: {high}"))
    step = _quantities(value_range, "step", path, out)
    if step is None:
        return
    if step <= 0:
        out.append(invalid(path.child("step"), str(step), "must be greater than zero"))
        return
    if low + step > maximum:
        out.append(
            invalid(
                path.child("step"),
                str(step),
                f"one step {low + step} is larger than capacity value: {maximum}",
            )
        )
    for value in (default, high):
        if value is not None and (value - low) % step != 0:
            out.append(
                invalid(
                    path.child("step"),
                    str(value),
                    f"value is not a multiple of a given step ({step}) from ({low})",
                )
            )


def _validate_taints(taints: list[Any] | None, path: Path, out: Errors) -> None:
    if not check_size(taints, MAX_TAINTS_PER_DEVICE, path, out):
        return
    for taint_path, taint in items_of(taints, path, out):
        validate_device_taint(taint, taint_path, out)


def validate_device_taint(taint: JSON, path: Path, out: Errors) -> None:
    """key: label name; value: label value; effect: NoSchedule, NoExecute or None."""
    validate_label_name(get_str(taint, "key", path, out) or "", path.child("key"), out)
    value = get_str(taint, "value", path, out)
    if value:
        validate_label_value(value, path.child("value"), out)
    effect = get_str(taint, "effect", path, out)
    if not effect:
        out.append(required(path.child("effect")))
    elif effect not in TAINT_EFFECTS:
        out.append(not_supported(path.child("effect"), effect, TAINT_EFFECTS))
    get_time(taint, "timeAdded", path, out)


def _validate_counter_map(counters: JSON | None, limit: int, path: Path, out: Errors) -> None:
    if not counters:
        out.append(required(path))
        return
    if len(counters) > limit:
        out.append(too_many(path, len(counters), limit))
        return
    for name, counter in counters.items():
        add_messages(path, name, dns1123_label_errors(name), out)
        entry = typed(counter, dict, path.key(name), out)
        if entry is not None:
            validate_quantity(quantity_or_zero(entry.get("value")), path.key(name).child("value"), out)


def _validate_counter_sets(sets: list[Any] | None, path: Path, out: Errors) -> None:
    if not check_size(sets, MAX_COUNTER_SETS, path, out):
        return
    entries = items_of(sets, path, out)
    for set_path, counter_set in entries:
        validate_dns_label(
            get_str(counter_set, "name", set_path, out), set_path.child("name"), out, required_value=True
        )
        counters = get_obj(counter_set, "counters", set_path, out)
        _validate_counter_map(counters, MAX_COUNTERS_PER_SET, set_path.child("counters"), out)
    check_unique([entry.get("name") for _, entry in entries], path, out)


def _validate_consumptions(consumptions: list[Any] | None, path: Path, out: Errors) -> None:
    if not check_size(consumptions, MAX_CONSUMPTIONS_PER_DEVICE, path, out):
        return
    entries = items_of(consumptions, path, out)
    for entry_path, entry in entries:
        validate_dns_label(
            get_str(entry, "counterSet", entry_path, out),
            entry_path.child("counterSet"),
            out,
            required_value=True,
        )
        counters = get_obj(entry, "counters", entry_path, out)
        _validate_counter_map(counters, MAX_COUNTERS_PER_CONSUMPTION, entry_path.child("counters"), out)
    check_unique([entry.get("counterSet") for _, entry in entries], path, out)


def _validate_device_node_selection(device: JSON, path: Path, out: Errors, per_device: bool) -> None:
    names = "`nodeName`, `nodeSelector`, or `allNodes`"
    has_any = any(device.get(key) is not None for key in ("nodeName", "nodeSelector", "allNodes"))
    if not per_device:
        if has_any:
            detail = (
                "`nodeName`, `nodeSelector` and `allNodes` can only be set if `perDeviceNodeSelection` is set to "
                "true in the ResourceSlice spec"
            )
            out.append(invalid(path, None, detail))
        return
    chosen = []
    node_name = get_str(device, "nodeName", path, out)
    if node_name is not None:
        if node_name:
            chosen.append("`nodeName`")
            validate_node_name(node_name, path.child("nodeName"), out)
        else:
            out.append(invalid(path.child("nodeName"), node_name, "must not be empty"))
    selector = get_obj(device, "nodeSelector", path, out)
    if selector is not None:
        chosen.append("`nodeSelector`")
        validate_node_selector(selector, path.child("nodeSelector"), out)
    all_nodes = get_bool(device, "allNodes", path, out)
    if all_nodes:
        chosen.append("`allNodes`")
    elif all_nodes is not None:
        out.append(invalid(path.child("allNodes"), all_nodes, "must be either unset or set to true"))
    detail = f"exactly one of {names} is required when `perDeviceNodeSelection` is set to true in the ResourceSlice spec"
    if not chosen:
        out.append(required(path, detail))
    elif len(chosen) > 1:
        out.append(invalid(path, "{" + ", ".join(chosen) + "}", detail))


def validate_binding_conditions(device: JSON, path: Path, out: Errors) -> None:
    """bindingConditions and bindingFailureConditions of a device or an allocation result."""
    conditions: dict[str, list[Any]] = {}
    for key in ("bindingConditions", "bindingFailureConditions"):
        values = get_list(device, key, path, out)
        conditions[key] = values or []
        if not check_size(values, MAX_BINDING_CONDITIONS, path.child(key), out):
            continue
        for i, value in enumerate(conditions[key]):
            if isinstance(value, str):
                validate_label_name(value, path.child(key).index(i), out)
        check_unique(conditions[key], path.child(key), out)
    ok, failure = conditions["bindingConditions"], conditions["bindingFailureConditions"]
    for i, value in enumerate(failure):
        if value in ok:
            detail = "bindingFailureConditions must not overlap with bindingConditions"
            out.append(invalid(path.child("bindingFailureConditions").index(i), value, detail))
    if failure and not ok:
        detail = "bindingConditions are required to use bindingFailureConditions"
        out.append(invalid(path.child("bindingConditions"), ok, detail))
    if ok and not failure:
        detail = "bindingFailureConditions are required to use bindingConditions"
        out.append(invalid(path.child("bindingFailureConditions"), failure, detail))
