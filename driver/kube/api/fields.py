"""Field errors and paths as apimachinery has them, and typed access to a decoded JSON body.

A value of the wrong JSON type is a decode error (:attr:`FieldError.is_decode_error`): the API server fails
the body with 400 before validation runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

JSON = dict[str, Any]


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


# -- typed access to JSON (type mismatches are decode errors) ---------------------------------------

_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def typed(value: Any, kind: type, path: Path, out: Errors) -> Any:
    """``value`` if it has JSON type ``kind`` (None passes through as "unset"), else record a decode error."""
    if value is None:
        return None
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if ok and kind is int and not INT64_MIN <= value <= INT64_MAX:
        out.append(type_invalid(path, value, "must be a 64-bit integer"))  # Go's decoder overflows: 400
        return None
    if ok:
        return value
    out.append(type_invalid(path, value, f"must be {_TYPE_NAMES.get(kind, 'an integer')}"))
    return None


def get_obj(parent: Mapping[str, Any], key: str, path: Path, out: Errors) -> JSON | None:
    result: JSON | None = typed(parent.get(key), dict, path.child(key), out)
    return result


def get_list(parent: Mapping[str, Any], key: str, path: Path, out: Errors) -> list[Any] | None:
    result: list[Any] | None = typed(parent.get(key), list, path.child(key), out)
    return result


def get_str(parent: Mapping[str, Any], key: str, path: Path, out: Errors) -> str | None:
    result: str | None = typed(parent.get(key), str, path.child(key), out)
    return result


def get_int(parent: Mapping[str, Any], key: str, path: Path, out: Errors) -> int | None:
    result: int | None = typed(parent.get(key), int, path.child(key), out)
    return result


def get_bool(parent: Mapping[str, Any], key: str, path: Path, out: Errors) -> bool | None:
    result: bool | None = typed(parent.get(key), bool, path.child(key), out)
    return result


def items_of(value: list[Any] | None, path: Path, out: Errors) -> list[tuple[Path, JSON]]:
    """(path, object) for each list entry that is an object; other entries are decode errors."""
    result = []
    for i, item in enumerate(value or []):
        entry = typed(item, dict, path.index(i), out)
        if entry is not None:
            result.append((path.index(i), entry))
    return result


def check_size(items: list[Any] | None, maximum: int, path: Path, out: Errors) -> bool:
    """Record TooMany and return False when a list is over its limit (the server then skips its items)."""
    if items is not None and len(items) > maximum:
        out.append(too_many(path, len(items), maximum))
        return False
    return True


def check_unique(keys: list[Any], path: Path, out: Errors) -> None:
    seen: set[str] = set()
    for i, key in enumerate(keys):
        # Keys of the wrong JSON type (reported by the type checks) must not crash the duplicate check.
        marker = json.dumps(key, sort_keys=True, default=str)
        if marker in seen:
            out.append(duplicate(path.index(i), key))
        seen.add(marker)


def truncate_key(key: str, max_len: int) -> str:
    max_len = max(max_len, 16)
    if len(key) <= max_len:
        return key
    remaining = max_len - 3
    return key[: (remaining + 1) // 2] + "..." + key[len(key) - remaining // 2 :]


def add_messages(path: Path, value: str, msgs: list[str], out: Errors) -> None:
    out.extend(invalid(path, value, msg) for msg in msgs)
