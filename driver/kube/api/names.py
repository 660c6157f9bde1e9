"""Names and qualified names: DNS labels and subdomains, label keys and values, C identifiers, driver and
pool names, attribute keys, semantic versions and UIDs (apimachinery util/validation and the DRA rules).
"""

from __future__ import annotations

import json
import re

from driver.kube.api.fields import Errors, Path, add_messages, invalid, required, too_long
from driver.kube.api.limits import (
    MAX_DRIVER_NAME_LENGTH,
    MAX_ID_LENGTH,
    MAX_LABEL_LENGTH,
    MAX_POOL_NAME_LENGTH,
    MAX_SUBDOMAIN_LENGTH,
)

# -- string formats (apimachinery util/validation) --------------------------------------------------

LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
SUBDOMAIN_FMT = LABEL_FMT + r"(\." + LABEL_FMT + ")*"
_CIDENT_FMT = "[A-Za-z_][A-Za-z0-9_]*"
_QNAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_FMT = "(" + _QNAME_FMT + ")?"
_LABEL_RE = re.compile(f"^{LABEL_FMT}$")
_SUBDOMAIN_RE = re.compile(f"^{SUBDOMAIN_FMT}$")
_CIDENT_RE = re.compile(f"^{_CIDENT_FMT}$")
_QNAME_RE = re.compile(f"^{_QNAME_FMT}$")
_LABEL_VALUE_RE = re.compile(f"^{_LABEL_VALUE_FMT}$")
# DNS-1035 label: what Service names must be.
_DNS1035_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_DNS1035_RE = re.compile(f"^{_DNS1035_FMT}$")


def regex_error(message: str, fmt: str, *examples: str) -> str:
    # The doubled space before "or" is what the server prints.
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{fmt}')"


def _format_errors(
    value: str, max_length: int | None, pattern: re.Pattern[str], message: str, fmt: str, *examples: str
) -> list[str]:
    """A length limit (``None``: none) and a format, each with the server's message when broken."""
    msgs = []
    if max_length is not None and len(value) > max_length:
        msgs.append(f"must be no more than {max_length} bytes")
    if not pattern.fullmatch(value):
        msgs.append(regex_error(message, fmt, *examples))
    return msgs


def dns1123_label_errors(value: str) -> list[str]:
    """Messages for a value that is not a DNS-1123 label (empty list when it is one)."""
    return _format_errors(
        value,
        MAX_LABEL_LENGTH,
        _LABEL_RE,
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
        "and must start and end with an alphanumeric character",
        LABEL_FMT,
        "my-name",
        "123-abc",
    )


def dns1123_subdomain_errors(value: str) -> list[str]:
    """Messages for a value that is not a DNS-1123 subdomain."""
    return _format_errors(
        value,
        MAX_SUBDOMAIN_LENGTH,
        _SUBDOMAIN_RE,
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
        "and must start and end with an alphanumeric character",
        SUBDOMAIN_FMT,
        "example.com",
    )


def dns1035_label_errors(value: str) -> list[str]:
    """Messages for a value that is not a DNS-1035 label (the format of Service names)."""
    return _format_errors(
        value,
        MAX_LABEL_LENGTH,
        _DNS1035_RE,
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
        "alphabetic character, and end with an alphanumeric character",
        _DNS1035_FMT,
        "my-name",
        "abc-123",
    )


def c_identifier_errors(value: str) -> list[str]:
    return _format_errors(
        value,
        None,
        _CIDENT_RE,
        "a valid C identifier must start with alphabetic character or '_', followed by a string of "
        "alphanumeric characters or '_'",
        _CIDENT_FMT,
        "my_name",
        "MY_NAME",
        "MyName",
    )


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
            regex_error(
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
    name_msgs = _format_errors(
        name,
        MAX_LABEL_LENGTH,
        _QNAME_RE,
        "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
        "alphanumeric character",
        _QNAME_FMT,
        "MyName",
        "my.name",
        "123-abc",
    )
    return [f"name part {msg}" for msg in name_msgs]


def label_value_errors(value: str) -> list[str]:
    return _format_errors(
        value,
        MAX_LABEL_LENGTH,
        _LABEL_VALUE_RE,
        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
        "and must start and end with an alphanumeric character",
        _LABEL_VALUE_FMT,
        "MyValue",
        "my_value",
        "12345",
    )


def is_dns_label(value: str) -> bool:
    """A DNS-1123 label of at most 63 characters (device and request names)."""
    return len(value) <= MAX_LABEL_LENGTH and bool(_LABEL_RE.fullmatch(value))


def is_driver_name(name: str) -> bool:
    """A driver name as a driver writes its own: a lowercase DNS subdomain of at most 63 characters.
    :func:`validate_driver_name` is the server's check, which also lets upper case through."""
    return len(name) <= MAX_DRIVER_NAME_LENGTH and bool(_SUBDOMAIN_RE.fullmatch(name))


def is_identifier(ident: str) -> bool:
    """An attribute or capacity name without its domain: a C identifier of at most 32 characters."""
    return len(ident) <= MAX_ID_LENGTH and bool(_CIDENT_RE.fullmatch(ident))


def is_label_key(key: str) -> bool:
    """A label key (``[prefix/]name``), as node selectors need them."""
    return not qualified_name_errors(key)


def is_label_value(value: str) -> bool:
    return not label_value_errors(value)


# -- shared field rules ----------------------------------------------------------------------------


def is_extended_resource_name(name: str) -> bool:
    """A resource name outside the ``kubernetes.io`` domain, with a domain, that is not a quota name and
    stays a qualified name as ``requests.<name>`` (what a pod may request as an extended resource)."""
    if "/" not in name or "kubernetes.io/" in name or name.startswith("requests."):
        return False
    return not qualified_name_errors("requests." + name)


def validate_driver_name(name: str | None, path: Path, out: Errors) -> None:
    """A driver name: DNS subdomain of at most 63 bytes. The server checks it case-insensitively."""
    if not name:
        out.append(required(path))
        return
    if len(name) > MAX_DRIVER_NAME_LENGTH:
        out.append(too_long(path, MAX_DRIVER_NAME_LENGTH))
    add_messages(path, name, dns1123_subdomain_errors(name.lower()), out)


def validate_pool_name(name: str | None, path: Path, out: Errors) -> None:
    """One or more DNS subdomains separated by '/', at most 253 bytes in all."""
    if not name:
        out.append(required(path))
        return
    if len(name) > MAX_POOL_NAME_LENGTH:
        out.append(too_long(path, MAX_POOL_NAME_LENGTH))
    for part in name.split("/"):
        add_messages(path, part, dns1123_subdomain_errors(part), out)


def validate_label_name(key: str, path: Path, out: Errors) -> None:
    add_messages(path, key, qualified_name_errors(key), out)


def validate_label_value(value: str, path: Path, out: Errors) -> None:
    add_messages(path, value, label_value_errors(value), out)


def validate_dns_label(name: str | None, path: Path, out: Errors, *, required_value: bool = False) -> None:
    """A device or request name: empty is simply not a DNS label (1.37 reports no Required for it). Counter
    set names (``required_value``) are Required when empty."""
    if required_value and not name:
        out.append(required(path))
        return
    add_messages(path, name or "", dns1123_label_errors(name or ""), out)


def validate_c_identifier(ident: str, path: Path, out: Errors) -> None:
    if len(ident) > MAX_ID_LENGTH:
        out.append(too_long(path, MAX_ID_LENGTH))
    add_messages(path, ident, c_identifier_errors(ident), out)


def validate_qualified_name(name: str, path: Path, out: Errors) -> None:
    """An attribute or capacity key: a C identifier (≤32), optionally prefixed with ``<domain>/``."""
    parts = name.split("/")
    if len(parts) == 1:
        validate_c_identifier(parts[0], path, out)
    elif len(parts) == 2:
        domain, ident = parts
        if domain:
            validate_driver_name(domain, path, out)
        else:
            out.append(invalid(path, "", "the domain must not be empty"))
        if ident:
            validate_c_identifier(ident, path, out)
        else:
            out.append(invalid(path, "", "the name must not be empty"))
    # More than one slash: upstream accepts the name unchecked (a known gap it keeps for compatibility).


def validate_fully_qualified_name(name: str | None, path: Path, out: Errors) -> None:
    """Like :func:`validate_qualified_name`, but the domain is mandatory (``matchAttribute``) and must be a
    DNS subdomain as written (1.37's declarative rule: no lower-casing, one error for the prefix)."""
    if name is None:
        return
    domain, slash, _ = name.partition("/")
    prefix_errors = dns1123_subdomain_errors(domain) if slash and domain and domain != domain.lower() else []
    if prefix_errors:
        out.extend(invalid(path, domain, f"prefix: {msg}") for msg in prefix_errors)
    else:
        validate_qualified_name(name, path, out)
    if "/" not in name:
        out.append(
            invalid(path, name, "a fully qualified name must be a domain and a name separated by a slash")
        )


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
        if not _UUID_HEX_RE.fullmatch(uid):
            return ["error validating uid: invalid UUID format"]
    elif size != 36:
        return [f"error validating uid: invalid UUID length: {size}"]
    if size != 32 and not _UUID_RE.fullmatch(body):
        return ["error validating uid: invalid UUID format"]
    if size != 36 or uid != uid.lower():
        return [
            "uid must be in RFC 4122 normalized form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` with lowercase "
            "hexadecimal characters"
        ]
    return []
