"""ResourceClaim and ResourceClaimTemplate validation, spec and status."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any

from driver.kube.api.deviceconfig import validate_opaque_config, validate_raw_object, validate_selectors
from driver.kube.api.fields import (
    JSON,
    Errors,
    Path,
    add_messages,
    check_size,
    check_unique,
    duplicate,
    forbidden,
    get_bool,
    get_int,
    get_list,
    get_obj,
    get_str,
    invalid,
    items_of,
    not_supported,
    required,
    too_long,
    too_many,
    type_invalid,
    typed,
)
from driver.kube.api.limits import (
    ALLOCATION_MODES,
    CONFIG_SOURCES,
    MAX_ALLOCATION_CONFIGS,
    MAX_ALLOCATION_RESULTS,
    MAX_CONFIGS,
    MAX_CONSTRAINTS,
    MAX_DEVICE_STATUS_CONDITIONS,
    MAX_DEVICE_STATUS_DATA_LENGTH,
    MAX_HARDWARE_ADDRESS_LENGTH,
    MAX_INTERFACE_NAME_LENGTH,
    MAX_NETWORK_IPS,
    MAX_REQUESTS,
    MAX_RESERVED_FOR,
    MAX_SUBREQUESTS,
    TAINT_EFFECTS,
    TOLERATION_OPERATORS,
)
from driver.kube.api.metadata import (
    validate_conditions,
    validate_immutable,
    validate_object_meta,
    validate_template_meta,
)
from driver.kube.api.names import (
    dns1123_subdomain_errors,
    uid_errors,
    validate_dns_label,
    validate_driver_name,
    validate_fully_qualified_name,
    validate_label_name,
    validate_label_value,
    validate_pool_name,
)
from driver.kube.api.quantities import quantity_or_zero, validate_quantity
from driver.kube.api.resourceslice import validate_binding_conditions
from driver.kube.api.selectors import validate_node_selector

# -- ResourceClaim and ResourceClaimTemplate -------------------------------------------------------


def validate_resource_claim(claim: JSON, old: JSON | None = None) -> Errors:
    """A new claim's spec; on update only that the spec did not change (it is immutable)."""
    out: Errors = []
    validate_object_meta(typed(claim.get("metadata"), dict, Path("metadata"), out), out, namespaced=True)
    if old is not None:
        validate_immutable(claim.get("spec"), old.get("spec"), Path("spec"), out)
        return out
    spec = get_obj(claim, "spec", Path(""), out) or {}
    validate_claim_spec(spec, Path("spec"), out)
    return out


def validate_resource_claim_template(template: JSON, old: JSON | None = None) -> Errors:
    out: Errors = []
    validate_object_meta(typed(template.get("metadata"), dict, Path("metadata"), out), out, namespaced=True)
    if old is not None:
        validate_immutable(template.get("spec"), old.get("spec"), Path("spec"), out)
        return out
    spec = get_obj(template, "spec", Path(""), out) or {}
    validate_template_meta(get_obj(spec, "metadata", Path("spec"), out) or {}, Path("spec.metadata"), out)
    validate_claim_spec(get_obj(spec, "spec", Path("spec"), out) or {}, Path("spec.spec"), out)
    return out


ADMIN_ACCESS_LABEL = "resource.kubernetes.io/admin-access"
_ADMIN_ACCESS_DETAIL = (
    f"admin access to devices requires the `{ADMIN_ACCESS_LABEL}: true` label on the containing namespace"
)


def admin_access_errors(requests: Any, namespace_labels: Mapping[str, Any] | None) -> Errors:
    """A request for admin access needs the namespace label ``resource.kubernetes.io/admin-access: "true"``.

    As upstream, only the first such request is named, as ``spec.devices.requests[i].adminAccess`` for
    claims and templates alike.
    """
    for i, request in enumerate(requests if isinstance(requests, list) else []):
        exactly = request.get("exactly") if isinstance(request, dict) else None
        if isinstance(exactly, dict) and exactly.get("adminAccess") is True:
            if (namespace_labels or {}).get(ADMIN_ACCESS_LABEL) == "true":
                return []
            path = Path("spec.devices.requests").index(i).child("adminAccess")
            return [forbidden(path, _ADMIN_ACCESS_DETAIL)]
    return []


def status_admin_access_errors(claim: JSON, namespace_labels: Mapping[str, Any] | None) -> Errors:
    """An allocation result with admin access, written through ``status``, needs the same namespace label as
    a request for it: the first such result is named, as ``status.allocation.devices.results[i].adminAccess``."""
    status = claim.get("status") if isinstance(claim.get("status"), dict) else {}
    allocation = (status or {}).get("allocation")
    devices = allocation.get("devices") if isinstance(allocation, dict) else None
    results = devices.get("results") if isinstance(devices, dict) else None
    for i, result in enumerate(results if isinstance(results, list) else []):
        if isinstance(result, dict) and result.get("adminAccess") is True:
            if (namespace_labels or {}).get(ADMIN_ACCESS_LABEL) == "true":
                return []
            path = Path("status.allocation.devices.results").index(i).child("adminAccess")
            return [forbidden(path, _ADMIN_ACCESS_DETAIL)]
    return []


def claim_admin_access_errors(claim: JSON, namespace_labels: Mapping[str, Any] | None) -> Errors:
    devices = ((claim.get("spec") or {}) if isinstance(claim.get("spec"), dict) else {}).get("devices")
    return admin_access_errors(
        (devices or {}).get("requests") if isinstance(devices, dict) else None, namespace_labels
    )


def template_admin_access_errors(template: JSON, namespace_labels: Mapping[str, Any] | None) -> Errors:
    spec = template.get("spec") if isinstance(template.get("spec"), dict) else {}
    return claim_admin_access_errors(spec or {}, namespace_labels)


def validate_claim_spec(spec: JSON, path: Path, out: Errors) -> None:
    """Requests (≤32, unique DNS-label names, exactly one of exactly/firstAvailable), constraints, config."""
    devices = get_obj(spec, "devices", path, out) or {}
    path = path.child("devices")
    requests = get_list(devices, "requests", path, out)
    names = _request_names(requests)
    if check_size(requests, MAX_REQUESTS, path.child("requests"), out):
        entries = items_of(requests, path.child("requests"), out)
        for request_path, request in entries:
            _validate_request(request, request_path, out)
        check_unique([request.get("name") for _, request in entries], path.child("requests"), out)
    constraints = get_list(devices, "constraints", path, out)
    if check_size(constraints, MAX_CONSTRAINTS, path.child("constraints"), out):
        for constraint_path, constraint in items_of(constraints, path.child("constraints"), out):
            _validate_constraint(constraint, constraint_path, names, out)
    configs = get_list(devices, "config", path, out)
    if check_size(configs, MAX_CONFIGS, path.child("config"), out):
        for config_path, config in items_of(configs, path.child("config"), out):
            _validate_request_refs(
                get_list(config, "requests", config_path, out), config_path.child("requests"), names, out
            )
            validate_opaque_config(config, config_path, out)


def _request_names(requests: list[Any] | None) -> dict[str, set[str]]:
    """Request name -> its subrequest names (for references like ``req`` or ``req/sub``)."""
    names: dict[str, set[str]] = {}
    for request in requests or []:
        if isinstance(request, dict) and isinstance(request.get("name"), str):
            subs = request.get("firstAvailable") or []
            names[request["name"]] = {
                str(s["name"]) for s in subs if isinstance(s, dict) and isinstance(s.get("name"), str)
            }
    return names


def _validate_request(request: JSON, path: Path, out: Errors) -> None:
    validate_dns_label(get_str(request, "name", path, out), path.child("name"), out)
    exactly = get_obj(request, "exactly", path, out)
    first = get_list(request, "firstAvailable", path, out)
    kinds = "exactly one of `exactly` or `firstAvailable` is required"
    if exactly is None and not first:
        out.append(required(path, kinds))
    elif exactly is not None and first:
        out.append(invalid(path, None, f"{kinds}, but multiple fields are set"))
    elif exactly is not None:
        _validate_device_request(exactly, path.child("exactly"), out)
    elif check_size(first, MAX_SUBREQUESTS, path.child("firstAvailable"), out):
        entries = items_of(first, path.child("firstAvailable"), out)
        for sub_path, sub in entries:
            validate_dns_label(get_str(sub, "name", sub_path, out), sub_path.child("name"), out)
            _validate_device_request(sub, sub_path, out)
        check_unique([sub.get("name") for _, sub in entries], path.child("firstAvailable"), out)


def _validate_device_request(request: JSON, path: Path, out: Errors) -> None:
    class_name = get_str(request, "deviceClassName", path, out)
    if not class_name:
        out.append(required(path.child("deviceClassName")))
    else:
        add_messages(path.child("deviceClassName"), class_name, dns1123_subdomain_errors(class_name), out)
    validate_selectors(get_list(request, "selectors", path, out), path.child("selectors"), out)
    mode = get_str(request, "allocationMode", path, out) or "ExactCount"  # the server's default
    count = get_int(request, "count", path, out) or 0
    if mode == "ExactCount":
        count = count or 1  # defaulted from 0/unset
        if count <= 0:
            out.append(invalid(path.child("count"), count, "must be greater than zero"))
    elif mode == "All":
        if count != 0:
            out.append(
                invalid(path.child("count"), count, "must not be specified when allocationMode is 'All'")
            )
    else:
        out.append(not_supported(path.child("allocationMode"), mode, ALLOCATION_MODES))
    get_bool(request, "adminAccess", path, out)
    capacity = get_obj(request, "capacity", path, out) or {}
    requests_path = path.child("capacity", "requests")
    for key, value in (get_obj(capacity, "requests", path.child("capacity"), out) or {}).items():
        validate_quantity(quantity_or_zero(value), requests_path.key(key), out)
    tolerations = get_list(request, "tolerations", path, out)
    for toleration_path, toleration in items_of(
        tolerations, path.child("tolerations"), out
    ):  # no count limit
        _validate_toleration(toleration, toleration_path, out)


def _validate_toleration(toleration: JSON, path: Path, out: Errors) -> None:
    key = get_str(toleration, "key", path, out)
    if key:
        validate_label_name(key, path.child("key"), out)
    operator = get_str(toleration, "operator", path, out) or "Equal"  # the server's default
    value = get_str(toleration, "value", path, out) or ""
    if operator == "Exists":
        if value:
            out.append(invalid(path.child("value"), value, "must be empty for operator `Exists`"))
    elif operator == "Equal":
        validate_label_value(value, path.child("value"), out)
    else:
        out.append(not_supported(path.child("operator"), operator, TOLERATION_OPERATORS))
    effect = get_str(toleration, "effect", path, out)
    if effect and effect not in TAINT_EFFECTS:
        out.append(not_supported(path.child("effect"), effect, TAINT_EFFECTS))
    get_int(toleration, "tolerationSeconds", path, out)


_REF_DETAIL = (
    "must be the name of a request in the claim or the name of a request and a subrequest separated by '/'"
)


def _validate_request_refs(
    refs: list[Any] | None, path: Path, names: dict[str, set[str]], out: Errors
) -> None:
    if not check_size(refs, MAX_REQUESTS, path, out):
        return
    for i, ref in enumerate(refs or []):
        if not isinstance(ref, str):
            out.append(type_invalid(path.index(i), ref, "must be a string"))
            continue
        _validate_request_ref(ref, path.index(i), names, out)
    check_unique(list(refs or []), path, out)


def _validate_request_ref(ref: str, path: Path, names: dict[str, set[str]], out: Errors) -> None:
    """``request`` or ``request/subrequest`` naming a request of the claim."""
    segments = ref.split("/")
    if len(segments) > 2:
        out.append(invalid(path, ref, _REF_DETAIL))
        return
    for segment in segments:
        validate_dns_label(segment, path, out)
    known = segments[0] in names and (len(segments) == 1 or segments[1] in names[segments[0]])
    if not known:
        out.append(invalid(path, ref, _REF_DETAIL))


def _validate_constraint(constraint: JSON, path: Path, names: dict[str, set[str]], out: Errors) -> None:
    _validate_request_refs(get_list(constraint, "requests", path, out), path.child("requests"), names, out)
    match = get_str(constraint, "matchAttribute", path, out)
    distinct = get_str(constraint, "distinctAttribute", path, out)
    if match is not None:
        validate_fully_qualified_name(match, path.child("matchAttribute"), out)
    elif distinct is not None:
        validate_fully_qualified_name(distinct, path.child("distinctAttribute"), out)
    else:
        out.append(required(path, 'exactly one of "matchAttribute" or "distinctAttribute" is required'))


def validate_resource_claim_status(claim: JSON, old: JSON) -> Errors:
    """A status update: reservedFor needs an allocation, an allocation once set is immutable, results are sane."""
    out: Errors = []
    path = Path("status")
    status = get_obj(claim, "status", Path(""), out) or {}
    old_status = old.get("status") if isinstance(old.get("status"), dict) else {}
    reserved = get_list(status, "reservedFor", path, out)
    if check_size(reserved, MAX_RESERVED_FOR, path.child("reservedFor"), out):
        entries = items_of(reserved, path.child("reservedFor"), out)
        for ref_path, ref in entries:
            for key in ("resource", "name", "uid"):
                if not get_str(ref, key, ref_path, out):
                    out.append(required(ref_path.child(key)))
        check_unique([ref.get("uid") for _, ref in entries], path.child("reservedFor"), out)
    allocation = get_obj(status, "allocation", path, out)
    old_allocation = (old_status or {}).get("allocation")
    if reserved and allocation is None:
        out.append(forbidden(path.child("reservedFor"), "may not be specified when `allocated` is not set"))
    if allocation is not None and old_allocation is not None:
        validate_immutable(allocation, old_allocation, path.child("allocation"), out)
    elif allocation is not None:
        spec = claim.get("spec") if isinstance(claim.get("spec"), dict) else {}
        devices = (spec or {}).get("devices") or {}
        names = _request_names(devices.get("requests") if isinstance(devices, dict) else None)
        _validate_allocation(allocation, path.child("allocation"), names, out)
    _validate_device_statuses(status, allocation, path, out)
    return out


def _validate_allocation(allocation: JSON, path: Path, names: dict[str, set[str]], out: Errors) -> None:
    """A new allocation result (a stored one is only compared: the rules for new results are stricter)."""
    devices_path = path.child("devices")
    devices = get_obj(allocation, "devices", path, out) or {}
    results = get_list(devices, "results", devices_path, out)
    if check_size(results, MAX_ALLOCATION_RESULTS, devices_path.child("results"), out):
        for result_path, result in items_of(results, devices_path.child("results"), out):
            _validate_result(result, result_path, names, out)
    configs = get_list(devices, "config", devices_path, out)
    if check_size(configs, MAX_ALLOCATION_CONFIGS, devices_path.child("config"), out):
        for config_path, config in items_of(configs, devices_path.child("config"), out):
            _validate_allocation_config(config, config_path, names, out)
    if isinstance(allocation.get("nodeSelector"), dict):
        validate_node_selector(allocation["nodeSelector"], path.child("nodeSelector"), out)


def _validate_result(result: JSON, path: Path, names: dict[str, set[str]], out: Errors) -> None:
    _validate_request_ref(get_str(result, "request", path, out) or "", path.child("request"), names, out)
    validate_driver_name(get_str(result, "driver", path, out), path.child("driver"), out)
    validate_pool_name(get_str(result, "pool", path, out), path.child("pool"), out)
    validate_dns_label(get_str(result, "device", path, out), path.child("device"), out)
    validate_binding_conditions(result, path, out)
    share_id = get_str(result, "shareID", path, out)
    if share_id is not None:
        add_messages(path.child("shareID"), share_id, uid_errors(share_id), out)
    get_bool(result, "adminAccess", path, out)
    consumed = get_obj(result, "consumedCapacity", path, out) or {}
    for key, value in consumed.items():
        validate_quantity(value, path.child("consumedCapacity").key(key), out)


def _validate_allocation_config(config: JSON, path: Path, names: dict[str, set[str]], out: Errors) -> None:
    source = get_str(config, "source", path, out) or ""
    if not source:
        out.append(required(path.child("source")))
    elif source not in CONFIG_SOURCES:
        out.append(not_supported(path.child("source"), source, CONFIG_SOURCES))
    _validate_request_refs(get_list(config, "requests", path, out), path.child("requests"), names, out)
    validate_opaque_config(config, path, out)


def _device_id(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    return (entry.get("driver"), entry.get("pool"), entry.get("device"), entry.get("shareID"))


def _validate_device_statuses(status: JSON, allocation: JSON | None, path: Path, out: Errors) -> None:
    statuses_path = path.child("devices")
    entries = items_of(get_list(status, "devices", path, out), statuses_path, out)
    results = ((allocation or {}).get("devices") or {}).get("results") or []
    allocated = {_device_id(r) for r in results if isinstance(r, dict)}
    for entry_path, entry in entries:
        _validate_device_status(entry, entry_path, allocated, out)
    check_unique([_device_id(entry) for _, entry in entries], statuses_path, out)


def _validate_device_status(entry: JSON, path: Path, allocated: set[tuple[Any, ...]], out: Errors) -> None:
    """One ``status.devices`` entry, in upstream's order (validateDeviceStatus)."""
    validate_driver_name(get_str(entry, "driver", path, out), path.child("driver"), out)
    validate_pool_name(get_str(entry, "pool", path, out), path.child("pool"), out)
    validate_dns_label(get_str(entry, "device", path, out), path.child("device"), out)
    share_id = get_str(entry, "shareID", path, out)
    if share_id is not None:
        add_messages(path.child("shareID"), share_id, uid_errors(share_id), out)
    if _device_id(entry) not in allocated:
        shown = "/".join(str(part) for part in _device_id(entry)[:3])
        out.append(invalid(path, shown, "must be an allocated device in the claim"))
    conditions = get_list(entry, "conditions", path, out)
    conditions_path = path.child("conditions")
    if conditions is not None and len(conditions) > MAX_DEVICE_STATUS_CONDITIONS:
        # No short cut here: upstream still validates every condition.
        out.append(too_many(conditions_path, len(conditions), MAX_DEVICE_STATUS_CONDITIONS))
    validate_conditions(items_of(conditions, conditions_path, out), out)
    if entry.get("data") is not None:
        validate_raw_object(entry["data"], path.child("data"), MAX_DEVICE_STATUS_DATA_LENGTH, out)
    network = get_obj(entry, "networkData", path, out)
    if network is not None:
        _validate_network_data(network, path.child("networkData"), out)


# google/uuid's Validate accepts these four spellings; the server then insists on the first, lower-case.
def _validate_network_data(network: JSON, path: Path, out: Errors) -> None:
    """interfaceName and hardwareAddress lengths; ips: at most 16 distinct canonical CIDR addresses."""
    for key, limit in (
        ("interfaceName", MAX_INTERFACE_NAME_LENGTH),
        ("hardwareAddress", MAX_HARDWARE_ADDRESS_LENGTH),
    ):
        value = get_str(network, key, path, out)
        if value is not None and len(value.encode()) > limit:
            out.append(too_long(path.child(key), limit))
    ips = get_list(network, "ips", path, out)
    ips_path = path.child("ips")
    if not check_size(ips, MAX_NETWORK_IPS, ips_path, out):
        return
    seen: set[str] = set()
    for i, address in enumerate(ips or []):
        text = typed(address, str, ips_path.index(i), out)
        if text is None:
            continue
        add_messages(ips_path.index(i), text, interface_address_errors(text), out)
        if text in seen:
            out.append(duplicate(ips_path.index(i), text))
        seen.add(text)


def _parse_ipv4_sloppy(text: str) -> ipaddress.IPv4Address | None:
    """Dotted-quad IPv4 that also takes leading zeros as decimal, as netutils.ParseIPSloppy does."""
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    octets = [int(p) for p in parts]
    if any(o > 255 for o in octets):
        return None
    return ipaddress.IPv4Address(bytes(octets))


def interface_address_errors(value: str) -> list[str]:
    """Messages for a value that is not an ifaddr-style CIDR (``10.9.8.7/24``) in canonical form."""
    not_cidr = ["must be a valid address in CIDR form, (e.g. 10.9.8.7/24 or 2001:db8::1/64)"]
    address, slash, prefix = value.partition("/")
    if not slash or not prefix or not (prefix.isascii() and prefix.isdigit()) or "%" in address:
        return not_cidr
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = _parse_ipv4_sloppy(address)
    if ip is None:
        try:
            ip = ipaddress.IPv6Address(address) if ":" in address else None
        except ValueError:
            ip = None
    if ip is None or int(prefix) > ip.max_prefixlen:
        return not_cidr
    bits = int(prefix)
    shown: ipaddress.IPv4Address | ipaddress.IPv6Address = ip
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # Go prints an IPv4-mapped address as IPv4, and its mask relative to 32 bits where it fits.
        shown = ip.ipv4_mapped
        if bits > 32:
            bits -= 96
    canonical = f"{shown}/{bits}"
    if value != canonical:
        return [f"must be in canonical form ({json.dumps(canonical)})"]
    return []
