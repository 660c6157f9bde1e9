"""Validation of ``resource.k8s.io/v1`` objects as the kube-apiserver does it (Kubernetes 1.35 rules).

The input is the camelCase JSON dict the API server receives; the output is a list of
:class:`FieldError` in the style of Kubernetes field errors (``spec.devices[3].attributes[foo].version:
Invalid value: "01.2.3": must be a string compatible with semver.org spec 2.0.0``). Nothing here does
I/O: the sandbox API server turns the errors into a 422 ``Status`` (:func:`invalid_status`) and
``accel-dra validate`` prints them.

Two classes of problem are reported:

* validation errors, which the real server answers with 422 Invalid;
* decode errors (:attr:`FieldError.is_decode_error`): a value of the wrong JSON type or an unparseable
  quantity. The real server fails those while decoding the body, with 400 BadRequest, before
  validation runs; :func:`decode_error_status` builds that answer.

Scope: the rules of ``pkg/apis/resource/validation`` for the fields a v1 object has in 1.35, including
the alpha fields behind feature gates (taints, counters, per-device node selection, consumable
capacity, binding conditions) as if their gates were on. CEL selectors are compiled, type-checked and cost-estimated in
the API server's environment for new objects (driver/allocation/cel.py). Defaults the server applies (allocationMode, count, toleration
operator) are assumed when a field is missing, so undefaulted input validates like the stored form.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from driver.semver import is_semver

JSON = dict[str, Any]

# Limits from resource.k8s.io/v1 types.go (1.35).
MAX_DEVICES_PER_SLICE = 128
MAX_DEVICES_WITH_TAINTS_OR_COUNTERS = 64
MAX_ATTRIBUTES_AND_CAPACITIES = 32
MAX_ID_LENGTH = 32
MAX_DOMAIN_LENGTH = 63
MAX_ATTRIBUTE_VALUE_LENGTH = 64
MAX_ATTRIBUTE_VALUES = 48  # per device, list items counted one by one
MAX_TAINTS_PER_DEVICE = 16
MAX_COUNTER_SETS = 8
MAX_COUNTERS_PER_SET = 32
MAX_CONSUMPTIONS_PER_DEVICE = 2
MAX_COUNTERS_PER_CONSUMPTION = 32
MAX_BINDING_CONDITIONS = 4
MAX_POOL_NAME_LENGTH = 253
MAX_DRIVER_NAME_LENGTH = 63
MAX_REQUESTS = 32
MAX_SUBREQUESTS = 8
MAX_SELECTORS = 32
MAX_CONSTRAINTS = 32
MAX_CONFIGS = 32
MAX_TOLERATIONS = 16
MAX_CEL_LENGTH = 10 * 1024
MAX_OPAQUE_PARAMETERS_LENGTH = 10 * 1024
MAX_RESERVED_FOR = 256
MAX_ALLOCATION_RESULTS = 32
MAX_REQUEST_POLICY_OPTIONS = 10
MAX_DEVICE_STATUS_CONDITIONS = 8
MAX_LABEL_LENGTH = 63
MAX_SUBDOMAIN_LENGTH = 253
# Device status (resource.k8s.io/v1 types.go) and metav1.Condition limits.
MAX_DEVICE_STATUS_DATA_LENGTH = 10 * 1024
MAX_NETWORK_IPS = 16
MAX_INTERFACE_NAME_LENGTH = 256
MAX_HARDWARE_ADDRESS_LENGTH = 128
MAX_CONDITION_REASON_LENGTH = 1024
MAX_CONDITION_MESSAGE_LENGTH = 32 * 1024
# ObjectMeta (apimachinery api/validation/objectmeta.go).
MAX_ANNOTATIONS_SIZE = 256 * 1024

TAINT_EFFECTS = ("NoExecute", "NoSchedule", "None")  # sorted, as the server lists them
ALLOCATION_MODES = ("All", "ExactCount")
TOLERATION_OPERATORS = ("Equal", "Exists")
CONFIG_SOURCES = ("FromClaim", "FromClass")
CONDITION_STATUSES = ("False", "True", "Unknown")  # sorted, as the server lists them
# Kinds that may not own anything, as "group/version, Kind=kind" (schema.GroupVersionKind's String).
BANNED_OWNERS = frozenset({"/v1, Kind=Event"})


class ErrorType(StrEnum):
    """The ``reason`` of a Status cause; the values match apimachinery's ``field.ErrorType``."""

    NOT_FOUND = "FieldValueNotFound"
    REQUIRED = "FieldValueRequired"
    DUPLICATE = "FieldValueDuplicate"
    INVALID = "FieldValueInvalid"
    NOT_SUPPORTED = "FieldValueNotSupported"
    FORBIDDEN = "FieldValueForbidden"
    TOO_LONG = "FieldValueTooLong"
    TOO_MANY = "FieldValueTooMany"
    TYPE_INVALID = "FieldValueTypeInvalid"

    @property
    def text(self) -> str:
        return _TYPE_TEXT[self]


_TYPE_TEXT = {
    ErrorType.NOT_FOUND: "Not found",
    ErrorType.REQUIRED: "Required value",
    ErrorType.DUPLICATE: "Duplicate value",
    ErrorType.INVALID: "Invalid value",
    ErrorType.NOT_SUPPORTED: "Unsupported value",
    ErrorType.FORBIDDEN: "Forbidden",
    ErrorType.TOO_LONG: "Too long",
    ErrorType.TOO_MANY: "Too many",
    ErrorType.TYPE_INVALID: "Invalid value",
}
# These render without the offending value, as apimachinery does.
_VALUELESS = {ErrorType.REQUIRED, ErrorType.FORBIDDEN, ErrorType.TOO_LONG}


def _render_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class FieldError:
    """One violation, like apimachinery's ``field.Error``."""

    type: ErrorType
    field: str
    value: Any = None
    detail: str = ""

    @property
    def is_decode_error(self) -> bool:
        """True where the real server rejects the body while decoding it (400), not in validation (422)."""
        return self.type is ErrorType.TYPE_INVALID

    def body(self) -> str:
        """The message without the field path (a Status cause's ``message``)."""
        text = self.type.text
        if self.type not in _VALUELESS:
            text += f": {_render_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


@dataclass(frozen=True)
class Path:
    """A field path such as ``spec.devices[3].attributes[foo]`` (apimachinery's ``field.Path``)."""

    text: str

    def child(self, *names: str) -> Path:
        text = self.text
        for name in names:
            text = f"{text}.{name}" if text else name
        return Path(text)

    def index(self, i: int) -> Path:
        return Path(f"{self.text}[{i}]")

    def key(self, key: str) -> Path:
        return Path(f"{self.text}[{key}]")

    def __str__(self) -> str:
        return self.text


Errors = list[FieldError]


def required(path: Path, detail: str = "") -> FieldError:
    return FieldError(ErrorType.REQUIRED, str(path), "", detail)


def invalid(path: Path, value: Any, detail: str) -> FieldError:
    return FieldError(ErrorType.INVALID, str(path), value, detail)


def not_found(path: Path, value: Any) -> FieldError:
    return FieldError(ErrorType.NOT_FOUND, str(path), value, "")


def forbidden(path: Path, detail: str) -> FieldError:
    return FieldError(ErrorType.FORBIDDEN, str(path), "", detail)


def duplicate(path: Path, value: Any) -> FieldError:
    return FieldError(ErrorType.DUPLICATE, str(path), value)


def not_supported(path: Path, value: Any, supported: tuple[str, ...]) -> FieldError:
    return FieldError(
        ErrorType.NOT_SUPPORTED,
        str(path),
        value,
        "supported values: " + ", ".join(f'"{v}"' for v in supported),
    )


def too_long(path: Path, max_length: int) -> FieldError:
    return FieldError(
        ErrorType.TOO_LONG, str(path), "<value omitted>", f"may not be more than {max_length} bytes"
    )


def too_many(path: Path, actual: int, maximum: int) -> FieldError:
    noun = "item" if maximum == 1 else "items"
    return FieldError(ErrorType.TOO_MANY, str(path), actual, f"must have at most {maximum} {noun}")


def type_invalid(path: Path, value: Any, detail: str) -> FieldError:
    return FieldError(ErrorType.TYPE_INVALID, str(path), value, detail)


# -- string formats (apimachinery util/validation) --------------------------------------------------

_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN_FMT = _LABEL_FMT + r"(\." + _LABEL_FMT + ")*"
_CIDENT_FMT = "[A-Za-z_][A-Za-z0-9_]*"
_QNAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT = "(" + _QNAME_FMT + ")?"
_LABEL_RE = re.compile(f"^{_LABEL_FMT}$")
_SUBDOMAIN_RE = re.compile(f"^{_SUBDOMAIN_FMT}$")
_CIDENT_RE = re.compile(f"^{_CIDENT_FMT}$")
_QNAME_RE = re.compile(f"^{_QNAME_FMT}$")
_LABEL_VALUE_RE = re.compile(f"^{_LABEL_VALUE_FMT}$")
# DNS-1035 label: what Service names must be.
_DNS1035_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS1035_RE = re.compile(f"^{_DNS1035_FMT}$")

# Go's resource.Quantity grammar: sign, decimal number, then a binary-SI, decimal-SI or exponent suffix.
_QUANTITY_RE = re.compile(
    r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
)


def _regex_error(message: str, fmt: str, *examples: str) -> str:
    # The doubled space before "or" is what the server prints.
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{fmt}')"


def dns1123_label_errors(value: str) -> list[str]:
    """Messages for a value that is not a DNS-1123 label (empty list when it is one)."""
    msgs = []
    if len(value) > MAX_LABEL_LENGTH:
        msgs.append(f"must be no more than {MAX_LABEL_LENGTH} bytes")
    if not _LABEL_RE.match(value):
        msgs.append(
            _regex_error(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
                "and must start and end with an alphanumeric character",
                _LABEL_FMT,
                "my-name",
                "123-abc",
            )
        )
    return msgs


def dns1123_subdomain_errors(value: str) -> list[str]:
    """Messages for a value that is not a DNS-1123 subdomain."""
    msgs = []
    if len(value) > MAX_SUBDOMAIN_LENGTH:
        msgs.append(f"must be no more than {MAX_SUBDOMAIN_LENGTH} bytes")
    if not _SUBDOMAIN_RE.match(value):
        msgs.append(
            _regex_error(
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                "and must start and end with an alphanumeric character",
                _SUBDOMAIN_FMT,
                "example.com",
            )
        )
    return msgs


def dns1035_label_errors(value: str) -> list[str]:
    """Messages for a value that is not a DNS-1035 label (the format of Service names)."""
    msgs = []
    if len(value) > MAX_LABEL_LENGTH:
        msgs.append(f"must be no more than {MAX_LABEL_LENGTH} bytes")
    if not _DNS1035_RE.match(value):
        msgs.append(
            _regex_error(
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                "alphabetic character, and end with an alphanumeric character",
                _DNS1035_FMT,
                "my-name",
                "abc-123",
            )
        )
    return msgs


def c_identifier_errors(value: str) -> list[str]:
    if _CIDENT_RE.match(value):
        return []
    return [
        _regex_error(
            "a valid C identifier must start with alphabetic character or '_', followed by a string of "
            "alphanumeric characters or '_'",
            _CIDENT_FMT,
            "my_name",
            "MY_NAME",
            "MyName",
        )
    ]


def qualified_name_errors(value: str) -> list[str]:
    """Messages for a value that is not a label key (``[prefix/]name``)."""
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return ["prefix part must be non-empty"]
        prefix_msgs = [f"prefix part {msg}" for msg in dns1123_subdomain_errors(prefix)]
        if prefix_msgs:
            return prefix_msgs
    else:
        return [
            _regex_error(
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and "
                "end with an alphanumeric character",
                _QNAME_FMT,
                "MyName",
                "my.name",
                "123-abc",
            )
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        return ["name part must be non-empty"]
    msgs = []
    if len(name) > MAX_LABEL_LENGTH:
        msgs.append(f"name part must be no more than {MAX_LABEL_LENGTH} bytes")
    if not _QNAME_RE.match(name):
        msgs.append(
            "name part "
            + _regex_error(
                "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                "alphanumeric character",
                _QNAME_FMT,
                "MyName",
                "my.name",
                "123-abc",
            )
        )
    return msgs


def label_value_errors(value: str) -> list[str]:
    msgs = []
    if len(value) > MAX_LABEL_LENGTH:
        msgs.append(f"must be no more than {MAX_LABEL_LENGTH} bytes")
    if not _LABEL_VALUE_RE.match(value):
        msgs.append(
            _regex_error(
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character",
                _LABEL_VALUE_FMT,
                "MyValue",
                "my_value",
                "12345",
            )
        )
    return msgs


def is_quantity(value: Any) -> bool:
    """Whether the server would parse ``value`` as a ``resource.Quantity`` (JSON string or number)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        value = repr(value)
    return isinstance(value, str) and bool(_QUANTITY_RE.match(value))


def quantity_value(value: Any) -> Decimal:
    """The numeric value of a quantity already checked with :func:`is_quantity`."""
    from driver.quantity import parse_quantity

    return parse_quantity(value)


# -- typed access to JSON (type mismatches are decode errors) ---------------------------------------

_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}


def _typed(value: Any, kind: type, path: Path, out: Errors) -> Any:
    """``value`` if it has JSON type ``kind`` (None passes through as "unset"), else record a decode error."""
    if value is None:
        return None
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if ok:
        return value
    out.append(type_invalid(path, value, f"must be {_TYPE_NAMES.get(kind, 'an integer')}"))
    return None


def _obj(parent: Mapping[str, Any], key: str, path: Path, out: Errors) -> JSON | None:
    result: JSON | None = _typed(parent.get(key), dict, path.child(key), out)
    return result


def _list(parent: Mapping[str, Any], key: str, path: Path, out: Errors) -> list[Any] | None:
    result: list[Any] | None = _typed(parent.get(key), list, path.child(key), out)
    return result


def _str(parent: Mapping[str, Any], key: str, path: Path, out: Errors) -> str | None:
    result: str | None = _typed(parent.get(key), str, path.child(key), out)
    return result


def _int(parent: Mapping[str, Any], key: str, path: Path, out: Errors) -> int | None:
    result: int | None = _typed(parent.get(key), int, path.child(key), out)
    return result


def _bool(parent: Mapping[str, Any], key: str, path: Path, out: Errors) -> bool | None:
    result: bool | None = _typed(parent.get(key), bool, path.child(key), out)
    return result


def _items(value: list[Any] | None, path: Path, out: Errors) -> list[tuple[Path, JSON]]:
    """(path, object) for each list entry that is an object; other entries are decode errors."""
    result = []
    for i, item in enumerate(value or []):
        entry = _typed(item, dict, path.index(i), out)
        if entry is not None:
            result.append((path.index(i), entry))
    return result


def _check_size(items: list[Any] | None, maximum: int, path: Path, out: Errors) -> bool:
    """Record TooMany and return False when a list is over its limit (the server then skips its items)."""
    if items is not None and len(items) > maximum:
        out.append(too_many(path, len(items), maximum))
        return False
    return True


def _check_unique(keys: list[Any], path: Path, out: Errors) -> None:
    seen: set[str] = set()
    for i, key in enumerate(keys):
        # Keys of the wrong JSON type (reported by the type checks) must not crash the duplicate check.
        marker = json.dumps(key, sort_keys=True, default=str)
        if marker in seen:
            out.append(duplicate(path.index(i), key))
        seen.add(marker)


def _truncate_key(key: str, max_len: int) -> str:
    max_len = max(max_len, 16)
    if len(key) <= max_len:
        return key
    remaining = max_len - 3
    return key[: (remaining + 1) // 2] + "..." + key[len(key) - remaining // 2 :]


def _check_messages(path: Path, value: str, msgs: list[str], out: Errors) -> None:
    out.extend(invalid(path, value, msg) for msg in msgs)


# -- shared field rules ----------------------------------------------------------------------------


def validate_driver_name(name: str | None, path: Path, out: Errors) -> None:
    """A driver name: DNS subdomain of at most 63 bytes. The server checks it case-insensitively."""
    if not name:
        out.append(required(path))
        return
    if len(name) > MAX_DRIVER_NAME_LENGTH:
        out.append(too_long(path, MAX_DRIVER_NAME_LENGTH))
    _check_messages(path, name, dns1123_subdomain_errors(name.lower()), out)


def validate_pool_name(name: str | None, path: Path, out: Errors) -> None:
    """One or more DNS subdomains separated by '/', at most 253 bytes in all."""
    if not name:
        out.append(required(path))
        return
    if len(name) > MAX_POOL_NAME_LENGTH:
        out.append(too_long(path, MAX_POOL_NAME_LENGTH))
    for part in name.split("/"):
        _check_messages(path, part, dns1123_subdomain_errors(part), out)


def _validate_label_name(key: str, path: Path, out: Errors) -> None:
    _check_messages(path, key, qualified_name_errors(key), out)


def _validate_label_value(value: str, path: Path, out: Errors) -> None:
    _check_messages(path, value, label_value_errors(value), out)


def _validate_dns_label(name: str | None, path: Path, out: Errors) -> None:
    if not name:
        out.append(required(path))
        return
    _check_messages(path, name, dns1123_label_errors(name), out)


def _validate_c_identifier(ident: str, path: Path, out: Errors) -> None:
    if len(ident) > MAX_ID_LENGTH:
        out.append(too_long(path, MAX_ID_LENGTH))
    _check_messages(path, ident, c_identifier_errors(ident), out)


def validate_qualified_name(name: str, path: Path, out: Errors) -> None:
    """An attribute or capacity key: a C identifier (≤32), optionally prefixed with ``<domain>/``."""
    parts = name.split("/")
    if len(parts) == 1:
        _validate_c_identifier(parts[0], path, out)
    elif len(parts) == 2:
        domain, ident = parts
        if domain:
            validate_driver_name(domain, path, out)
        else:
            out.append(invalid(path, "", "the domain must not be empty"))
        if ident:
            _validate_c_identifier(ident, path, out)
        else:
            out.append(invalid(path, "", "the name must not be empty"))
    else:
        out.append(invalid(path, name, "must not contain more than one slash"))


def validate_fully_qualified_name(name: str | None, path: Path, out: Errors) -> None:
    """Like :func:`validate_qualified_name`, but the domain is mandatory (``matchAttribute``)."""
    if name is None:
        return
    validate_qualified_name(name, path, out)
    if "/" not in name:
        out.append(
            invalid(path, name, "a fully qualified name must be a domain and a name separated by a slash")
        )


def _validate_quantity(value: Any, path: Path, out: Errors) -> bool:
    if is_quantity(value):
        return True
    out.append(
        type_invalid(
            path,
            value,
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
        )
    )
    return False


def _validate_node_name(name: str, path: Path, out: Errors) -> None:
    _check_messages(path, name, dns1123_subdomain_errors(name), out)


def _validate_node_selector_requirement(req: JSON, path: Path, out: Errors, *, fields: bool) -> None:
    key = _str(req, "key", path, out) or ""
    op = _str(req, "operator", path, out) or ""
    values = [v for v in (_list(req, "values", path, out) or []) if isinstance(v, str)]
    values_path = path.child("values")
    if fields:
        if key != "metadata.name":
            out.append(invalid(path.child("key"), key, "not a valid field selector key"))
        if op not in ("In", "NotIn"):
            out.append(invalid(path.child("operator"), op, "not a valid selector operator"))
        elif len(values) != 1:
            out.append(
                required(
                    values_path,
                    "must be only one value when `operator` is 'In' or 'NotIn' for node field selector",
                )
            )
        for i, value in enumerate(values):
            _validate_node_name(value, values_path.index(i), out)
        return
    if op in ("In", "NotIn"):
        if not values:
            out.append(required(values_path, "must be specified when `operator` is 'In' or 'NotIn'"))
    elif op in ("Exists", "DoesNotExist"):
        if values:
            out.append(
                forbidden(values_path, "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
            )
    elif op in ("Gt", "Lt"):
        if len(values) != 1:
            out.append(
                required(values_path, "must be specified single value when `operator` is 'Lt' or 'Gt'")
            )
    else:
        out.append(invalid(path.child("operator"), op, "not a valid selector operator"))
    _validate_label_name(key, path.child("key"), out)
    for i, value in enumerate(values):
        _validate_label_value(value, values_path.index(i), out)


def validate_node_selector(
    selector: JSON, path: Path, out: Errors, *, exactly_one_term: bool = False
) -> None:
    """A core/v1 NodeSelector (the slice form must have exactly one term)."""
    terms_path = path.child("nodeSelectorTerms")
    terms = _list(selector, "nodeSelectorTerms", path, out)
    if not terms:
        out.append(required(terms_path, "must have at least one node selector term"))
    for term_path, term in _items(terms, terms_path, out):
        for kind, fields in (("matchExpressions", False), ("matchFields", True)):
            for req_path, req in _items(_list(term, kind, term_path, out), term_path.child(kind), out):
                _validate_node_selector_requirement(req, req_path, out, fields=fields)
    if exactly_one_term and terms is not None and len(terms) != 1:
        out.append(invalid(terms_path, terms, "must have exactly one node selector term"))


def validate_object_meta(
    meta: JSON | None,
    out: Errors,
    *,
    namespaced: bool,
    name_errors: Callable[[str], list[str]] = dns1123_subdomain_errors,
    path: Path = Path("metadata"),
) -> None:
    """Name (or generateName), namespace presence, labels, annotations, ownerReferences, finalizer names."""
    meta = meta or {}
    name = _str(meta, "name", path, out)
    generate_name = _str(meta, "generateName", path, out)
    if not name and not generate_name:
        out.append(required(path.child("name"), "name or generateName is required"))
    if name:
        _check_messages(path.child("name"), name, name_errors(name), out)
    if generate_name and not name:
        # A prefix may end in '-': check it as the server does, with that dash masked.
        masked = generate_name[:-1] + "a" if generate_name.endswith("-") else generate_name
        _check_messages(path.child("generateName"), generate_name, name_errors(masked), out)
    namespace = _str(meta, "namespace", path, out)
    if namespaced and not namespace:
        out.append(required(path.child("namespace")))
    elif not namespaced and namespace:
        out.append(forbidden(path.child("namespace"), "not allowed on this type"))
    labels = _obj(meta, "labels", path, out) or {}
    for key, value in labels.items():
        _validate_label_name(key, path.child("labels"), out)
        if isinstance(value, str):
            _validate_label_value(value, path.child("labels"), out)
        else:
            out.append(type_invalid(path.child("labels").key(key), value, "must be a string"))
    _validate_annotations(_obj(meta, "annotations", path, out) or {}, path.child("annotations"), out)
    refs_path = path.child("ownerReferences")
    _validate_owner_references(
        _items(_list(meta, "ownerReferences", path, out), refs_path, out), refs_path, out
    )
    for i, finalizer in enumerate(_list(meta, "finalizers", path, out) or []):
        if isinstance(finalizer, str):
            _validate_label_name(finalizer, path.child("finalizers").index(i), out)


def _validate_annotations(annotations: JSON, path: Path, out: Errors) -> None:
    """Keys are label keys compared case-insensitively; keys and values together stay within 256 KiB."""
    total = 0
    for key, value in annotations.items():
        # The server reports the key as written but checks its lower-case form.
        _check_messages(path, key, qualified_name_errors(key.lower()), out)
        if isinstance(value, str):
            total += len(key.encode()) + len(value.encode())
        else:
            out.append(type_invalid(path.key(key), value, "must be a string"))
    if total > MAX_ANNOTATIONS_SIZE:
        out.append(too_long(path, MAX_ANNOTATIONS_SIZE))


def _group_version(api_version: str) -> tuple[str, str] | None:
    """(group, version) as apimachinery's ParseGroupVersion splits it; None when it does not parse."""
    if api_version in ("", "/"):
        return ("", "")
    parts = api_version.split("/")
    if len(parts) == 1:
        return ("", parts[0])
    if len(parts) == 2:
        return (parts[0], parts[1])
    return None


def _validate_owner_references(refs: list[tuple[Path, JSON]], path: Path, out: Errors) -> None:
    """Each reference names apiVersion, kind, name and uid; at most one is the controller.

    As upstream, the per-reference errors name ``metadata.ownerReferences.<field>`` without an index.
    """
    first_controller = ""
    for ref_path, ref in refs:
        api_version = _str(ref, "apiVersion", ref_path, out) or ""
        kind = _str(ref, "kind", ref_path, out) or ""
        name = _str(ref, "name", ref_path, out) or ""
        uid = _str(ref, "uid", ref_path, out) or ""
        controller = _bool(ref, "controller", ref_path, out)
        _bool(ref, "blockOwnerDeletion", ref_path, out)
        group, version = _group_version(api_version) or ("", "")
        if not version:
            out.append(invalid(path.child("apiVersion"), api_version, "version must not be empty"))
        for key, value in (("kind", kind), ("name", name), ("uid", uid)):
            if not value:
                out.append(invalid(path.child(key), value, "must not be empty"))
        gvk = f"{group}/{version}, Kind={kind}"
        if gvk in BANNED_OWNERS:
            out.append(invalid(path, ref, f"{gvk} is disallowed from being an owner"))
        if controller:
            current = f"{kind}/{name}"
            if first_controller:
                detail = (
                    "Only one reference can have Controller set to true. "
                    f'Found "true" in references for {first_controller} and {current}'
                )
                out.append(invalid(path, [entry for _, entry in refs], detail))
            else:
                first_controller = current


def _validate_immutable(new: Any, old: Any, path: Path, out: Errors) -> None:
    if new != old:
        out.append(invalid(path, new, "field is immutable"))


# -- ResourceSlice ---------------------------------------------------------------------------------


def validate_resource_slice(slice_: JSON, old: JSON | None = None) -> Errors:
    """All violations of a ResourceSlice (``old``: the stored object, for an update)."""
    out: Errors = []
    validate_object_meta(_typed(slice_.get("metadata"), dict, Path("metadata"), out), out, namespaced=False)
    spec = _obj(slice_, "spec", Path(""), out) or {}
    old_spec = None if old is None else (old.get("spec") if isinstance(old.get("spec"), dict) else {})
    _validate_slice_spec(spec, old_spec, out)
    return out


def _validate_slice_spec(spec: JSON, old_spec: JSON | None, out: Errors) -> None:
    path = Path("spec")
    driver = _str(spec, "driver", path, out)
    validate_driver_name(driver, path.child("driver"), out)
    pool = _obj(spec, "pool", path, out) or {}
    _validate_pool(pool, path.child("pool"), out)
    if old_spec is not None:
        old_pool = old_spec.get("pool") if isinstance(old_spec.get("pool"), dict) else {}
        _validate_immutable(pool.get("name"), (old_pool or {}).get("name"), path.child("pool", "name"), out)
        _validate_immutable(driver, old_spec.get("driver"), path.child("driver"), out)
        _validate_immutable(spec.get("nodeName"), old_spec.get("nodeName"), path.child("nodeName"), out)
    per_device = _validate_node_selection(spec, path, out)
    if spec.get("sharedCounters") is not None and spec.get("devices") is not None:
        out.append(invalid(path, "", "only one of `sharedCounters` or `devices` is allowed"))
    _validate_devices(spec, path, out, per_device)
    _validate_counter_sets(_list(spec, "sharedCounters", path, out), path.child("sharedCounters"), out)


def _validate_pool(pool: JSON, path: Path, out: Errors) -> None:
    validate_pool_name(_str(pool, "name", path, out), path.child("name"), out)
    count = _int(pool, "resourceSliceCount", path, out) or 0
    if count <= 0:
        out.append(invalid(path.child("resourceSliceCount"), count, "must be greater than zero"))
    generation = _int(pool, "generation", path, out) or 0
    if generation < 0:
        out.append(invalid(path.child("generation"), generation, "must be greater than or equal to zero"))


def _validate_node_selection(spec: JSON, path: Path, out: Errors) -> bool:
    """Exactly one of nodeName / nodeSelector / allNodes / perDeviceNodeSelection; returns the latter."""
    chosen: list[str] = []
    node_name = _str(spec, "nodeName", path, out)
    if node_name:
        chosen.append("`nodeName`")
        _validate_node_name(node_name, path.child("nodeName"), out)
    elif node_name is not None:
        out.append(
            invalid(path.child("nodeName"), node_name, "must be either unset or set to a non-empty string")
        )
    selector = _obj(spec, "nodeSelector", path, out)
    if selector is not None:
        chosen.append("`nodeSelector`")
        validate_node_selector(selector, path.child("nodeSelector"), out, exactly_one_term=True)
    for field in ("allNodes", "perDeviceNodeSelection"):
        flag = _bool(spec, field, path, out)
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
    devices = _list(spec, "devices", path, out)
    entries = _items(devices, devices_path, out)
    advanced = any(entry.get("taints") or entry.get("consumesCounters") for _, entry in entries)
    limit = MAX_DEVICES_WITH_TAINTS_OR_COUNTERS if advanced else MAX_DEVICES_PER_SLICE
    if not _check_size(devices, limit, devices_path, out):
        return
    for device_path, device in entries:
        _validate_device(device, device_path, out, per_device)
    _check_unique([device.get("name") for _, device in entries], devices_path, out)


def _validate_device(device: JSON, path: Path, out: Errors, per_device: bool) -> None:
    _validate_dns_label(_str(device, "name", path, out), path.child("name"), out)
    attributes = _obj(device, "attributes", path, out) or {}
    capacity = _obj(device, "capacity", path, out) or {}
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
        key_path = path.child("attributes").key(_truncate_key(key, MAX_DOMAIN_LENGTH + 1 + MAX_ID_LENGTH))
        validate_device_attribute(attribute, key_path, out)
    multi = _bool(device, "allowMultipleAllocations", path, out) is True
    for key, cap in capacity.items():
        validate_qualified_name(key, path.child("capacity"), out)
        key_path = path.child("capacity").key(_truncate_key(key, MAX_DOMAIN_LENGTH + 1 + MAX_ID_LENGTH))
        _validate_capacity(cap, key_path, out, multi)
    _validate_taints(_list(device, "taints", path, out), path.child("taints"), out)
    allocatable = _obj(device, "nodeAllocatableResources", path, out)
    if allocatable:
        _validate_node_allocatable(allocatable, capacity, path.child("nodeAllocatableResources"), out)
    _validate_consumptions(_list(device, "consumesCounters", path, out), path.child("consumesCounters"), out)
    _validate_device_node_selection(device, path, out, per_device)
    _validate_binding_conditions(device, path, out)


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
    values = _list(attr, key, path, out)
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
    attr = _typed(attribute, dict, path, out)
    if attr is None:
        return
    present = [key for key in ATTRIBUTE_VALUE_KEYS if attr.get(key) is not None]
    _bool(attr, "bool", path, out)
    _int(attr, "int", path, out)
    string = _str(attr, "string", path, out)
    if string is not None:
        _check_string_value(string, path.child("string"), out)
    version = _str(attr, "version", path, out)
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
        item = _typed(entry, dict, key_path, out)
        if item is None:
            continue
        mapping = _obj(item, "mapping", key_path, out)
        overhead = _obj(item, "overhead", key_path, out)
        if mapping is None and overhead is None:
            out.append(required(key_path, "at least one of mapping or overhead must be set"))
        if mapping is not None:
            _validate_allocatable_mapping(mapping, capacity, key_path.child("mapping"), out)
        if overhead is not None:
            _validate_allocatable_overhead(overhead, key_path.child("overhead"), out)


def _validate_allocatable_mapping(mapping: JSON, capacity: JSON, path: Path, out: Errors) -> None:
    key = _str(mapping, "capacityKey", path, out)
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
            and _validate_quantity(value, path.child(field), out)
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
            and _validate_quantity(value, path.child(field), out)
            and quantity_value(value) < 0
        ):
            out.append(invalid(path.child(field), str(value), "must be non-negative"))


def _validate_capacity(capacity: Any, path: Path, out: Errors, multi_allocatable: bool) -> None:
    cap = _typed(capacity, dict, path, out)
    if cap is None:
        return
    value = cap.get("value", "0")
    value_ok = _validate_quantity(value, path.child("value"), out)
    policy = _obj(cap, "requestPolicy", path, out)
    if policy is None:
        return
    if not multi_allocatable:
        out.append(forbidden(path.child("requestPolicy"), "allowMultipleAllocations must be true"))
    elif value_ok:
        _validate_request_policy(quantity_value(value), policy, path.child("requestPolicy"), out)


def _quantities(policy: JSON, key: str, path: Path, out: Errors) -> Decimal | None:
    raw = policy.get(key)
    if raw is None or not _validate_quantity(raw, path.child(key), out):
        return None
    return quantity_value(raw)


def _validate_request_policy(maximum: Decimal, policy: JSON, path: Path, out: Errors) -> None:
    default = _quantities(policy, "default", path, out)
    values = _list(policy, "validValues", path, out)
    value_range = _obj(policy, "validRange", path, out)
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
    if not _check_size(raw, MAX_REQUEST_POLICY_OPTIONS, path, out):
        return
    parsed = [
        quantity_value(v) if _validate_quantity(v, path.index(i), out) else None for i, v in enumerate(raw)
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
    _check_unique(parsed, path, out)
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
    if not _check_size(taints, MAX_TAINTS_PER_DEVICE, path, out):
        return
    for taint_path, taint in _items(taints, path, out):
        validate_device_taint(taint, taint_path, out)


def validate_device_taint(taint: JSON, path: Path, out: Errors) -> None:
    """key: label name; value: label value; effect: NoSchedule, NoExecute or None."""
    _validate_label_name(_str(taint, "key", path, out) or "", path.child("key"), out)
    value = _str(taint, "value", path, out)
    if value:
        _validate_label_value(value, path.child("value"), out)
    effect = _str(taint, "effect", path, out)
    if not effect:
        out.append(required(path.child("effect")))
    elif effect not in TAINT_EFFECTS:
        out.append(not_supported(path.child("effect"), effect, TAINT_EFFECTS))
    _str(taint, "timeAdded", path, out)


def _validate_counter_map(counters: JSON | None, limit: int, path: Path, out: Errors) -> None:
    if not counters:
        out.append(required(path))
        return
    if len(counters) > limit:
        out.append(too_many(path, len(counters), limit))
        return
    for name, counter in counters.items():
        _check_messages(path, name, dns1123_label_errors(name), out)
        entry = _typed(counter, dict, path.key(name), out)
        if entry is not None:
            _validate_quantity(entry.get("value", "0"), path.key(name).child("value"), out)


def _validate_counter_sets(sets: list[Any] | None, path: Path, out: Errors) -> None:
    if not _check_size(sets, MAX_COUNTER_SETS, path, out):
        return
    entries = _items(sets, path, out)
    for set_path, counter_set in entries:
        _validate_dns_label(_str(counter_set, "name", set_path, out), set_path.child("name"), out)
        counters = _obj(counter_set, "counters", set_path, out)
        _validate_counter_map(counters, MAX_COUNTERS_PER_SET, set_path.child("counters"), out)
    _check_unique([entry.get("name") for _, entry in entries], path, out)


def _validate_consumptions(consumptions: list[Any] | None, path: Path, out: Errors) -> None:
    if not _check_size(consumptions, MAX_CONSUMPTIONS_PER_DEVICE, path, out):
        return
    entries = _items(consumptions, path, out)
    for entry_path, entry in entries:
        _validate_dns_label(_str(entry, "counterSet", entry_path, out), entry_path.child("counterSet"), out)
        counters = _obj(entry, "counters", entry_path, out)
        _validate_counter_map(counters, MAX_COUNTERS_PER_CONSUMPTION, entry_path.child("counters"), out)
    _check_unique([entry.get("counterSet") for _, entry in entries], path, out)


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
    before = len(out)
    chosen = []
    node_name = _str(device, "nodeName", path, out)
    if node_name is not None:
        if node_name:
            chosen.append("`nodeName`")
            _validate_node_name(node_name, path.child("nodeName"), out)
        else:
            out.append(invalid(path.child("nodeName"), node_name, "must not be empty"))
    selector = _obj(device, "nodeSelector", path, out)
    if selector is not None:
        chosen.append("`nodeSelector`")
        validate_node_selector(selector, path.child("nodeSelector"), out)
    all_nodes = _bool(device, "allNodes", path, out)
    if all_nodes:
        chosen.append("`allNodes`")
    elif all_nodes is not None:
        out.append(invalid(path.child("allNodes"), all_nodes, "must be either unset or set to true"))
    detail = f"exactly one of {names} is required when `perDeviceNodeSelection` is set to true in the ResourceSlice spec"
    if not chosen and len(out) == before:
        out.append(required(path, detail))
    elif len(chosen) > 1:
        out.append(invalid(path, "{" + ", ".join(chosen) + "}", detail))


def _validate_binding_conditions(device: JSON, path: Path, out: Errors) -> None:
    conditions: dict[str, list[Any]] = {}
    for key in ("bindingConditions", "bindingFailureConditions"):
        values = _list(device, key, path, out)
        conditions[key] = values or []
        if not _check_size(values, MAX_BINDING_CONDITIONS, path.child(key), out):
            continue
        for i, value in enumerate(conditions[key]):
            if isinstance(value, str):
                _validate_label_name(value, path.child(key).index(i), out)
        _check_unique(conditions[key], path.child(key), out)
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


# -- DeviceClass -----------------------------------------------------------------------------------


def validate_device_class(device_class: JSON, old: JSON | None = None) -> Errors:
    """Selectors (≤32, CEL syntax), config (≤32, opaque driver parameters)."""
    out: Errors = []
    validate_object_meta(
        _typed(device_class.get("metadata"), dict, Path("metadata"), out), out, namespaced=False
    )
    spec = _obj(device_class, "spec", Path(""), out) or {}
    path = Path("spec")
    old_spec = (old or {}).get("spec") or {}
    selectors = _list(spec, "selectors", path, out)
    _validate_selectors(
        selectors,
        path.child("selectors"),
        out,
        stored=old is not None and selectors == old_spec.get("selectors"),
    )
    configs = _list(spec, "config", path, out)
    if _check_size(configs, MAX_CONFIGS, path.child("config"), out):
        for config_path, config in _items(configs, path.child("config"), out):
            _validate_opaque_config(config, config_path, out)
    return out


def validate_device_taint_rule(rule: JSON, old: JSON | None = None) -> Errors:
    """A DeviceTaintRule (``resource.k8s.io/v1`` since 1.37): an optional device selector by driver, pool
    and device name, and one device taint (required)."""
    out: Errors = []
    validate_object_meta(_typed(rule.get("metadata"), dict, Path("metadata"), out), out, namespaced=False)
    spec = _obj(rule, "spec", Path(""), out) or {}
    path = Path("spec")
    selector = _obj(spec, "deviceSelector", path, out)
    if selector is not None:
        where = path.child("deviceSelector")
        if selector.get("driver") is not None:
            validate_driver_name(_str(selector, "driver", where, out), where.child("driver"), out)
        if selector.get("pool") is not None:
            validate_pool_name(_str(selector, "pool", where, out), where.child("pool"), out)
        if selector.get("device") is not None:
            _validate_dns_label(_str(selector, "device", where, out), where.child("device"), out)
    taint = _obj(spec, "taint", path, out)
    if taint is None:
        out.append(required(path.child("taint")))
    else:
        validate_device_taint(taint, path.child("taint"), out)
    return out


def _validate_selectors(
    selectors: list[Any] | None, path: Path, out: Errors, *, stored: bool = False
) -> None:
    if not _check_size(selectors, MAX_SELECTORS, path, out):
        return
    for selector_path, selector in _items(selectors, path, out):
        cel = _obj(selector, "cel", selector_path, out)
        if cel is None:
            out.append(required(selector_path.child("cel")))
            continue
        expression = _str(cel, "expression", selector_path.child("cel"), out) or ""
        if not stored:
            validate_cel_expression(expression, selector_path.child("cel", "expression"), out)


def validate_cel_expression(expression: str, path: Path, out: Errors) -> None:
    """Length limit, then what the API server's DRA CEL compiler says about a new selector: syntax, types
    (the 1.37 new-expression environment) and the estimated cost limit."""
    if len(expression.encode()) > MAX_CEL_LENGTH:
        out.append(too_long(path, MAX_CEL_LENGTH))
        return
    if not expression.strip():
        out.append(required(path, "compilation failed: expression must not be empty"))
        return
    from driver.allocation.cel import COST_LIMIT, NEW, CelCompileError, compile_expression

    try:
        compiled = compile_expression(expression, NEW)
    except CelCompileError as exc:
        out.append(invalid(path, expression, exc.upstream_text()))
        return
    if compiled.max_cost > COST_LIMIT:
        out.append(forbidden(path, "too complex, exceeds cost limit"))


def _validate_opaque_config(config: JSON, path: Path, out: Errors) -> None:
    opaque = _obj(config, "opaque", path, out)
    if opaque is None:
        out.append(required(path.child("opaque")))
        return
    opaque_path = path.child("opaque")
    validate_driver_name(_str(opaque, "driver", opaque_path, out), opaque_path.child("driver"), out)
    parameters = opaque.get("parameters")
    params_path = opaque_path.child("parameters")
    if parameters is None:
        out.append(required(params_path))
    elif not isinstance(parameters, dict):
        out.append(invalid(params_path, "<value omitted>", "must be a valid JSON object"))
    elif len(json.dumps(parameters, separators=(",", ":"))) > MAX_OPAQUE_PARAMETERS_LENGTH:
        out.append(too_long(params_path, MAX_OPAQUE_PARAMETERS_LENGTH))


# -- ResourceClaim and ResourceClaimTemplate -------------------------------------------------------


def validate_resource_claim(claim: JSON, old: JSON | None = None) -> Errors:
    """A new claim's spec; on update only that the spec did not change (it is immutable)."""
    out: Errors = []
    validate_object_meta(_typed(claim.get("metadata"), dict, Path("metadata"), out), out, namespaced=True)
    if old is not None:
        _validate_immutable(claim.get("spec"), old.get("spec"), Path("spec"), out)
        return out
    spec = _obj(claim, "spec", Path(""), out) or {}
    validate_claim_spec(spec, Path("spec"), out)
    return out


def validate_resource_claim_template(template: JSON, old: JSON | None = None) -> Errors:
    out: Errors = []
    validate_object_meta(_typed(template.get("metadata"), dict, Path("metadata"), out), out, namespaced=True)
    if old is not None:
        _validate_immutable(template.get("spec"), old.get("spec"), Path("spec"), out)
        return out
    spec = _obj(template, "spec", Path(""), out) or {}
    meta = _obj(spec, "metadata", Path("spec"), out) or {}
    labels = _obj(meta, "labels", Path("spec.metadata"), out) or {}
    for key, value in labels.items():
        _validate_label_name(key, Path("spec.metadata.labels"), out)
        if isinstance(value, str):
            _validate_label_value(value, Path("spec.metadata.labels"), out)
    validate_claim_spec(_obj(spec, "spec", Path("spec"), out) or {}, Path("spec.spec"), out)
    return out


def validate_claim_spec(spec: JSON, path: Path, out: Errors) -> None:
    """Requests (≤32, unique DNS-label names, exactly one of exactly/firstAvailable), constraints, config."""
    devices = _obj(spec, "devices", path, out) or {}
    path = path.child("devices")
    requests = _list(devices, "requests", path, out)
    names = _request_names(requests)
    if _check_size(requests, MAX_REQUESTS, path.child("requests"), out):
        entries = _items(requests, path.child("requests"), out)
        for request_path, request in entries:
            _validate_request(request, request_path, out)
        _check_unique([request.get("name") for _, request in entries], path.child("requests"), out)
    constraints = _list(devices, "constraints", path, out)
    if _check_size(constraints, MAX_CONSTRAINTS, path.child("constraints"), out):
        for constraint_path, constraint in _items(constraints, path.child("constraints"), out):
            _validate_constraint(constraint, constraint_path, names, out)
    configs = _list(devices, "config", path, out)
    if _check_size(configs, MAX_CONFIGS, path.child("config"), out):
        for config_path, config in _items(configs, path.child("config"), out):
            _validate_request_refs(
                _list(config, "requests", config_path, out), config_path.child("requests"), names, out
            )
            _validate_opaque_config(config, config_path, out)


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
    _validate_dns_label(_str(request, "name", path, out), path.child("name"), out)
    exactly = _obj(request, "exactly", path, out)
    first = _list(request, "firstAvailable", path, out)
    kinds = "exactly one of `exactly` or `firstAvailable` is required"
    if exactly is None and not first:
        out.append(required(path, kinds))
    elif exactly is not None and first:
        out.append(invalid(path, None, f"{kinds}, but multiple fields are set"))
    elif exactly is not None:
        _validate_device_request(exactly, path.child("exactly"), out)
    elif _check_size(first, MAX_SUBREQUESTS, path.child("firstAvailable"), out):
        entries = _items(first, path.child("firstAvailable"), out)
        for sub_path, sub in entries:
            _validate_dns_label(_str(sub, "name", sub_path, out), sub_path.child("name"), out)
            _validate_device_request(sub, sub_path, out)
        _check_unique([sub.get("name") for _, sub in entries], path.child("firstAvailable"), out)


def _validate_device_request(request: JSON, path: Path, out: Errors) -> None:
    class_name = _str(request, "deviceClassName", path, out)
    if not class_name:
        out.append(required(path.child("deviceClassName")))
    else:
        _check_messages(path.child("deviceClassName"), class_name, dns1123_subdomain_errors(class_name), out)
    _validate_selectors(_list(request, "selectors", path, out), path.child("selectors"), out)
    mode = _str(request, "allocationMode", path, out) or "ExactCount"  # the server's default
    count = _int(request, "count", path, out) or 0
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
    _bool(request, "adminAccess", path, out)
    tolerations = _list(request, "tolerations", path, out)
    if _check_size(tolerations, MAX_TOLERATIONS, path.child("tolerations"), out):
        for toleration_path, toleration in _items(tolerations, path.child("tolerations"), out):
            _validate_toleration(toleration, toleration_path, out)


def _validate_toleration(toleration: JSON, path: Path, out: Errors) -> None:
    key = _str(toleration, "key", path, out)
    if key:
        _validate_label_name(key, path.child("key"), out)
    operator = _str(toleration, "operator", path, out) or "Equal"  # the server's default
    value = _str(toleration, "value", path, out) or ""
    if operator == "Exists":
        if value:
            out.append(invalid(path.child("value"), value, "must be empty for operator `Exists`"))
    elif operator == "Equal":
        _validate_label_value(value, path.child("value"), out)
    else:
        out.append(not_supported(path.child("operator"), operator, TOLERATION_OPERATORS))
    effect = _str(toleration, "effect", path, out)
    if effect and effect not in TAINT_EFFECTS:
        out.append(not_supported(path.child("effect"), effect, TAINT_EFFECTS))
    _int(toleration, "tolerationSeconds", path, out)


def _validate_request_refs(
    refs: list[Any] | None, path: Path, names: dict[str, set[str]], out: Errors
) -> None:
    if not _check_size(refs, MAX_REQUESTS, path, out):
        return
    detail = "must be the name of a request in the claim or the name of a request and a subrequest separated by '/'"
    for i, ref in enumerate(refs or []):
        if not isinstance(ref, str):
            out.append(type_invalid(path.index(i), ref, "must be a string"))
            continue
        segments = ref.split("/")
        if len(segments) > 2:
            out.append(invalid(path.index(i), ref, detail))
            continue
        for segment in segments:
            _validate_dns_label(segment, path.index(i), out)
        known = segments[0] in names and (len(segments) == 1 or segments[1] in names[segments[0]])
        if not known:
            out.append(invalid(path.index(i), ref, detail))
    _check_unique(list(refs or []), path, out)


def _validate_constraint(constraint: JSON, path: Path, names: dict[str, set[str]], out: Errors) -> None:
    _validate_request_refs(_list(constraint, "requests", path, out), path.child("requests"), names, out)
    match = _str(constraint, "matchAttribute", path, out)
    distinct = _str(constraint, "distinctAttribute", path, out)
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
    status = _obj(claim, "status", Path(""), out) or {}
    old_status = old.get("status") if isinstance(old.get("status"), dict) else {}
    reserved = _list(status, "reservedFor", path, out)
    if _check_size(reserved, MAX_RESERVED_FOR, path.child("reservedFor"), out):
        entries = _items(reserved, path.child("reservedFor"), out)
        for ref_path, ref in entries:
            for key in ("resource", "name", "uid"):
                if not _str(ref, key, ref_path, out):
                    out.append(required(ref_path.child(key)))
        _check_unique([ref.get("uid") for _, ref in entries], path.child("reservedFor"), out)
    allocation = _obj(status, "allocation", path, out)
    old_allocation = (old_status or {}).get("allocation")
    if reserved and allocation is None:
        out.append(forbidden(path.child("reservedFor"), "may not be specified when `allocated` is not set"))
    if allocation is not None and old_allocation is not None:
        _validate_immutable(allocation, old_allocation, path.child("allocation"), out)
    elif allocation is not None:
        spec = claim.get("spec") if isinstance(claim.get("spec"), dict) else {}
        devices = (spec or {}).get("devices") or {}
        names = _request_names(devices.get("requests") if isinstance(devices, dict) else None)
        _validate_allocation(allocation, path.child("allocation"), names, out)
    _validate_device_statuses(status, allocation, path, out)
    return out


def _validate_allocation(allocation: JSON, path: Path, names: dict[str, set[str]], out: Errors) -> None:
    devices = _obj(allocation, "devices", path, out) or {}
    results_path = path.child("devices", "results")
    results = _list(devices, "results", path.child("devices"), out)
    if not _check_size(results, MAX_ALLOCATION_RESULTS, results_path, out):
        return
    detail = "must be the name of a request in the claim or the name of a request and a subrequest separated by '/'"
    for result_path, result in _items(results, results_path, out):
        request = _str(result, "request", result_path, out) or ""
        head, _, sub = request.partition("/")
        if head not in names or (sub and sub not in names[head]):
            out.append(invalid(result_path.child("request"), request, detail))
        validate_driver_name(_str(result, "driver", result_path, out), result_path.child("driver"), out)
        validate_pool_name(_str(result, "pool", result_path, out), result_path.child("pool"), out)
        _validate_dns_label(_str(result, "device", result_path, out), result_path.child("device"), out)
    if isinstance(allocation.get("nodeSelector"), dict):
        validate_node_selector(allocation["nodeSelector"], path.child("nodeSelector"), out)


def _device_id(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    return (entry.get("driver"), entry.get("pool"), entry.get("device"), entry.get("shareID"))


def _validate_device_statuses(status: JSON, allocation: JSON | None, path: Path, out: Errors) -> None:
    statuses_path = path.child("devices")
    entries = _items(_list(status, "devices", path, out), statuses_path, out)
    results = ((allocation or {}).get("devices") or {}).get("results") or []
    allocated = {_device_id(r) for r in results if isinstance(r, dict)}
    for entry_path, entry in entries:
        _validate_device_status(entry, entry_path, allocated, out)
    _check_unique([_device_id(entry) for _, entry in entries], statuses_path, out)


def _validate_device_status(entry: JSON, path: Path, allocated: set[tuple[Any, ...]], out: Errors) -> None:
    """One ``status.devices`` entry, in upstream's order (validateDeviceStatus)."""
    validate_driver_name(_str(entry, "driver", path, out), path.child("driver"), out)
    validate_pool_name(_str(entry, "pool", path, out), path.child("pool"), out)
    _validate_dns_label(_str(entry, "device", path, out), path.child("device"), out)
    share_id = _str(entry, "shareID", path, out)
    if share_id is not None:
        _check_messages(path.child("shareID"), share_id, uid_errors(share_id), out)
    if _device_id(entry) not in allocated:
        shown = "/".join(str(part) for part in _device_id(entry)[:3])
        out.append(invalid(path, shown, "must be an allocated device in the claim"))
    conditions = _list(entry, "conditions", path, out)
    conditions_path = path.child("conditions")
    if conditions is not None and len(conditions) > MAX_DEVICE_STATUS_CONDITIONS:
        # No short cut here: upstream still validates every condition.
        out.append(too_many(conditions_path, len(conditions), MAX_DEVICE_STATUS_CONDITIONS))
    validate_conditions(_items(conditions, conditions_path, out), out)
    if entry.get("data") is not None:
        _validate_raw_object(entry["data"], path.child("data"), MAX_DEVICE_STATUS_DATA_LENGTH, out)
    network = _obj(entry, "networkData", path, out)
    if network is not None:
        _validate_network_data(network, path.child("networkData"), out)


# google/uuid's Validate accepts these four spellings; the server then insists on the first, lower-case.
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_UUID_HEX_RE = re.compile(r"^[0-9a-fA-F]{32}$")


def uid_errors(uid: str) -> list[str]:
    """Messages for a value that is not a UID in RFC 4122 normalized form (the server's validateUID)."""
    size = len(uid.encode())
    body = uid
    if size == 36 + 9:
        if uid[:9].lower() != "urn:uuid:":
            return [f"error validating uid: invalid urn prefix: {json.dumps(uid[:9])}"]
        body = uid[9:]
    elif size == 36 + 2:
        if not (uid.startswith("{") and uid.endswith("}")):
            return ["error validating uid: invalid bracketed UUID format"]
        body = uid[1:-1]
    elif size == 32:
        if not _UUID_HEX_RE.match(uid):
            return ["error validating uid: invalid UUID format"]
    elif size != 36:
        return [f"error validating uid: invalid UUID length: {size}"]
    if size != 32 and not _UUID_RE.match(body):
        return ["error validating uid: invalid UUID format"]
    if size != 36 or uid != uid.lower():
        return [
            "uid must be in RFC 4122 normalized form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` with lowercase "
            "hexadecimal characters"
        ]
    return []


_CONDITION_REASON_FMT = "[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?"
_CONDITION_REASON_RE = re.compile(f"^{_CONDITION_REASON_FMT}$")


def validate_conditions(conditions: list[tuple[Path, JSON]], out: Errors) -> None:
    """metav1 Conditions (apimachinery's ValidateConditions): unique types, then each condition."""
    seen: set[Any] = set()
    for path, condition in conditions:
        ctype = _str(condition, "type", path, out) or ""
        if ctype in seen:
            out.append(duplicate(path.child("type"), ctype))
        seen.add(ctype)
        _validate_label_name(ctype, path.child("type"), out)
        status = _str(condition, "status", path, out) or ""
        if status not in CONDITION_STATUSES:
            out.append(not_supported(path.child("status"), status, CONDITION_STATUSES))
        generation = _int(condition, "observedGeneration", path, out)
        if generation is not None and generation < 0:
            out.append(
                invalid(path.child("observedGeneration"), generation, "must be greater than or equal to zero")
            )
        if not _time(condition, "lastTransitionTime", path, out):
            out.append(required(path.child("lastTransitionTime"), "must be set"))
        _validate_condition_reason(_str(condition, "reason", path, out) or "", path.child("reason"), out)
        message = _str(condition, "message", path, out) or ""
        if len(message.encode()) > MAX_CONDITION_MESSAGE_LENGTH:
            out.append(too_long(path.child("message"), MAX_CONDITION_MESSAGE_LENGTH))


def _validate_condition_reason(reason: str, path: Path, out: Errors) -> None:
    if not reason:
        out.append(required(path, "must be set"))
        return
    if not _CONDITION_REASON_RE.match(reason):
        message = (
            "a condition reason must start with alphabetic character, optionally followed by a string of "
            "alphanumeric characters or '_,:', and must end with an alphanumeric character or '_'"
        )
        examples = ("my_name", "MY_NAME", "MyName", "ReasonA,ReasonB", "ReasonA:ReasonB")
        out.append(invalid(path, reason, _regex_error(message, _CONDITION_REASON_FMT, *examples)))
    if len(reason.encode()) > MAX_CONDITION_REASON_LENGTH:
        out.append(too_long(path, MAX_CONDITION_REASON_LENGTH))


def _time(parent: Mapping[str, Any], key: str, path: Path, out: Errors) -> str | None:
    """An RFC 3339 time (metav1.Time); anything else fails decoding. None or "" when unset."""
    value = _str(parent, key, path, out)
    if not value:
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        out.append(type_invalid(path.child(key), value, "must be a time in RFC 3339 form"))
        return None
    return value


def _validate_raw_object(data: Any, path: Path, max_length: int, out: Errors) -> None:
    """A RawExtension that must hold a JSON object of at most ``max_length`` bytes.

    The server measures the raw bytes it received; the compact encoding stands in for them here
    (the sandbox only sees the decoded value).
    """
    raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    if len(raw) > max_length:
        out.append(too_long(path, max_length))
    elif not isinstance(data, dict):
        out.append(invalid(path, "<value omitted>", "must be a valid JSON object"))


def _validate_network_data(network: JSON, path: Path, out: Errors) -> None:
    """interfaceName and hardwareAddress lengths; ips: at most 16 distinct canonical CIDR addresses."""
    for key, limit in (
        ("interfaceName", MAX_INTERFACE_NAME_LENGTH),
        ("hardwareAddress", MAX_HARDWARE_ADDRESS_LENGTH),
    ):
        value = _str(network, key, path, out)
        if value is not None and len(value.encode()) > limit:
            out.append(too_long(path.child(key), limit))
    ips = _list(network, "ips", path, out)
    ips_path = path.child("ips")
    if not _check_size(ips, MAX_NETWORK_IPS, ips_path, out):
        return
    seen: set[str] = set()
    for i, address in enumerate(ips or []):
        text = _typed(address, str, ips_path.index(i), out)
        if text is None:
            continue
        _check_messages(ips_path.index(i), text, interface_address_errors(text), out)
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


# -- Status objects --------------------------------------------------------------------------------


def _aggregate(errors: Errors) -> str:
    """apimachinery's aggregate error text: one message alone, several in brackets, duplicates dropped."""
    messages = list(dict.fromkeys(str(error) for error in errors))
    return messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"


def qualified_kind(kind: str, group: str) -> str:
    return f"{kind}.{group}" if group else kind


def invalid_status(kind: str, group: str, name: str, errors: Errors) -> JSON:
    """The 422 ``Status`` body the API server returns for ``errors`` on object ``name``."""
    message = f'{qualified_kind(kind, group)} "{name}" is invalid'
    if errors:
        message += f": {_aggregate(errors)}"
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Invalid",
        "details": {
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [{"reason": str(e.type), "message": e.body(), "field": e.field} for e in errors],
        },
        "code": 422,
    }


def decode_error_status(kind: str, api_version: str, errors: Errors) -> JSON:
    """The 400 ``Status`` the API server returns when a body does not decode into the kind's types."""
    detail = "; ".join(f"{e.field}: {e.detail}" for e in errors)
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'{kind} in version "{api_version.rpartition("/")[2]}" cannot be handled as a {kind}: {detail}',
        "reason": "BadRequest",
        "code": 400,
    }
